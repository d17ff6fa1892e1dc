"""Benchmark: is mmdeploy's best CPU point the fastest way to run the per-size ONNX on this machine?

One interleaved run (round-robin, shuffled per round, after warm-up) of, per size and batch:
torch eager; ONNX Runtime with a default session; ONNX Runtime with mmdeploy's settings (the
``ort`` engine); OpenVINO fp32 and bf16 with mmdeploy's settings (the ``ov`` engine: latency
hint at batch 1, batch split over streams with the throughput hint at large batches); OpenVINO
bf16 with the latency hint only; and OpenVINO with its own defaults (``compile_model(onnx,
"CPU")``: its default precision, which is bf16 on CPUs that have it). Prints p50 ms per
configuration and, per cell, mmdeploy's best point over the fastest configuration of any kind
(1.00 = mmdeploy offers the fastest). ONNX Runtime's settings are first tuned by measurement
(``mmdeploy bench --tune``: threads x spinning per size and batch), as ``mmdeploy run`` does.

With ``--int8``, the per-size QDQ INT8 ONNX (``mmdeploy export --precision int8``) is timed
under ONNX Runtime (mmdeploy's ``ort int8`` point, tuned), under OpenVINO (mmdeploy's ``ov int8``
point, tuned) and under OpenVINO with its own defaults (``ov-default int8``), and the top-1 agreement of the two on random inputs is
printed; the summary says which runtime was faster in each cell. Usage (from a checkout, with
openvino installed):

    python benchmarks/bench_engines.py --sizes 16 24 32 48 --batches 1 32 [--int8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from mmdeploy.bundle import Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.engines.base import Engine
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.openvino import OvEngine, native_bf16
from mmdeploy.engines.torch_engine import TorchEngine
from mmdeploy.export.workflow import export_bundle
from mmdeploy.latency.bench import BenchTarget, environment, measure_latency
from mmdeploy.latency.tune import tune_bundle

ROOT = Path(__file__).resolve().parents[1]
MMDEPLOY_POINTS = ("torch", "ort", "ort int8", "ov fp32", "ov bf16", "ov int8")  # what mmdeploy measures and may pick


class _OrtDefault(Engine):
    """A plain onnxruntime.InferenceSession: what a user gets without any settings."""

    name = "ort-default"

    def __init__(self, path: Path, size: int):
        super().__init__(size)
        self.path = path

    def _activate(self):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])

    def _infer(self, x):
        return torch.from_numpy(self.session.run(None, {"images": np.ascontiguousarray(x.numpy())})[0])


class _OvDefault(Engine):
    """OpenVINO with no configuration: ``compile_model(onnx, "CPU")`` and one infer request."""

    name = "ov-default"

    def __init__(self, path: Path, size: int):
        super().__init__(size)
        self.path = path

    def _activate(self):
        import openvino as ov

        self.request = ov.Core().compile_model(str(self.path), "CPU").create_infer_request()

    def _infer(self, x):
        self.request.infer({0: x.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "models/cifar_resnet20_mixsize_dplus.pth"))
    ap.add_argument("--bundle", default=None, help="reuse an existing bundle (else one is made in a temp dir)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--int8", action="store_true", help="also compare ORT INT8 with OpenVINO on the same QDQ ONNX")
    ap.add_argument("--no-tune", action="store_true", help="keep the bundle's stored ORT settings (or the defaults)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="threads for torch eager (default: torch's); on an oversubscribed machine its OpenMP threads thrash")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    bundle_dir = Path(args.bundle) if args.bundle else Path(tempfile.mkdtemp()) / "bundle"
    if not Bundle.is_bundle(bundle_dir):
        calibrate_to_bundle(args.checkpoint, args.sizes, ROOT / "calib/train", bundle_dir, batches=4)
    precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    export_bundle(bundle_dir, "ov", precisions, sizes=args.sizes, dynamic=False)
    ort_precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
    if args.int8:
        export_bundle(bundle_dir, "ort", ["int8"], sizes=args.sizes, dynamic=False)
        export_bundle(bundle_dir, "ov", ["int8"], sizes=args.sizes, dynamic=False)
    if not args.no_tune:
        tuned = tune_bundle(bundle_dir, sorted(set(ort_precisions) | set(precisions)), args.sizes, args.batches)
        print(f"tuned ORT/OpenVINO settings ({'busy machine: ' + tuned.interference if tuned.busy else 'quiet'}): "
              + ", ".join(f"{k} {p.label}" for k, p in tuned.chosen.items()))
    bundle = Bundle.open(bundle_dir)
    targets = []
    for s in args.sizes:
        onnx = bundle.path(f"sizes/{s}/model.onnx")
        targets.append(BenchTarget(s, "torch", "fp32", lambda s=s: TorchEngine(bundle.build_model(s), s, device="cpu")))
        targets.append(BenchTarget(s, "ort-default", "fp32", lambda s=s, o=onnx: _OrtDefault(o, s)))
        for b in args.batches:  # ORT's settings are tuned per batch: one session per batch
            for p in ort_precisions:
                name = "ort" if p == "fp32" else f"ort {p}"
                targets.append(BenchTarget(s, name, p, lambda s=s, p=p, b=b: load_engine(bundle, "ort", s, p, tuned_batch=b), (b,)))
        if args.int8:  # mmdeploy's ov int8 point (tuned), and OpenVINO on the same file with its own defaults
            for b in args.batches:
                targets.append(BenchTarget(s, "ov int8", "int8", lambda s=s, b=b: load_engine(bundle, "ov", s, "int8", tuned_batch=b), (b,)))
            qdq = bundle.path(f"sizes/{s}/model.int8.onnx")
            targets.append(BenchTarget(s, "ov-default int8", "int8", lambda s=s, o=qdq: _OvDefault(o, s)))
        for p in precisions:
            targets.append(BenchTarget(s, f"ov {p}", p, lambda s=s, p=p: load_engine(bundle, "ov", s, p)))
        if "bf16" in precisions:
            targets.append(BenchTarget(s, "ov bf16 latency-only", "bf16", lambda s=s, o=onnx: OvEngine(o, s, "bf16", throughput_min_batch=10**9)))
        targets.append(BenchTarget(s, "ov-default", "default", lambda s=s, o=onnx: _OvDefault(o, s)))
    results = measure_latency(targets, args.batches, args.warmup, args.iters)
    env = environment()
    print(f"machine: {env['cpu']}, {env['cpu_count']} cores; torch {env['torch']}, onnxruntime {env.get('onnxruntime')}, "
          f"openvino {env.get('openvino')}; torch threads {torch.get_num_threads()}; {args.iters} timed rounds after {args.warmup} warm-up rounds")
    names = list(dict.fromkeys(t.engine for t in targets))
    by = {(r.size, r.engine, r.batch): r.p50_ms for r in results}
    print(f"{'size':>4} {'batch':>5} " + " ".join(f"{n:>{max(9, len(n))}}" for n in names) + "   mmdeploy best / fastest")
    for b in args.batches:
        for s in args.sizes:
            row = {n: by[(s, n, b)] for n in names}
            fastest = min(row, key=row.get)
            best = min((n for n in names if n in MMDEPLOY_POINTS), key=row.get)
            cells = " ".join(f"{row[n]:>{max(9, len(n))}.3f}" for n in names)
            print(f"{s:>4} {b:>5} {cells}   {row[best] / row[fastest]:.2f} ({best} vs {fastest})")
    print("p50 ms; mmdeploy's points: " + ", ".join(MMDEPLOY_POINTS))
    if args.int8:
        _int8_agreement(bundle, args.sizes)
        for b in args.batches:
            print(f"batch {b}: OpenVINO / ORT on the same QDQ INT8 ONNX: " + ", ".join(
                f"{s} px {by[(s, 'ov int8', b)] / by[(s, 'ort int8', b)]:.2f}" for s in args.sizes) + "  (< 1: OpenVINO faster)")


def _int8_agreement(bundle, sizes) -> None:
    """Top-1 agreement of ORT and OpenVINO on the same INT8 file (random inputs; accuracy is eval's job)."""
    gen = torch.Generator().manual_seed(0)
    for s in sizes:
        x = torch.randn(64, 3, s, s, generator=gen)
        with load_engine(bundle, "ort", s, "int8") as ort_run, load_engine(bundle, "ov", s, "int8") as ov_run:
            agree = (ort_run(x).argmax(1) == ov_run(x).argmax(1)).float().mean().item()
        print(f"int8 {s} px: ORT and OpenVINO agree on top-1 for {agree:.0%} of 64 random inputs")


if __name__ == "__main__":
    main()
