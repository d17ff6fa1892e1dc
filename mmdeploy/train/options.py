"""Checks of ``mmdeploy train``'s options before any work: device, precision, lengths, sizes, memory and the output path."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmdeploy.errors import MMDeployError
from mmdeploy.train.regime import Regime

SCHEDULES = ("cosine", "step")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MMDeployError(f"unknown device {name!r}", "use --device cpu or --device cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMDeployError("--device cuda but no CUDA GPU is visible to torch", "use --device cpu, or install a CUDA build of torch")
    if device.type not in ("cpu", "cuda"):
        raise MMDeployError(f"device {name!r} is not supported for training", "use --device cpu or --device cuda")
    return device


def _check_options(regime: Regime, info, epochs, steps, lr, schedule, warmup_steps, max_minutes, seed) -> int:
    """Validate before any work; returns the epoch count (0 when --steps decides)."""
    if steps is None and epochs is None:
        raise MMDeployError("say how long to train", "pass --epochs E or --steps N (e.g. --epochs 200 for CIFAR)")
    if steps is not None and steps <= 0:
        raise MMDeployError(f"--steps {steps} is not a positive number", "e.g. --steps 1000")
    if steps is None and epochs is not None and epochs <= 0:
        raise MMDeployError(f"--epochs {epochs} is not a positive number", "e.g. --epochs 200")
    if not lr > 0:
        raise MMDeployError(f"--lr {lr} is not positive", "the reference uses --lr 0.1")
    if schedule not in SCHEDULES:
        raise MMDeployError(f"unknown schedule {schedule!r}", "use --schedule cosine or --schedule step")
    if warmup_steps < 0:
        raise MMDeployError(f"--warmup-steps {warmup_steps} is negative", "use 0 for no warm-up")
    if max_minutes is not None and max_minutes <= 0:
        raise MMDeployError(f"--max-minutes {max_minutes} is not positive", "leave it out for no time limit")
    if seed < 0:
        raise MMDeployError(f"--seed {seed} is negative", "use a seed >= 0")
    too_small = [s.size for s in regime.sizes if s.size < info.min_size]
    if too_small:
        raise MMDeployError(f"size {too_small[0]} is too small for {info.name}: the smallest size that works is {info.min_size}",
                            f"use sizes of {info.min_size} px or more")
    return 0 if steps else int(epochs)


def _check_fits(n: int, store: int, device: torch.device) -> None:
    """The whole training set is held decoded (uint8) in memory and on the device: fail before decoding if it cannot be."""
    need = n * 3 * store * store
    hint = "train on a smaller folder (this trainer keeps the decoded set in memory; it is made for CIFAR-scale data)"
    try:
        ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    if ram is not None and 2 * need > ram:  # decoding stacks a copy
        raise MMDeployError(f"{n} images at {store}x{store} need {2 * need / 2**30:.1f} GiB to decode; {ram / 2**30:.1f} GiB of memory is free", hint)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > 0.5 * free:
            raise MMDeployError(f"{n} images at {store}x{store} need {need / 2**30:.1f} GiB on {device}; {free / 2**30:.1f} GiB is free", hint)


def _check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
    if out.suffix not in CHECKPOINT_SUFFIXES:
        raise MMDeployError(f"--out {out} should end in .pth", "e.g. --out models/cifar_resnet20_mixsize_dplus.pth (a .safetensors copy is written beside it)")
    if out.is_dir():
        raise MMDeployError(f"--out {out} is a folder", "pass a file path such as models/NAME.pth")
    continuing = resume is not None and out.exists() and os.path.samefile(out, resume)
    if out.exists() and not (continuing or overwrite):
        raise MMDeployError(f"--out {out} already exists", f"pass --resume {out} to continue it, --overwrite to replace it, or another --out")
    parent = out.parent if out.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MMDeployError(f"--out {out} is not writable (no write permission on {probe})", "choose a folder you can write to")
