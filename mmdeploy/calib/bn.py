"""Exact BatchNorm statistics per input size, for many sizes in one pass over decoded images.

As in the reference code's ``--calibrate-bn``, the model runs in train mode (BN normalizes
with batch statistics) under ``no_grad``, with every other layer in eval mode. Unlike
``momentum=None``, which weighs each *batch* equally, every activation weighs the same:
per layer and channel we keep the count, sum and sum of squares in float64, built from each
batch's own mean and unbiased variance. Those we read for free: with ``momentum=1.0`` a
train-mode BN leaves exactly its batch mean and unbiased batch variance in its running
buffers; they stay on the device until the pass ends, then merge in float64. Sums merge by addition, so shards from several processes all-reduce to the same
result as one process, as long as each batch is whole on one rank.

On the CPU, sizes from :data:`CHANNELS_LAST_MIN_SIZE` up run in the channels-last memory format, where oneDNN's
convolutions are about 1.5x faster (ResNet-50 at 160 px, ``benchmarks/bench_scale.py``). PyTorch's own channels-last
BN kernel sums in plain float32 (variance off by ~3e-5 relative on ResNet-50), so there every BN layer's batch
statistics come from :func:`_batch_norm_channels_last` instead: a two-pass mean and centered variance as precise
as the contiguous kernel (~1e-7), and the same normalization.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from mmdeploy.data import Preprocess, to_device, to_input
from mmdeploy.errors import MMDeployError


@dataclass
class BNSums:
    """Per-channel count, sum and sum of squares of one BN layer's input (float64)."""

    count: float
    sum: torch.Tensor
    sumsq: torch.Tensor

    def plus(self, other: BNSums) -> BNSums:
        return BNSums(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.count
        mean = self.sum / n
        var = (self.sumsq - n * mean * mean) / max(n - 1, 1)
        return mean, var.clamp_min(0)


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The BN layers whose running statistics calibration sets."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def plan_batches(n_available: int, batch_size: int, batches: int, seed: int) -> list[list[int]]:
    """Which images make up each calibration batch: a seeded permutation, cut into batches.

    Uses ``min(batches * batch_size, n_available)`` images. A last batch of a single image
    joins the one before it (a train-mode BN cannot take one value per channel).
    """
    gen = torch.Generator().manual_seed(seed)
    n = min(batches * batch_size, n_available)
    order = torch.randperm(n_available, generator=gen)[:n].tolist()
    plan = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(plan) > 1 and len(plan[-1]) == 1:
        last = plan.pop()  # pop first: `plan[-2] += plan.pop()` would index the shortened list
        plan[-1] = plan[-1] + last
    return plan


def augment_generator(seed: int, size: int, batch_index: int) -> torch.Generator:
    """One generator per (seed, size, batch): results do not depend on other sizes or ranks."""
    return torch.Generator().manual_seed((seed * 1_000_003 + size * 10_007 + batch_index) % (2**63))


@torch.no_grad()
def calibrate_bn(
    model: nn.Module,
    images: torch.Tensor | dict[int, torch.Tensor],
    batches: list[tuple[int, torch.Tensor]],
    sizes: list[int],
    preprocess: Preprocess,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress=None,
    convergence=None,
) -> dict[int, dict[str, BNSums]]:
    """Accumulate exact BN input statistics for every size.

    ``images`` is uint8 [N,3,R,R], or per size {S: [N,3,S,S]}; ``batches`` lists (global batch index, positions in
    ``images``); the global index seeds the augmentation. The model's state is left as it
    was. Returns, per size, per BN layer name, the sums (all-reducible). ``progress(n)`` is
    called with the images of each batch at each size. ``convergence``
    (:class:`mmdeploy.calib.convergence.Convergence`) is fed every batch's statistics and may
    stop the pass after a batch (``--batches auto``); it records which batches ran.
    """
    layers = bn_layers(model)
    if not layers:
        warnings.warn("the model has no BatchNorm layers: calibration changes nothing", stacklevel=2)
        return {s: {} for s in sizes}
    saved_training = {m: m.training for m in model.modules()}
    saved = {name: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for name, m in layers}
    # Per size: how many values per channel one image gives each layer (its H x W), measured on
    # the first batch of that size; later batches run without hooks, which cost host time per layer.
    per_image: dict[int, list[int]] = {}
    # Per (size, batch): batch size, and every layer's batch mean and unbiased variance, kept on
    # the device and merged in float64 at the end, so the loop never waits for the device.
    per_batch: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {s: [] for s in sizes}
    formats = _MemoryFormats(model, layers, device)
    try:
        model.eval()
        for _, m in layers:
            m.train()
            m.momentum = 1.0  # running stats := this batch's mean and unbiased variance
        for batch_index, positions in _full_fp32(batches):
            # uint8 to the device: a quarter of the bytes of the float input. Per-size images (decoded
            # straight to each size) are indexed per size.
            batch = None if isinstance(images, dict) else to_device(images[positions], device)
            for size in sizes:
                if batch is None or isinstance(images, dict):
                    batch = to_device(images[size][positions], device)
                gen = augment_generator(seed, size, batch_index) if augment else None
                x = to_input(batch, size, preprocess, gen)
                if size in per_image:
                    formats.forward(size, x)
                else:
                    per_image[size] = formats.first_forward(size, x)
                per_batch[size].append((x.shape[0], torch.cat([m.running_mean for _, m in layers]), torch.cat([m.running_var for _, m in layers])))
                if progress is not None:
                    progress(x.shape[0])
            if convergence is not None:
                convergence.add_batch(batch_index, {s: (per_image[s], *per_batch[s][-1]) for s in sizes})
                if convergence.stopped:
                    break
        return {size: _merge(layers, per_image.get(size, []), per_batch[size]) for size in sizes}
    finally:
        formats.restore()
        for name, m in layers:
            momentum, mean, var, nbt = saved[name]
            m.momentum = momentum
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(nbt)
        for m, was_training in saved_training.items():
            m.train(was_training)


def _full_fp32(items):
    """Iterate ``items`` with TF32 off: CUDA's TF32 convolutions round inputs to 10-bit mantissas,
    which moves BN statistics by ~1e-4 relative; exact calibration needs true fp32 math."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield from items
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


CHANNELS_LAST_MIN_SIZE = 64
"""On the CPU, sizes from here up run channels-last (faster at every size measured, 16 px included). Smaller sizes keep the
contiguous format so that the shipped 16-48 px demo's statistics stay bit-identical to its CI baseline: a memory
format changes float32 rounding in the convolutions (~1e-7), not what the statistics mean."""


class _MemoryFormats:
    """Runs each size's forward pass in its memory format (:data:`CHANNELS_LAST_MIN_SIZE`), switching the model's
    weights between formats when the size needs the other one, and putting them back at the end.

    The first batch of a channels-last size checks that every BN layer's statistics came from
    :func:`_batch_norm_channels_last` (a layer that calls BN some other way would get PyTorch's float32 sums) and that
    the model accepts channels-last tensors at all; if not, every size runs contiguous from then on."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, _BatchNorm]], device):
        self.model, self.layers = model, layers
        self.allowed = torch.device(device).type == "cpu"
        self.current = torch.contiguous_format

    def _use(self, fmt) -> None:
        if fmt is not self.current:
            self.model.to(memory_format=fmt)
            self.current = fmt

    def _format(self, size: int):
        return torch.channels_last if self.allowed and size >= CHANNELS_LAST_MIN_SIZE else torch.contiguous_format

    def forward(self, size: int, x: torch.Tensor) -> None:
        fmt = self._format(size)
        self._use(fmt)
        if fmt is torch.channels_last:
            with _ExactChannelsLastBN():
                self.model(x.contiguous(memory_format=torch.channels_last))
        else:
            self.model(x)

    def first_forward(self, size: int, x: torch.Tensor) -> list[int]:
        """The size's first batch, through :func:`_values_per_image`; falls back to contiguous (see the class)."""
        if self._format(size) is torch.channels_last:
            self._use(torch.channels_last)
            mode = _ExactChannelsLastBN()
            try:
                with mode:
                    counts = _values_per_image(self.model, self.layers, x.contiguous(memory_format=torch.channels_last))
                if all(id(m.running_mean) in mode.normalized for _, m in self.layers):
                    return counts
            except MMDeployError:
                raise
            except RuntimeError:  # e.g. a .view() that needs contiguous activations
                pass
            self.allowed = False
        self._use(torch.contiguous_format)
        return _values_per_image(self.model, self.layers, x)

    def restore(self) -> None:
        self._use(torch.contiguous_format)


_BATCH_NORM_PARAMS = list(inspect.signature(F.batch_norm).parameters)


class _ExactChannelsLastBN(TorchFunctionMode):
    """Routes train-mode ``F.batch_norm`` on channels-last 4-D inputs to :func:`_batch_norm_channels_last`;
    ``normalized`` holds the ids of the running-mean buffers it updated."""

    def __init__(self):
        super().__init__()
        self.normalized: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = {**dict(zip(_BATCH_NORM_PARAMS, args)), **kwargs}
            x = bound["input"]
            if bound.get("training") and x.dim() == 4 and x.is_floating_point() and not x.is_contiguous() \
                    and x.is_contiguous(memory_format=torch.channels_last):
                if bound.get("running_mean") is not None:
                    self.normalized.add(id(bound["running_mean"]))
                return _batch_norm_channels_last(x, bound.get("running_mean"), bound.get("running_var"), bound.get("weight"),
                                                 bound.get("bias"), bound.get("momentum", 0.1), bound.get("eps", 1e-5))
        return func(*args, **kwargs)


def _batch_norm_channels_last(x, running_mean, running_var, weight, bias, momentum, eps) -> torch.Tensor:
    """Train-mode batch norm of a channels-last [N,C,H,W] tensor, seen as the [N*H*W, C] matrix it is in memory.

    Two passes, as the contiguous kernel: the mean from PyTorch's column sum (cascade-summed, ~1e-7), then the
    variance from the centered values, which do not cancel as sum(x^2) - n*mean^2 does. The centered buffer
    becomes the output. Running statistics follow ``F.batch_norm``: unbiased variance, ``momentum`` (None: 0.1
    here, as the caller passes the factor it computed)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: channels-last memory is row-major [N*H*W, C]
    count = rows.shape[0]
    mean = rows.sum(0).div_(count)
    out = torch.sub(rows, mean)
    var = out.square_().sum(0).double().div_(count)  # biased, as the normalization uses it
    if running_mean is not None:
        factor = 0.1 if momentum is None else momentum
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), factor)
    scale = (var + eps).rsqrt_().to(x.dtype)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    torch.addcmul(shift, rows, scale, out=out)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _values_per_image(model: nn.Module, layers: list[tuple[str, _BatchNorm]], x: torch.Tensor) -> list[int]:
    """Run ``model(x)`` and return each BN layer's values per channel per image, checking that
    every layer runs exactly once (a second call would overwrite the first's statistics)."""
    counts: list = [None] * len(layers)

    def counter(index: int, name: str):
        def hook(module, inputs):
            if counts[index] is not None:
                raise MMDeployError(f"BatchNorm layer {name!r} runs more than once per forward pass", "calibration needs each BatchNorm layer used once")
            counts[index] = inputs[0].numel() // inputs[0].shape[1]

        return hook

    hooks = [m.register_forward_pre_hook(counter(i, name)) for i, (name, m) in enumerate(layers)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    for (name, _), count in zip(layers, counts):
        if count is None:
            raise MMDeployError(f"BatchNorm layer {name!r} does not run in the forward pass, so it cannot be calibrated",
                                "remove unused BatchNorm layers from the architecture")
        if count % x.shape[0]:
            raise MMDeployError(f"BatchNorm layer {name!r} sees {count} values per channel for a batch of {x.shape[0]}",
                                "calibration needs BatchNorm inputs with the batch as their first dimension")
    return [count // x.shape[0] for count in counts]


def _merge(layers: list[tuple[str, _BatchNorm]], per_image: list[int], per_batch: list) -> dict[str, BNSums]:
    """Exact per-layer sums from every batch's (batch size, means, unbiased variances), in float64."""
    channels = [m.num_features for _, m in layers]
    if not per_batch:
        return {name: BNSums(0.0, torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)) for (name, _), c in zip(layers, channels)}
    n = torch.tensor([[b * v for v in per_image] for b, _, _ in per_batch], dtype=torch.float64)  # values per channel [batches, layers]
    mean = torch.stack([m for _, m, _ in per_batch]).to("cpu", torch.float64)  # [batches, channels of all layers]
    var = torch.stack([v for _, _, v in per_batch]).to("cpu", torch.float64)
    n_ch = n.repeat_interleave(torch.tensor(channels), dim=1)
    sums = (n_ch * mean).sum(0).split(channels)
    sumsq = ((n_ch - 1) * var + n_ch * mean * mean).sum(0).split(channels)
    totals = n.sum(0).tolist()
    return {name: BNSums(total, s.clone(), q.clone()) for (name, _), total, s, q in zip(layers, totals, sums, sumsq)}


def finalize_bn_state(model: nn.Module, sums: dict[str, BNSums], batches: int) -> dict[str, torch.Tensor]:
    """The model's full state_dict with these BN statistics in place (float32 buffers)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, s in sums.items():
        mean, var = s.mean_var()
        ref = state[f"{name}.running_mean"]
        state[f"{name}.running_mean"] = mean.to(ref.device, ref.dtype)
        state[f"{name}.running_var"] = var.to(ref.device, ref.dtype)
        state[f"{name}.num_batches_tracked"] = torch.tensor(batches, dtype=torch.long, device=ref.device)
    return state
