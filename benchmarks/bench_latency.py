"""Benchmark: is the latency axis trustworthy? torch eager vs this project's ORT engine vs ORT's default session.

One interleaved run per phase (every engine, size and batch timed round-robin, mmdeploy's
protocol), on the machine as it is ("quiet") and with a busy loop on every usable core beside
it ("busy"; the script starts and stops the loops itself). Engines:

- torch-1t: eager PyTorch under the reference's policy (one intra-op thread);
- torch-2t: eager PyTorch with one thread per core (torch's own default), for contrast;
- ort-mm: mmdeploy's ONNX Runtime engine with the settings `mmdeploy bench --tune` stored;
- ort-default: `onnxruntime.InferenceSession(path)` with default session options;
- (quiet phase) every setting the tuner tries (ort-1t, ort-1t spin, ort-2t, ...), so the
  chosen one can be compared with the fastest of them in the same run.

Prints p50s, ratios, the noise detector's verdict per phase, and the speed-up at
iso-accuracy (the report's headline, from the bundle's accuracies and this run's latencies)
quiet vs busy. Needs a bundle that `mmdeploy run` (or calibrate, export, eval) made:

    python benchmarks/bench_latency.py --bundle runs/demo/mixsize [--tune] [--sizes 16 24 32 48]
"""

# ruff: noqa: E402  (OMP_WAIT_POLICY must be set before torch is imported)
from __future__ import annotations

import os

# torch-2t's OpenMP workers would otherwise spin after each call (libgomp's default) and steal the
# cores from whichever engine the round-robin times next; set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mmdeploy.bundle import ONNX, Bundle
from mmdeploy.engines.base import Engine
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.torch_engine import TorchEngine
from mmdeploy.latency.bench import BenchTarget, environment, measure_with_interference
from mmdeploy.latency.threads import ThreadPolicy, usable_cores
from mmdeploy.latency.tune import ort_candidates, tune_bundle
from mmdeploy.report.pareto import speedup_at_iso_accuracy
from mmdeploy.results import Point, PointKey

BUSY_LOOP = "while True: pass"


class OrtDefaultEngine(Engine):
    """ONNX Runtime exactly as a user would first call it: no session options at all."""

    name = "ort-default"

    def __init__(self, path: Path, size: int):
        super().__init__(size)
        self.path = path
        self.policy = ThreadPolicy(usable_cores(), True, "onnxruntime default")

    def _activate(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _infer(self, x):
        import torch

        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


def targets_for(bundle: Bundle, sizes: list[int], batches: list[int], candidates: bool) -> list[BenchTarget]:
    targets = []
    for s in sizes:
        onnx = bundle.artifact_path(bundle.artifact(s, ONNX, "fp32"), "export the bundle first")
        targets.append(BenchTarget(s, "torch-1t", "fp32", lambda s=s: TorchEngine(bundle.build_model(s), s, device="cpu", policy=ThreadPolicy(1, False))))
        two = ThreadPolicy(usable_cores(), False, "torch default")
        targets.append(BenchTarget(s, "torch-2t", "fp32", lambda s=s, p=two: TorchEngine(bundle.build_model(s), s, device="cpu", policy=p)))
        for b in batches:
            targets.append(BenchTarget(s, "ort-mm", "fp32", lambda s=s, b=b: load_engine(bundle, "ort", s, tuned_batch=b), (b,)))
        targets.append(BenchTarget(s, "ort-default", "fp32", lambda s=s, o=onnx: OrtDefaultEngine(o, s)))
        if candidates:
            for pol in (p for p in ort_candidates() if not p.preset):  # the default session is timed as ort-default
                targets.append(BenchTarget(s, f"ort-{pol.label}", "fp32", lambda s=s, p=pol: load_engine(bundle, "ort", s, policy=p)))
    return targets


def speedup(by: dict, accuracy: dict, sizes: list[int], training_size: int, torch_engine: str) -> tuple[float, str]:
    """The report's headline at batch 1: fastest of torch/ort within 0.5 pt of torch at the training size."""
    points = []
    for s in sizes:
        for name, engine in ((torch_engine, "torch"), ("ort-mm", "ort")):
            if (s, engine) in accuracy:
                points.append(Point(s, engine, "fp32", 1, accuracy[(s, engine)], by[(s, name, 1)].p50_ms))
    result = speedup_at_iso_accuracy(points, PointKey(training_size, "torch", "fp32"), 0.5)
    return result.speedup, f"{result.best.key.label} over {result.reference.key.label}"


def run_phase(name: str, bundle: Bundle, args, candidates: bool) -> dict:
    burners = []
    if name == "busy":
        burners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(usable_cores())]
        time.sleep(0.5)
    try:
        results, seen = measure_with_interference(targets_for(bundle, args.sizes, args.batches, candidates), args.batches,
                                                  args.warmup, args.iters)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    by = {(r.size, r.engine, r.batch): r for r in results}
    print(f"\n=== {name}: {len(results)} points interleaved; detector: {'BUSY' if seen.busy else 'quiet'} ({seen.summary()})")
    print(f"{'size':>4} {'batch':>5} {'torch-1t':>9} {'torch-2t':>9} {'ort-mm':>8} {'settings':>9} {'ort-def':>8} "
          f"{'t1/mm':>6} {'t2/t1':>6} {'def/mm':>6}" + (f" {'fastest tried':>16} {'mm/fastest':>10}" if candidates else ""))
    for b in args.batches:
        for s in args.sizes:
            t1, t2, mm, df = (by[(s, e, b)] for e in ("torch-1t", "torch-2t", "ort-mm", "ort-default"))
            line = (f"{s:>4} {b:>5} {t1.p50_ms:>9.3f} {t2.p50_ms:>9.3f} {mm.p50_ms:>8.3f} {_label(mm.policy):>9} {df.p50_ms:>8.3f} "
                    f"{t1.p50_ms / mm.p50_ms:>6.2f} {t2.p50_ms / t1.p50_ms:>6.2f} {df.p50_ms / mm.p50_ms:>6.2f}")
            if candidates:
                tried = [by[(s, f"ort-{p.label}", b)] for p in ort_candidates() if not p.preset] + [df]
                fastest = min(tried, key=lambda r: r.p50_ms)
                line += f" {fastest.engine + f' {fastest.p50_ms:.3f}':>16} {mm.p50_ms / fastest.p50_ms:>10.3f}"
            print(line)
    return {"by": by, "seen": seen}


def _label(policy: dict) -> str:
    return f"{policy['threads']}t{' spin' if policy['spinning'] else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="a bundle with per-size ONNX and accuracies (e.g. runs/demo/mixsize)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 24, 28, 32, 40, 48])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tune", action="store_true", help="re-tune the bundle's ORT settings first (on the machine as it is)")
    ap.add_argument("--phases", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    args = ap.parse_args()

    bundle = Bundle.open(args.bundle)
    if args.tune:
        tuned = tune_bundle(bundle.root, sizes=args.sizes, batches=args.batches)
        print(f"tuned ({'BUSY' if tuned.busy else 'quiet'}: {tuned.interference}): "
              + ", ".join(f"{k} {p.label}" for k, p in sorted(tuned.chosen.items())))
        bundle = Bundle.open(args.bundle)
    env = environment()
    print(f"machine: {env['cpu']}, {usable_cores()} usable cores, torch {env['torch']}, onnxruntime {env.get('onnxruntime')}")
    accuracy = {(a.size, a.engine): a.top1 for a in bundle.accuracies() if a.calibrated and a.precision == "fp32"}
    phases = {name: run_phase(name, bundle, args, candidates=name == "quiet") for name in args.phases}
    if 1 not in args.batches or bundle.training_size not in args.sizes:
        return
    print("\nspeed-up at iso-accuracy (batch 1, within 0.5 pt of torch at the training size):")
    base = {}
    for name, phase in phases.items():
        for ref in ("torch-1t", "torch-2t"):
            value, what = speedup(phase["by"], accuracy, args.sizes, bundle.training_size, ref)
            base.setdefault(ref, value)
            change = value / base[ref] - 1
            print(f"  {name:>5}, reference {ref}: {value:.2f}x ({what})"
                  + (f"; {change:+.0%} vs {args.phases[0]}" if name != args.phases[0] else "")
                  + ("; the detector marks this run unreliable" if phase["seen"].busy else ""))


if __name__ == "__main__":
    main()
