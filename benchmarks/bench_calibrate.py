"""Calibration throughput of the toolkit next to a bare torch loop doing the same forward passes.

For a CIFAR ResNet-20 at each size (16, 32, 48 by default), both sides start from the same
decoded uint8 images and the same batches, and both *include* the per-batch preprocessing
(``to_input``: resize, the seeded training augmentation, normalization), which
``calibrate_bn`` does inside its loop. Decoding the files is excluded from both (it happens
once, before timing; its own rate is printed for reference).

- toolkit: ``calibrate_bn`` (exact per-channel sums, hooks, state save/restore) followed by
  ``finalize_bn_state``;
- bare: ``model.eval()``, BN layers in train mode, ``torch.no_grad()``, ``model(x)`` per batch.

Runs are interleaved (toolkit, bare, toolkit, bare, ...) and the medians are reported, with
the ratio toolkit time / bare time (target: at most 1.10).

    python benchmarks/bench_calibrate.py --images 2048 --batch-size 64 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmdeploy.calib.bn import augment_generator, bn_layers, calibrate_bn, finalize_bn_state, plan_batches
from mmdeploy.data import Preprocess, decode_images, scan_image_folder, store_resolution, to_device, to_input
from mmdeploy.models import create_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10/train"
CIFAR = Preprocess("cifar", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def toolkit_run(model, images, batches, sizes, seed, device) -> float:
    _sync(device)
    start = time.perf_counter()
    sums = calibrate_bn(model, images, batches, sizes, CIFAR, augment=True, seed=seed, device=device)
    for size in sizes:
        finalize_bn_state(model, sums[size], len(batches))
    return time.perf_counter() - start


@torch.no_grad()
def bare_run(model, images, batches, sizes, seed, device) -> float:
    _sync(device)
    start = time.perf_counter()
    model.eval()
    for _, m in bn_layers(model):
        m.train()
    for batch_index, positions in batches:
        batch = to_device(images[positions], device)
        for size in sizes:
            model(to_input(batch, size, CIFAR, augment_generator(seed, size, batch_index)))
    model.eval()
    _sync(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ImageFolder of CIFAR-10 training images")
    parser.add_argument("--images", type=int, default=2048, help="how many images to calibrate on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 48])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved runs per side; medians are reported")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = scan_image_folder(args.data)
    gen = torch.Generator().manual_seed(0)
    chosen = sorted(torch.randperm(len(folder), generator=gen)[: args.images].tolist())
    start = time.perf_counter()
    decoded = decode_images(folder, chosen, "cifar", store_resolution(folder, "cifar", args.sizes))
    decode_s = time.perf_counter() - start
    images = decoded.images
    batches = [(i, torch.tensor(b)) for i, b in enumerate(plan_batches(len(images), args.batch_size, 10**9, seed=0))]
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval().to(args.device)

    rows = []
    for sizes in [[s] for s in args.sizes] + ([args.sizes] if len(args.sizes) > 1 else []):
        toolkit_run(model, images, batches[:2], sizes, 0, args.device)  # warm-up both paths (allocator, kernels)
        bare_run(model, images, batches[:2], sizes, 0, args.device)
        toolkit, bare = [], []
        for i in range(args.repeats):  # alternate which side goes first, so drift favours neither
            for side in ((toolkit_run, toolkit), (bare_run, bare))[:: 1 if i % 2 == 0 else -1]:
                side[1].append(side[0](model, images, batches, sizes, 0, args.device))
        t, b = statistics.median(toolkit), statistics.median(bare)
        ratios = sorted(tk / br for tk, br in zip(toolkit, bare))  # per interleaved pair
        n = len(images) * len(sizes)  # image forward passes
        rows.append({"sizes": sizes, "toolkit_img_s": n / t, "bare_img_s": n / b, "ratio": t / b,
                     "pair_ratio_median": statistics.median(ratios), "pair_ratio_min": ratios[0], "pair_ratio_max": ratios[-1], "toolkit_s": toolkit, "bare_s": bare})

    info = {"images": len(images), "batch_size": args.batch_size, "batches": len(batches), "repeats": args.repeats,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": _device_name(args.device), "decode_img_s": len(images) / decode_s,
            "preprocessing": "included in both (to_input with augmentation); decoding excluded from both"}
    if args.json:
        print(json.dumps({**info, "results": rows}, indent=2))
        return 0
    print(f"CIFAR ResNet-20 on {info['device']}, {info['images']} images, batch {info['batch_size']} ({info['batches']} batches), "
          f"{info['threads']} threads, torch {info['torch']}, medians of {args.repeats} interleaved runs")
    print(f"preprocessing: {info['preprocessing']}; decoding alone: {info['decode_img_s']:.0f} img/s")
    print(f"{'sizes':>9}  {'toolkit img/s':>13}  {'bare img/s':>10}  {'toolkit/bare':>12}  {'pairs: median (range)':>22}")
    for r in rows:
        print(f"{','.join(map(str, r['sizes'])):>9}  {r['toolkit_img_s']:>13.0f}  {r['bare_img_s']:>10.0f}  {r['ratio']:>12.3f}  "
              f"{r['pair_ratio_median']:>8.3f} ({r['pair_ratio_min']:.3f}..{r['pair_ratio_max']:.3f})")
    worst = max(r["ratio"] for r in rows)
    print(f"worst overhead: {100 * (worst - 1):+.1f}% (target: at most +10%)")
    return 0


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return platform.processor() or platform.machine() or "cpu"


if __name__ == "__main__":
    sys.exit(main())
