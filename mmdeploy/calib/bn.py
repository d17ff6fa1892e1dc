"""Exact BatchNorm statistics per input size, for many sizes in one pass over decoded images.

As in the reference code's ``--calibrate-bn``, the model runs in train mode (BN normalizes
with batch statistics) under ``no_grad``, with every other layer in eval mode. Unlike
``momentum=None``, which weighs each *batch* equally, every activation weighs the same:
per layer and channel we keep the count, sum and sum of squares in float64, built from each
batch's own mean and unbiased variance. Those we read for free: with ``momentum=1.0`` a
train-mode BN leaves exactly its batch mean and unbiased batch variance in its running
buffers; they stay on the device until the pass ends, then merge in float64. Sums merge by addition, so shards from several processes all-reduce to the same
result as one process, as long as each batch is whole on one rank.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

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
) -> dict[int, dict[str, BNSums]]:
    """Accumulate exact BN input statistics for every size.

    ``images`` is uint8 [N,3,R,R], or per size {S: [N,3,S,S]}; ``batches`` lists (global batch index, positions in
    ``images``); the global index seeds the augmentation. The model's state is left as it
    was. Returns, per size, per BN layer name, the sums (all-reducible).
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
                    model(x)
                else:
                    per_image[size] = _values_per_image(model, layers, x)
                per_batch[size].append((x.shape[0], torch.cat([m.running_mean for _, m in layers]), torch.cat([m.running_var for _, m in layers])))
                if progress is not None:
                    progress(1)
        return {size: _merge(layers, per_image.get(size, []), per_batch[size]) for size in sizes}
    finally:
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
