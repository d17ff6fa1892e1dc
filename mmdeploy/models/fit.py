"""Checks made before any work: does the model fit the data (class count) and the machine (sizes)?

One forward pass of one image at a small size tells both: the logits' width is the class
count, and the largest activation a layer holds (its input and output are alive together) is
a lower bound on the memory a forward pass needs. Convolutional activations grow with the
image area, so that figure scaled to a requested size and batch says, cheaply and without
allocating it, whether the size can run at all.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from mmdeploy.errors import MMDeployError

PROBE_SIZE = 32  # small enough to be instant for any CNN, large enough to pass most stems


def forward_error(model: nn.Module, size: int) -> str:
    """Why the model cannot run one image at ``size`` ("" if it can): user code may accept only some sizes
    (a patch model asserts its input is a multiple of the patch)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001  any failure means "not at this size"
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return ""


@dataclass(frozen=True)
class Probe:
    size: int
    num_classes: int | None  # width of the logits; None if the output is not [N, C]
    peak_bytes: int  # the largest input+output a single layer holds at once, one image at ``size``

    def bytes_at(self, size: int, batch: int) -> int:
        return int(self.peak_bytes * (size / self.size) ** 2 * batch)


def probe_model(model: nn.Module, size: int = PROBE_SIZE) -> Probe:
    """Run one zero image through ``model`` (eval mode, no grad) and record its largest layer."""
    peak = 0

    def hook(module, inputs, output):
        nonlocal peak
        ins = [t for t in inputs if isinstance(t, torch.Tensor)]
        outs = [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)] if isinstance(output, (tuple, list)) else []
        seen, total = set(), 0
        for t in ins + outs:  # an in-place op's output is its input: count the storage once
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
        peak = max(peak, total)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            out = model.eval()(x)
    except Exception:  # a size the network cannot take: nothing to estimate from
        return Probe(size, None, 0)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    classes = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    return Probe(size, classes, peak)


def available_memory(device: str | torch.device | None = "cpu") -> int | None:
    """Bytes free for tensors on ``device`` (CPU: MemAvailable, capped by a cgroup limit)."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            free = min(free or 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return free


def check_model_fits(model: nn.Module, sizes: list[int], batch: int, device: str | None = "cpu", data_classes: int | None = None,
                     data_root: Path | str | None = None, min_size: int = 1, held_per_image: int = 0) -> None:
    """Refuse, before any work, data with more classes than the model has logits, and sizes
    whose activations at ``batch`` images would not fit in the memory ``device`` has free.
    ``held_per_image``: bytes per image of ``batch`` the caller holds besides one forward pass (bench: every point's input)."""
    for side in (max(PROBE_SIZE, min_size), 64, 128, 224):  # the first side the network takes
        probe = probe_model(model, side)
        if probe.peak_bytes:
            break
    if data_classes is not None and probe.num_classes is not None and data_classes > probe.num_classes:
        raise MMDeployError(f"{data_root or 'the data'} has {data_classes} class folders but the model has {probe.num_classes} outputs",
                            f"pass the data this model was trained on (at most {probe.num_classes} classes), or the checkpoint that matches this data")
    free = available_memory(device)
    if not probe.peak_bytes or not free or not sizes:
        return
    held_bytes = held_per_image * batch
    for size in sorted(sizes):
        need = probe.bytes_at(size, batch)
        if need + held_bytes > free:
            fits = int(probe.size * math.sqrt(max(0, free - held_bytes) / (probe.peak_bytes * batch)))
            largest_batch = free // max(1, probe.bytes_at(size, 1) + held_per_image)
            held = f" besides {gib(held_bytes)} of input batches" if held_bytes else ""
            raise MMDeployError(f"size {size} needs at least {gib(need)} of activation memory at batch {batch} (estimated from a {probe.size} px probe){held}, "
                                f"more than the {gib(free)} free on {device or 'cpu'}",
                                _shrink_hint(fits, largest_batch, size))


def _shrink_hint(fits: int, largest_batch: int, size: int) -> str:
    options = ([f"sizes up to about {fits} here"] if fits else []) + ([f"a batch of at most about {largest_batch:,} at size {size}"] if largest_batch else [])
    return "use " + ", or ".join(options) if options else "use a machine with more memory"


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
