"""What a request pays for torch on the call path: the same mmdeploy engine called with a torch tensor and with a numpy
array, back to back and after an idle gap (the isolated usage), and the torch wrap alone (input from numpy, output to a
tensor), all interleaved in one process. Prints medians in microseconds and the cold/warm ratios.

    python benchmarks/bench_cold_call.py BUNDLE [--size 16] [--engine ort|ov] [--precision fp32] [--gap-ms 10] [--calls 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--engine", default="ort", choices=["ort", "ov"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--gap-ms", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()

    import mmdeploy

    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    out = np.zeros((1, 10), np.float32)

    def wrap():
        torch.from_numpy(x).numpy()
        return torch.from_numpy(out)

    with mmdeploy.load_engine(args.bundle, args.engine, size=args.size, precision=args.precision) as run:
        cases = {"torch wrap alone": wrap, "engine(torch tensor)": lambda: run(torch.from_numpy(x)), "engine(numpy array)": lambda: run(x)}
        for f in cases.values():
            for _ in range(20):
                f()
        cold: dict[str, list[float]] = {n: [] for n in cases}
        warm: dict[str, list[float]] = {n: [] for n in cases}
        order, rng = list(cases), random.Random(0)
        for _ in range(args.calls):
            rng.shuffle(order)
            for name in order:
                f = cases[name]
                time.sleep(args.gap_ms / 1000)
                start = time.perf_counter()
                f()
                cold[name].append(1e6 * (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(20):
                    f()
                warm[name].append(1e6 * (time.perf_counter() - start) / 20)
    print(f"{args.engine} {args.precision} {args.size} px batch 1; {args.calls} rounds, interleaved; cold = the first call after {args.gap_ms:g} ms idle")
    print(f"{'':24s} {'cold us':>9s} {'warm us':>9s}")
    for name in cases:
        print(f"{name:24s} {statistics.median(cold[name]):9.1f} {statistics.median(warm[name]):9.1f}")
    c = {n: statistics.median(v) for n, v in cold.items()}
    print(f"cold: engine(torch) - engine(numpy) = {c['engine(torch tensor)'] - c['engine(numpy array)']:.1f} us "
          f"({c['engine(torch tensor)'] / c['engine(numpy array)']:.2f}x)")


if __name__ == "__main__":
    main()
