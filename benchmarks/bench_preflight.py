"""Benchmark: what the checks made before any work cost, next to reading the checkpoint itself.

For each architecture, one interleaved run (round-robin, so machine load hits every step alike)
times: ``torch.load`` of its state dict (weights_only), the NaN/Inf scan of the weights, and the
fit probe (one image at 32 px: class count and activation estimate). Prints medians and each
check's ratio to the load. Usage (from a checkout):

    python benchmarks/bench_preflight.py --archs cifar_resnet20 resnet50 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmdeploy.models import create_model
from mmdeploy.models.checkpoint import check_finite
from mmdeploy.models.fit import check_model_fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cifar_resnet20", "resnet50"])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'arch':<16} {'params':>10} {'load ms':>9} {'finite ms':>10} {'probe ms':>9} {'finite/load':>12} {'probe/load':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            model = create_model(arch).eval()
            state = model.state_dict()
            path = Path(tmp) / f"{arch}.pth"
            torch.save(state, path)
            steps = {
                "load": lambda: torch.load(path, map_location="cpu", weights_only=True),
                "finite": lambda: check_finite(state, path),
                "probe": lambda: check_model_fits(model, [32], 64, "cpu", data_classes=10),
            }
            times: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.reps):
                for name, step in steps.items():
                    t = time.perf_counter()
                    step()
                    times[name].append(1e3 * (time.perf_counter() - t))
            med = {k: statistics.median(v) for k, v in times.items()}
            params = sum(p.numel() for p in model.parameters())
            print(f"{arch:<16} {params:>10,} {med['load']:>9.2f} {med['finite']:>10.2f} {med['probe']:>9.2f} "
                  f"{med['finite'] / med['load']:>12.2f} {med['probe'] / med['load']:>11.2f}")


if __name__ == "__main__":
    main()
