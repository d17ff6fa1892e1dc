"""Benchmark: per-size INT8 (QDQ, ONNX Runtime) vs the per-size fp32 ONNX, accuracy and latency.

For each model: calibrate BN per size on the calibration images (reused when unchanged), export
the per-size fp32 ONNX, quantize each size with every activation calibration method asked for
(ranges from that size's BN calibration images), then
  - top-1 of fp32 and of each INT8 method on the whole test set, every size (one decode pass),
  - p50 latency of fp32 and INT8 (first method) at batch 1 and 32, all points timed round-robin
    in one run, with the int8/fp32 ratio, and the ops that stayed in float.
Usage (from a checkout):

    python benchmarks/bench_int8.py --data ../shared/data/cifar10/test --methods minmax entropy percentile
    python benchmarks/bench_int8.py --skip-accuracy      # latency only (e.g. while other work is paused)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmdeploy.bundle import ONNX, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.evaluate import EvalTarget, measure_accuracy
from mmdeploy.export.quantize import DEFAULT_IMAGES, METHODS, calibration_batches, fp32_nodes, quantize_int8
from mmdeploy.export.workflow import export_bundle
from mmdeploy.latency.bench import BenchTarget, environment, measure_latency

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"mixsize": ROOT / "models/cifar_resnet20_mixsize_dplus.pth", "fixed32": ROOT / "models/cifar_resnet20_fixed32.pth"}


def quantized(bundle: Bundle, work: Path, size: int, method: str, images: int) -> Path:
    """The size's INT8 ONNX for one method (kept in ``work``; remade when the fp32 ONNX changed)."""
    fp32 = bundle.artifact_path(bundle.artifact(size, ONNX, "fp32"), "export the bundle first")
    out = work / f"{size}.{method}.{images}.u8.{bundle.artifact(size, ONNX, 'fp32').sha256[:12]}.int8.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_int8(fp32, out, calibration_batches(bundle.size(size).calibration.fields, bundle.preprocess(), size, images), method)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="test ImageFolder (top-1), e.g. the CIFAR-10 test set")
    ap.add_argument("--calib", default=str(ROOT / "calib/train"), help="calibration images (BN and INT8 ranges)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 24, 28, 32, 40, 48])
    ap.add_argument("--methods", nargs="+", default=["minmax"], choices=METHODS, help="the first one is also timed")
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="INT8 calibration images per size")
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_int8"), help="bundles and quantized files (reused across runs)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    env = environment()
    print(f"cpu: {env['cpu']} ({env['cpu_count']} cores), onnxruntime {env.get('onnxruntime')}, torch {env['torch']}")
    for name in args.models:
        out = Path(args.work) / name
        calibrate_to_bundle(MODELS[name], args.sizes, args.calib, out)
        export_bundle(out, "ort", ["fp32"], sizes=args.sizes, dynamic=False)
        bundle = Bundle.open(out)
        q = {(s, m): quantized(bundle, out / "int8", s, m, args.images) for s in args.sizes for m in args.methods}
        fp32 = {s: bundle.artifact_path(bundle.artifact(s, ONNX, "fp32"), "export the bundle first") for s in args.sizes}
        if not args.skip_accuracy:
            targets = [EvalTarget(s, "ort", "fp32", True, lambda s=s: OrtEngine(fp32[s], s)) for s in args.sizes]
            targets += [EvalTarget(s, "ort", m, True, lambda s=s, m=m: OrtEngine(q[s, m], s, "int8")) for s in args.sizes for m in args.methods]
            acc = {(r.size, r.precision): r for r in measure_accuracy(targets, args.data, bundle.preprocess(), limit=args.limit)}
            n = next(iter(acc.values())).images
            print(f"\n{name}: top-1 % on {n} test images (ONNX Runtime, per-size ONNX; int8 columns: minus fp32 in pt)")
            print(f"{'size':>5} {'fp32':>7} " + " ".join(f"{m:>16}" for m in args.methods))
            for s in args.sizes:
                base = acc[s, "fp32"].top1
                cells = " ".join(f"{acc[s, m].top1:8.2f} ({acc[s, m].top1 - base:+5.2f})" for m in args.methods)
                print(f"{s:5d} {base:7.2f} {cells}")
        if not args.skip_latency:
            import onnx

            method = args.methods[0]
            targets = [BenchTarget(s, "ort", "fp32", lambda s=s: OrtEngine(fp32[s], s)) for s in args.sizes]
            targets += [BenchTarget(s, "ort", "int8", lambda s=s: OrtEngine(q[s, method], s, "int8")) for s in args.sizes]
            lat = {(r.size, r.precision, r.batch): r.p50_ms for r in measure_latency(targets, args.batches, args.warmup, args.iters)}
            print(f"\n{name}: p50 ms, ONNX Runtime CPU, {env['cpu_count']} threads, int8 = {method}, round-robin in one run "
                  f"({args.iters} iters)")
            print(f"{'size':>5} " + " ".join(f"{'fp32 b' + str(b):>10} {'int8 b' + str(b):>10} {'speed-up':>8}" for b in args.batches))
            for s in args.sizes:
                cells = " ".join(f"{lat[s, 'fp32', b]:10.3f} {lat[s, 'int8', b]:10.3f} {lat[s, 'fp32', b] / lat[s, 'int8', b]:7.2f}x"
                                 for b in args.batches)
                print(f"{s:5d} {cells}")
            info = fp32_nodes(onnx.load(str(q[args.sizes[0], method])))
            print(f"quantized compute nodes: {info['quantized_nodes']}; left in float: {info['float_nodes']} ({', '.join(info['float_ops'])})")


if __name__ == "__main__":
    main()
