"""An ImageNet-class model at its real sizes: calibrate, export fp32 and INT8, bench; time, rate and memory per size.

The registered ``resnet50`` with random weights (a checkpoint this script writes) on an ImageNet-style folder made of
the shared CIFAR-10 JPEGs (symlinks under ImageNet class folders, ``--preprocess imagenet``), at 128, 160 and 224 px:

- calibration: images/s of ``calibrate_to_bundle`` (decoding included) and that rate's share of this CPU's float32
  FMA peak. Peak = cores x clock x 2 FMA units x SIMD lanes x 2 flops: ``/proc/cpuinfo``'s clock (no turbo),
  16 lanes where the CPU has AVX-512F (8 with AVX2 only), 2 FMA units per core (Zen 4/5, recent Xeons; an
  assumption, halve it for one-FMA parts). FLOPs per image from ``torch.utils.flop_counter`` (2 per multiply-add);
- how far the statistics still moved over the last 4 batches, and with ``--auto`` the image count at which
  ``--batches auto`` stops (a separate, longer calibration);
- ``mmdeploy export --precision fp32`` time, then ``--precision int8`` time and peak RSS (a subprocess under an
  address-space cap, ``--int8-mem-gb``; a failure is reported, not raised), its RSS from ``wait4``;
- ``mmdeploy bench`` p50 latency per engine at batch 1.

    python benchmarks/bench_scale.py --sizes 160 --batches 3           # short
    python benchmarks/bench_scale.py --auto --int8-images 256           # the issue's full configuration
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = ROOT.parent / "shared/data/cifar10/train"


def make_imagenet_folder(cifar: Path, out: Path, classes: int, per_class: int) -> Path:
    """ImageNet class folders (WNIDs) holding symlinks to CIFAR JPEGs: real JPEG decoding, a 1000-class label space."""
    wnids = (ROOT / "mmdeploy/imagenet_wnids.txt").read_text().split()
    sources = sorted(p for p in cifar.iterdir() if p.is_dir())[:classes]
    for wnid, src in zip(wnids, sources):
        (out / wnid).mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir())[:per_class]:
            link = out / wnid / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return out


def make_checkpoint(path: Path) -> Path:
    from mmdeploy.models import create_model

    torch.manual_seed(0)
    torch.save({"arch": "resnet50", "state_dict": create_model("resnet50").state_dict()}, path)
    return path


def flops_per_image(size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from mmdeploy.models import create_model

    model = create_model("resnet50").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def fma_peak() -> tuple[float, str]:
    cores = os.cpu_count() or 1
    flags, mhz = "", 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = line
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
    except OSError:
        pass
    lanes = 16 if " avx512f" in flags else 8
    ghz = mhz / 1000 or 2.0
    peak = cores * ghz * 1e9 * 2 * lanes * 2
    return peak, f"{cores} cores x {ghz:.2f} GHz x 2 FMA units x {lanes} fp32 lanes x 2 flops = {peak / 1e9:.0f} GFLOP/s (assumed)"


def run_cli(args: list[str], mem_gb: float | None = None, timeout: float | None = None) -> dict:
    """``python -m mmdeploy ARGS`` in a child: seconds, exit code, peak RSS (MB, from wait4) and the last stderr line."""
    def limit():
        if mem_gb:
            cap = int(mem_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    start = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmdeploy", *args], stdout=out, stderr=err, preexec_fn=limit, cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.kill()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        out.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        stdout = out.read().decode(errors="replace")
    return {"seconds": seconds, "rc": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "last_line": lines[-1] if lines else "",
            "stdout": stdout}


def calibrate(ckpt: Path, size: int, data: Path, out: Path, batches, batch_size: int) -> dict:
    from mmdeploy.calib.workflow import calibrate_to_bundle

    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    summary = calibrate_to_bundle(ckpt, [size], data, out, batches=batches, batch_size=batch_size, arch="resnet50", preprocess="imagenet")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    conv = getattr(summary, "convergence", None) or {}  # older versions record none
    return {"images": summary.images, "seconds": seconds, "img_s": summary.images / seconds, "img_per_cpu_s": summary.images / cpu_s,
            "batches": conv.get("batches"),
            "final_change": conv.get("final_change")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, default=DEFAULT_CIFAR, help="CIFAR-10 JPEG folder (train/)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--batches", type=int, default=3, help="calibration batches timed per size (the default run uses 200)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--auto", action="store_true", help="also run --batches auto per size and report where it stops (long)")
    parser.add_argument("--int8-images", type=int, default=64, help="INT8 calibration images per size (the export default is 256)")
    parser.add_argument("--int8-mem-gb", type=float, default=12.0, help="address-space cap of the INT8 export (0: none)")
    parser.add_argument("--no-export", action="store_true", help="calibration only")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data, checkpoint and bundles (default: a temp folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is (every mmdeploy command keeps freed blocks)")
    args = parser.parse_args(argv)
    if not args.system_malloc:
        from mmdeploy.allocator import keep_freed_memory

        keep_freed_memory()  # what the mmdeploy commands do (the exports below run as commands)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    per_class = max(2, -(-max(args.batches, 16 if args.auto else 0) * args.batch_size // 10))  # 10 classes
    per_class = min(5000, per_class if not args.auto else 5000)
    data = make_imagenet_folder(args.cifar, work / "imagenet", 10, per_class)
    ckpt = make_checkpoint(work / "resnet50_random.pth")
    peak, peak_text = fma_peak()
    rows = []
    for size in args.sizes:
        bundle = work / f"bundle{size}"
        row = {"size": size, "gflop_per_image": flops_per_image(size) / 1e9}
        shutil.rmtree(bundle, ignore_errors=True)  # a bundle left by an earlier run would be reused, not timed
        row["calibration"] = calibrate(ckpt, size, data, bundle, args.batches, args.batch_size)
        row["calibration"]["peak_pct"] = 100 * row["calibration"]["img_s"] * row["gflop_per_image"] * 1e9 / peak
        if args.auto:
            shutil.rmtree(work / f"auto{size}", ignore_errors=True)
            row["auto"] = calibrate(ckpt, size, data, work / f"auto{size}", "auto", args.batch_size)
        if not args.no_export:
            row["export_fp32"] = run_cli(["export", str(bundle), "--engine", "ort", "--precision", "fp32", "--size", str(size), "--no-dynamic"])
            row["export_int8"] = run_cli(["export", str(bundle), "--engine", "ort", "--precision", "int8", "--size", str(size), "--no-dynamic",
                                          "--int8-images", str(args.int8_images)], mem_gb=args.int8_mem_gb or None)
            int8 = ["--precision", "int8"] if row["export_int8"]["rc"] == 0 else []  # torch has no int8: ort's point only
            bench = run_cli(["bench", str(bundle), "--engine", "torch", "--engine", "ort", "--precision", "fp32", *int8,
                             "--batch", "1", "--warmup", "3", "--iters", "20", "--noise-budget", "0", "--json"])
            row["bench"] = _latencies(bench)
        for key in ("export_fp32", "export_int8"):
            row.get(key, {}).pop("stdout", None)
        rows.append(row)
        if not args.json:
            _print_row(row, args)

    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "peak": peak_text, "load_avg": os.getloadavg(), "batches": args.batches, "batch_size": args.batch_size}
    if args.json:
        print(json.dumps({**info, "results": rows}, indent=2))
    else:
        print(f"peak: {peak_text}; torch {info['torch']}, {info['threads']} threads; load average now {info['load_avg'][0]:.1f} "
              "(the machine is shared: rates scale with the CPU share this process got)")
    return 0


def _latencies(result: dict) -> dict:
    if result["rc"] != 0:
        return {"error": result["last_line"]}
    try:
        rows = json.loads(result["stdout"])
    except ValueError:
        return {"error": "bench printed no JSON"}
    out = {}
    for r in rows.get("results", rows) if isinstance(rows, dict) else rows:
        if isinstance(r, dict) and "engine" in r:
            out[f"{r['engine']} {r.get('precision', '')}".strip()] = r.get("p50_ms")
    return out


def _print_row(row: dict, args) -> None:
    c = row["calibration"]
    print(f"{row['size']} px ({row['gflop_per_image']:.2f} GFLOP/image): calibration {c['img_s']:.1f} img/s over {c['images']} images "
          f"({c['peak_pct']:.1f}% of FMA peak), {c['seconds']:.1f} s, "
          f"{c['img_per_cpu_s']:.1f} img per CPU-second; statistics moved "
          + (f"{c['final_change']:.2%} over the last 4 batches" if c["final_change"] is not None else "(too few batches to tell)"))
    if "auto" in row:
        a = row["auto"]
        print(f"  --batches auto: stopped at {a['batches']} batches = {a['images']} images ({a['seconds']:.0f} s), last change {a['final_change']:.2%}")
    if "export_fp32" in row:
        f, i = row["export_fp32"], row["export_int8"]
        print(f"  export fp32: {f['seconds']:.1f} s, peak RSS {f['peak_rss_mb']:.0f} MB" + ("" if f["rc"] == 0 else f", FAILED: {f['last_line']}"))
        print(f"  export int8 ({args.int8_images} images, cap {args.int8_mem_gb:g} GB): {i['seconds']:.1f} s, peak RSS {i['peak_rss_mb']:.0f} MB"
              + ("" if i["rc"] == 0 else f", FAILED (exit {i['rc']}): {i['last_line']}"))
        print(f"  bench p50 ms at batch 1: {row['bench']}")


if __name__ == "__main__":
    sys.exit(main())
