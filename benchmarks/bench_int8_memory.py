"""Benchmark: INT8 export at ImageNet scale, peak memory and wall time.

Registered ``resnet50`` with random weights (the checkpoint is made here), BN calibrated at each
size on an ImageNet-style folder built from the shared CIFAR-10 JPEGs (upscaled on load), then
``mmdeploy export --precision int8`` of one size per child process: the child's peak RSS
(``ru_maxrss`` of that child, from ``os.wait4``) and its wall time. The child exports the
per-size fp32 ONNX it quantizes, collects the activation ranges on ``--images`` calibration
images and runs the INT8 gate; a gate failure (random weights) is reported, not fatal.

    nice python benchmarks/bench_int8_memory.py --sizes 160 224 --images 256
    mkdir /tmp/old && git archive d01cf48 mmdeploy | tar -x -C /tmp/old      # the code before streaming collection
    nice python benchmarks/bench_int8_memory.py --sizes 160 224 --images 16 --code /tmp/old

``--cap-gb`` runs the child under that address-space limit (``RLIMIT_AS``) as well.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared/data/cifar10/train"


def image_folder(dst: Path, per_class: int) -> Path:
    """An ImageFolder of ``per_class`` CIFAR JPEGs per class (links, no copies)."""
    for cls in sorted(p for p in CIFAR.iterdir() if p.is_dir()):
        out = dst / cls.name
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            link = out / f.name
            if not link.exists():
                link.symlink_to(f)
    return dst


def prepare(work: Path, sizes: list[int], images: int) -> Path:
    """resnet50 (random weights, seeded) calibrated at every size on enough images for ``images``."""
    import torch

    from mmdeploy.calib.workflow import calibrate_to_bundle
    from mmdeploy.models import create_model

    batch = 64
    batches = max(4, math.ceil(images / batch))  # the same bundle serves every --images up to 256
    data = image_folder(work / "images", per_class=max(8, math.ceil(batches * batch / 10)))
    bundle = work / f"bundle-{'-'.join(map(str, sizes))}-{batches}x{batch}"
    if not (bundle / "manifest.json").exists():
        torch.manual_seed(0)
        ckpt = work / "resnet50.pth"
        if not ckpt.exists():
            torch.save(create_model("resnet50").state_dict(), ckpt)
        t = time.perf_counter()
        calibrate_to_bundle(ckpt, sizes, data, bundle, batches=batches, batch_size=batch, arch="resnet50")
        print(f"BN calibration of {sizes} on {batches}x{batch} images: {time.perf_counter() - t:.0f} s")
    return bundle


def child(bundle: str, size: int, images: int, method: str) -> None:
    from mmdeploy.bundle import ONNX, Bundle, bundle_lock
    from mmdeploy.errors import MMDeployError
    from mmdeploy.export.workflow import export_bundle

    with bundle_lock(bundle):  # measure the work, not a reuse
        b = Bundle.open(bundle)
        b.remove_artifact(size, ONNX, "int8")
        b.commit()
    try:
        summary = export_bundle(bundle, "ort", ["int8"], sizes=[size], dynamic=False, int8_images=images, int8_method=method)
        graph = Bundle.open(bundle).artifact(size, ONNX, "int8").fields["graph"]
        outcome = f"written {summary.written}, range collection {graph.get('range_collection', '-')}"
    except MMDeployError as exc:
        outcome = exc.one_line()
    print("RESULT " + json.dumps({"outcome": outcome}))


def measure(bundle: Path, size: int, images: int, method: str, cap_gb: float | None, code: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(bundle), "--sizes", str(size), "--images", str(images), "--method", method]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])))  # --code: another checkout's mmdeploy

    def limit():
        if cap_gb:
            resource.setrlimit(resource.RLIMIT_AS, (int(cap_gb * 2**30),) * 2)

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, preexec_fn=limit, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss: its peak RSS)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        out, err = out.read(), err.read()
    result = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None)
    outcome = result["outcome"] if result else f"crashed (exit {proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}"
    return {"size": size, "images": images, "method": method, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "wall_s": wall, "outcome": outcome}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    ap.add_argument("--images", type=int, default=256, help="INT8 calibration images")
    ap.add_argument("--method", default="percentile", help="INT8 calibration method (the default: percentile)")
    ap.add_argument("--work", default=str(ROOT / "runs/bench_int8_memory"))
    ap.add_argument("--cap-gb", type=float, default=None, help="address-space limit for the export child")
    ap.add_argument("--code", default=None, help="run the export with the mmdeploy of this checkout (e.g. `git archive` of an older commit)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.sizes[0], args.images, args.method)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = prepare(work, args.sizes, args.images)
    print(f"{'size':>5} {'images':>7} {'method':>10} {'peak RSS GB':>12} {'wall s':>8}  outcome")
    for s in args.sizes:
        r = measure(bundle, s, args.images, args.method, args.cap_gb, args.code)
        print(f"{r['size']:5d} {r['images']:7d} {r['method']:>10} {r['peak_rss_gb']:12.2f} {r['wall_s']:8.1f}  {r['outcome'][:160]}", flush=True)


if __name__ == "__main__":
    main()
