"""Where ``--batches auto`` stops, and how far its statistics are from a longer calibration's.

One calibration pass per size (``calibrate_bn`` on decoded images, as ``mmdeploy calibrate`` runs it) feeds the
stopping rule's :class:`~mmdeploy.calib.convergence.Convergence` without letting it stop: the running float64 means
and variances are snapshotted at the batch where auto would have stopped, and the pass goes on to a reference
count (``--reference N`` batches, or ``--factor`` times the stop). Per BN layer it prints the distance of the
stop's statistics from the reference's: max |mean diff| / reference std and max |var diff| / reference var over
the channels; then the worst layer and the median layer. The reference is itself a sample: a reference of k times
the stop's images still carries 1/sqrt(k) of the stop's sampling noise.

    python benchmarks/bench_auto_stop.py --sizes 160 --factor 4                 # resnet50, random weights
    python benchmarks/bench_auto_stop.py --sizes 128 --reference 200
    python benchmarks/bench_auto_stop.py --checkpoint models/X.pth --sizes 32 --preprocess cifar --reference 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


class _Watch:
    """Feeds a rule-carrying Convergence per size; snapshots each size's statistics where the rule fires, and stops
    the pass (``stopped``) once every size reached its reference count."""

    def __init__(self, layers, sizes, factor: float | None, reference: int | None, max_batches: int):
        from mmdeploy.calib.convergence import Convergence, StoppingRule

        names, channels = [n for n, _ in layers], [m.num_features for _, m in layers]
        self.rule = StoppingRule(max_batches=max_batches)
        self.conv = {s: Convergence(names, channels, [s], self.rule) for s in sizes}
        self.names, self.channels = names, channels
        self.factor, self.reference, self.max_batches = factor, reference, max_batches
        self.stop_at: dict[int, int] = {}
        self.snap: dict[int, tuple] = {}
        self.batches = 0
        self.stopped = False

    def add_batch(self, batch_index, stats):
        self.batches += 1
        for size, c in self.conv.items():
            c.add_batch(batch_index, {size: stats[size]})
            if c.stopped and size not in self.stop_at:
                self.stop_at[size] = self.batches
                self.snap[size] = tuple(t.clone() for t in c._mean_var(size))
        self.stopped = all(self._target(s) is not None and self.batches >= self._target(s) for s in self.conv)

    def _target(self, size):
        if self.reference:
            return self.reference
        return None if size not in self.stop_at else min(self.max_batches, round(self.factor * self.stop_at[size]))

    def distances(self, size):
        ref_mean, ref_var = self.conv[size]._mean_var(size)
        mean, var = self.snap[size]
        eps = 1e-5
        dm = ((mean - ref_mean).abs() / (ref_var + eps).sqrt()).split(self.channels)
        dv = ((var - ref_var).abs() / (ref_var + eps)).split(self.channels)
        return [(n, a.max().item(), b.max().item()) for n, a, b in zip(self.names, dm, dv)]


def _yield_to_quiet_window(mine: str | None, flag: Path = Path("/tmp/QUIET.d")) -> None:
    """A long statistics run on a shared machine pauses while someone else times something (the team's quiet window;
    a window held under ``--quiet-name``, this run's own, does not pause it)."""
    while flag.is_dir() and time.time() - flag.stat().st_mtime < 1200:
        try:
            holder = (flag / "holder").read_text().split()
        except OSError:
            holder = []
        if mine and holder and holder[0] == mine:
            return
        time.sleep(5)


def main(argv=None) -> int:
    from bench_scale import DEFAULT_CIFAR, make_checkpoint, make_imagenet_folder

    from mmdeploy.calib.bn import bn_layers, calibrate_bn, plan_batches
    from mmdeploy.data import Preprocess, decode_for_sizes, scan_image_folder
    from mmdeploy.models import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[160])
    p.add_argument("--factor", type=float, default=4.0, help="reference = factor x the stop's batches (capped at --max-batches)")
    p.add_argument("--reference", type=int, default=None, help="reference batch count (overrides --factor)")
    p.add_argument("--max-batches", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: resnet50 with random weights (seed 0)")
    p.add_argument("--arch", default=None)
    p.add_argument("--data", type=Path, default=None, help="image folder (default: ImageNet-style folder of the shared CIFAR JPEGs)")
    p.add_argument("--preprocess", default="imagenet")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--quiet-name", default=None, help="your name in /tmp/QUIET.d/holder: your own quiet window does not pause the run")
    args = p.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_auto_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or make_imagenet_folder(DEFAULT_CIFAR, work / "imagenet", 10, 5000)
    ckpt_path = args.checkpoint or make_checkpoint(work / "resnet50_random.pth")
    model = load_checkpoint(ckpt_path, arch=args.arch or (None if args.checkpoint else "resnet50")).build()
    folder = scan_image_folder(data)
    pre = Preprocess(args.preprocess)
    layers = bn_layers(model)
    count = args.reference or args.max_batches
    plan = list(enumerate(plan_batches(len(folder), args.batch_size, count, seed=0)))
    watch = _Watch(layers, args.sizes, args.factor, args.reference, count)
    print(f"{ckpt_path.name} ({len(layers)} BN layers) on {len(folder)} images of {folder.root}; sizes {args.sizes}; "
          f"reference: {f'{args.reference} batches' if args.reference else f'{args.factor:g}x the stop (at most {count})'}; "
          f"rule {watch.rule.describe()}", flush=True)
    start = time.perf_counter()
    for lo in range(0, len(plan), 8):  # decode 8 batches at a time, as auto does
        _yield_to_quiet_window(args.quiet_name)
        chunk = plan[lo : lo + 8]
        wanted = sorted({i for _, b in chunk for i in b})
        decoded = decode_for_sizes(folder, wanted, pre.kind, args.sizes)
        row = {f: r for r, f in enumerate(wanted)}
        rows = [(bi, torch.tensor([row[i] for i in b], dtype=torch.long)) for bi, b in chunk]
        calibrate_bn(model, decoded.per_size or decoded.images, rows, args.sizes, pre, True, 0, "cpu", None, watch)
        print(f"  {watch.batches} batches, {time.perf_counter() - start:.0f} s; auto stops so far: {watch.stop_at}", flush=True)
        if watch.stopped:
            break
    for size in args.sizes:
        if size not in watch.snap:
            print(f"{size} px: auto did not stop within {watch.batches} batches")
            continue
        d = watch.distances(size)
        worst_m, worst_v = max(d, key=lambda t: t[1]), max(d, key=lambda t: t[2])
        print(f"{size} px: auto stops at {watch.stop_at[size]} batches = {watch.stop_at[size] * args.batch_size} images; "
              f"reference {watch.batches} batches = {watch.batches * args.batch_size} images")
        print(f"  |mean diff| / ref std: worst layer {worst_m[1]:.4f} ({worst_m[0]}), median layer {statistics.median(t[1] for t in d):.4f}")
        print(f"  |var diff| / ref var:  worst layer {worst_v[2]:.4f} ({worst_v[0]}), median layer {statistics.median(t[2] for t in d):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
