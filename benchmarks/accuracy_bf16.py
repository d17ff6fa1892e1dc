"""Top-1 of the ov engine in bf16 vs fp32 per size, on a full test set, from a bundle exported with `--engine ov`.

Only the ov points are evaluated (one decode of each image for all sizes), so the run is short
enough for the full CIFAR-10 test set on a small CPU. Usage:

    python benchmarks/accuracy_bf16.py BUNDLE --data /path/to/cifar10/test
"""

from __future__ import annotations

import argparse

from mmdeploy.bundle import Bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.evaluate import EvalTarget, measure_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle)
    sizes = args.sizes or bundle.sizes
    targets = [EvalTarget(s, "ov", p, True, lambda s=s, p=p: load_engine(bundle, "ov", s, p)) for s in sizes for p in ("fp32", "bf16")]
    results = {(r.size, r.precision): r for r in measure_accuracy(targets, args.data, bundle.preprocess())}
    print(f"{'size':>4} {'fp32 top-1':>10} {'bf16 top-1':>10} {'bf16-fp32':>9}  images")
    for s in sizes:
        f, b = results[(s, "fp32")], results[(s, "bf16")]
        print(f"{s:>4} {f.top1:>10.2f} {b.top1:>10.2f} {b.top1 - f.top1:>+9.2f}  {f.images}")


if __name__ == "__main__":
    main()
