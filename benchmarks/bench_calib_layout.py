"""Calibration's forward in channels-last vs the contiguous layout, side by side in one process.

Times ``calibrate_bn`` (the statistics pass alone: no decoding) of the registered ``resnet50`` with random weights
on random uint8 images, alternating the two layouts round by round so that both see the same machine load, at the
torch thread counts given. Prints median images/s per layout and their ratio, with the load average before and
after (a busy machine makes the ratio, not the rate, the figure to read).

    python benchmarks/bench_calib_layout.py --size 160 --threads 1 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import mmdeploy.calib.bn as bn
from mmdeploy.data import Preprocess
from mmdeploy.models import create_model


def _one_pass(model, images, batches, size, pre) -> float:
    start = time.perf_counter()
    bn.calibrate_bn(model, images, batches, [size], pre, augment=True, seed=0)
    return sum(len(rows) for _, rows in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed pass")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("resnet50")
    n = args.batch_size * args.batches
    images = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8)
    batches = [(i, torch.arange(i * args.batch_size, (i + 1) * args.batch_size)) for i in range(args.batches)]
    pre = Preprocess("imagenet")
    default_min = bn.CHANNELS_LAST_MIN_SIZE
    layouts = {"contiguous": 10**9, "channels-last": default_min}  # the size from which channels-last is used
    print(f"resnet50 at {args.size} px, {n} images a pass, {args.rounds} rounds; load average before: {os.getloadavg()[0]:.2f}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {k: [] for k in layouts}
        for min_size in layouts.values():  # warm-up pass per layout (oneDNN primitive caches)
            bn.CHANNELS_LAST_MIN_SIZE = min_size
            _one_pass(model, images, batches[:1], args.size, pre)
        for r in range(args.rounds):
            for name in (list(layouts) if r % 2 == 0 else list(reversed(layouts))):
                bn.CHANNELS_LAST_MIN_SIZE = layouts[name]
                rates[name].append(_one_pass(model, images, batches, args.size, pre))
        bn.CHANNELS_LAST_MIN_SIZE = default_min
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{threads} thread(s): contiguous {med['contiguous']:.2f} images/s, channels-last {med['channels-last']:.2f} images/s, "
              f"ratio {med['channels-last'] / med['contiguous']:.2f}x  (per round: "
              + ", ".join(f"{a / b:.2f}" for a, b in zip(rates["channels-last"], rates["contiguous"])) + ")")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
