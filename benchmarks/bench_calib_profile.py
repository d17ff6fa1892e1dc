"""Where the time of one calibration batch goes: decoding, input making, convolutions, the exact BN statistics kernel.

``resnet50`` (random weights) at ``--size`` px, batches of ``--batch-size``, as ``mmdeploy calibrate`` runs them:

- decode: ``decode_for_sizes`` of the batch's files, on the shared CIFAR JPEGs (32 px: nearly free) and on the same
  images re-saved as 500x375 JPEGs (quality 90: an ImageNet photo's size), to show what real photos cost;
- inputs: ``to_input`` (uint8 -> float, resize, crop-and-flip augmentation, normalization);
- forward: ``calibrate_bn``'s pass over ``--chunk`` batches (channels-last; inputs made inside), per batch, split with ``torch.profiler`` into convolutions,
  our BN kernel (``_batch_norm_channels_last``: two passes, float32 sums), and the rest (ReLU, adds, pooling);
- for scale, PyTorch's own channels-last batch norm (float32 single-pass sums, not exact) on the same inputs.

Both BN kernels are timed outside the forward on every layer's captured input of a quarter batch, times 4; the
convolutions are the profiler's self time of the conv ops; "rest" is the pass's wall time less both and the inputs
(ReLU, adds, pooling, the statistics' bookkeeping, the profiler's own overhead).

Medians over ``--rounds``. ``torch.set_num_threads`` as given (default: all cores).

    python benchmarks/bench_calib_profile.py --size 160 --rounds 3
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


def _photos(cifar: Path, out: Path, n: int) -> Path:
    from PIL import Image

    folder = out / "photos" / "n01440764"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted((cifar / "airplane").iterdir())[:n]):
        with Image.open(f) as im:
            im.convert("RGB").resize((500, 375), Image.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)
    return out / "photos"


def main(argv=None) -> int:
    from bench_scale import DEFAULT_CIFAR, make_imagenet_folder

    import mmdeploy.calib.bn as bn
    from mmdeploy.data import Preprocess, decode_for_sizes, scan_image_folder, to_input
    from mmdeploy.models import create_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=8, help="batches per calibrate_bn call, as --batches auto decodes them (per-call costs amortize)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_profile_"))
    cifar = scan_image_folder(make_imagenet_folder(DEFAULT_CIFAR, work / "imagenet", 10, -(-args.batch_size // 10)))
    photos = scan_image_folder(_photos(DEFAULT_CIFAR, work, args.batch_size))
    pre, size, idx = Preprocess("imagenet"), args.size, list(range(args.batch_size))
    torch.manual_seed(0)
    model = create_model("resnet50")
    times: dict[str, list[float]] = {k: [] for k in ("decode CIFAR JPEGs (32 px)", "decode 500x375 JPEGs", "inputs (to_input)",
                                                    "forward: convolutions", "forward: exact BN kernel", "forward: rest",
                                                    "forward: total (inputs included)", "PyTorch's own channels-last BN (not exact)")}
    decoded = decode_for_sizes(photos, idx, pre.kind, [size])
    batch = [(i, torch.arange(args.batch_size)) for i in range(args.chunk)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):  # warm-up (oneDNN primitives, the profiler)
        bn.calibrate_bn(model, decoded.per_size, batch[:1], [size], pre)
    _inputs_once(model, decoded.per_size[size], size, pre, bn)
    _time_bn_kernel(model, decoded.per_size[size], size, pre, bn)
    for _ in range(args.rounds):
        for name, folder in (("decode CIFAR JPEGs (32 px)", cifar), ("decode 500x375 JPEGs", photos)):
            t = time.perf_counter()
            decoded = decode_for_sizes(folder, idx, pre.kind, [size])
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        to_input(decoded.per_size[size], size, pre, bn.augment_generator(0, size, 0))
        times["inputs (to_input)"].append(time.perf_counter() - t)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            bn.calibrate_bn(model, decoded.per_size, batch, [size], pre)
            total = (time.perf_counter() - t) / args.chunk
        ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        conv = sum(v for k, v in ops.items() if "conv" in k) / args.chunk
        t = time.perf_counter()
        _time_bn_kernel(model, decoded.per_size[size], size, pre, bn)
        kernel = (time.perf_counter() - t) * QUARTER
        # profiler overhead inflates the total a little: shares are of the profiled total
        times["forward: total (inputs included)"].append(total)
        times["forward: convolutions"].append(conv)
        times["forward: exact BN kernel"].append(kernel)
        times["forward: rest"].append(max(0.0, total - conv - kernel - times["inputs (to_input)"][-1]))
        times["PyTorch's own channels-last BN (not exact)"].append(_native_bn_time(model, decoded.per_size[size], size, pre, bn) * QUARTER)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_batch = med["decode 500x375 JPEGs"] + med["forward: total (inputs included)"]
    print(f"resnet50 at {size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    for k, v in med.items():
        print(f"  {k:45s} {v * 1000:8.0f} ms  {100 * v / per_batch:5.1f}% of a batch with photo decoding")
    return 0


def _bn_inputs(model, images, size, pre, bn):
    """Every BN layer's channels-last input of one batch (captured by hooks in one forward)."""
    captured = []
    hooks = [m.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach().clone(memory_format=torch.channels_last)))
             for _, m in bn.bn_layers(model)]
    try:
        x = to_input_cl(images, size, pre, bn)
        with torch.no_grad():
            model.eval()
            model.to(memory_format=torch.channels_last)
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.to(memory_format=torch.contiguous_format)
    return captured


def to_input_cl(images, size, pre, bn):
    from mmdeploy.data import to_input

    return to_input(images, size, pre, bn.augment_generator(0, size, 0)).contiguous(memory_format=torch.channels_last)


_CACHE: dict = {}
QUARTER = 4  # the BN kernels are timed on a quarter of the batch (its activations held at once), times 4: they are linear in it


def _inputs_once(model, images, size, pre, bn):
    if "x" not in _CACHE:
        _CACHE["x"] = _bn_inputs(model, images[: max(2, images.shape[0] // QUARTER)], size, pre, bn)
    return _CACHE["x"]


def _time_bn_kernel(model, images, size, pre, bn) -> None:
    for x in _inputs_once(model, images, size, pre, bn):
        c = x.shape[1]
        bn._batch_norm_channels_last(x, torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c), 1.0, 1e-5)


def _native_bn_time(model, images, size, pre, bn) -> float:
    import torch.nn.functional as F

    xs = _inputs_once(model, images, size, pre, bn)
    t = time.perf_counter()
    for x in xs:
        c = x.shape[1]
        F.batch_norm(x, torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c), True, 1.0, 1e-5)
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
