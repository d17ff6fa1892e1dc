"""Benchmark: torch eager vs ONNX Runtime (dynamic ONNX and per-size ONNX) per size, batch 1 and 32.

Prints p50 latencies measured round-robin in one run, their ratios, and the achieved GFLOP/s
(FLOPs from torch's FlopCounterMode, 2 per multiply-add) next to this machine's measured fp32
matmul GFLOP/s. Usage (from a checkout, after `pip install -e .`):

    python benchmarks/bench_export.py --checkpoint models/cifar_resnet20_mixsize_dplus.pth --sizes 16 24 32 48
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmdeploy.bundle import Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.torch_engine import TorchEngine
from mmdeploy.export.workflow import export_bundle
from mmdeploy.latency.bench import BenchTarget, environment, measure_latency

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(sizes=(1024, 2048), reps: int = 10) -> float:
    """The machine's fp32 matmul rate: the best median over a few square sizes (torch, all threads)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def flops(model: torch.nn.Module, size: int, batch: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "models/cifar_resnet20_mixsize_dplus.pth"))
    ap.add_argument("--bundle", default=None, help="reuse an existing bundle (else one is made in a temp dir)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    bundle_dir = Path(args.bundle) if args.bundle else Path(tempfile.mkdtemp()) / "bundle"
    if not Bundle.is_bundle(bundle_dir):
        calibrate_to_bundle(args.checkpoint, args.sizes, ROOT / "calib/train", bundle_dir, batches=4)
    export_bundle(bundle_dir, "ort", ["fp32"], sizes=args.sizes)
    bundle = Bundle.open(bundle_dir)
    targets = []
    for s in args.sizes:
        targets.append(BenchTarget(s, "torch", "fp32", lambda s=s: TorchEngine(bundle.build_model(s), s, device="cpu")))
        targets.append(BenchTarget(s, "ort-dynamic", "fp32", lambda s=s: load_engine(bundle, "ort", s, variant="dynamic")))
        targets.append(BenchTarget(s, "ort-per-size", "fp32", lambda s=s: load_engine(bundle, "ort", s)))
    peak = matmul_gflops()
    results = measure_latency(targets, args.batches, args.warmup, args.iters)
    env = environment()
    print(f"machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), onnxruntime {env.get('onnxruntime')}")
    print(f"measured fp32 matmul (best of 1024^3, 2048^3): {peak:.1f} GFLOP/s\n")
    by = {(r.size, r.engine, r.batch): r for r in results}
    model = bundle.build_model(args.sizes[0])
    header = f"{'size':>4} {'batch':>5} {'torch ms':>9} {'ort-dyn ms':>10} {'ort-size ms':>11} {'eager/dyn':>9} {'eager/size':>10} {'dyn/size':>8} {'GFLOP':>7} {'GFLOP/s size':>12} {'% matmul':>8}"
    print(header)
    for b in args.batches:
        for s in args.sizes:
            t, d, p = by[(s, "torch", b)].p50_ms, by[(s, "ort-dynamic", b)].p50_ms, by[(s, "ort-per-size", b)].p50_ms
            gf = flops(model, s, b) / 1e9
            achieved = gf / (p / 1000)
            print(f"{s:>4} {b:>5} {t:>9.3f} {d:>10.3f} {p:>11.3f} {t / d:>9.2f} {t / p:>10.2f} {d / p:>8.2f} {gf:>7.3f} {achieved:>12.1f} {100 * achieved / peak:>7.1f}%")


if __name__ == "__main__":
    main()
