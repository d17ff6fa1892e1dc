"""``mmdeploy train``'s options in the groups that travel together, and their checks before any work: device, lengths,
sizes, the model's kwargs, memory and the output path.

A run is ``train_model(data, out, TrainOptions(...))``; each group is read by the step it configures: the size regime by
:func:`~mmdeploy.train.regime.make_regime`, the optimizer settings by the optimizer, the schedule and the checkpoint's record,
the stopping rules by the loop, the run settings by device, precision and decoding choices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmdeploy.errors import MMDeployError
from mmdeploy.train.regime import Regime, make_regime

SCHEDULES = ("cosine", "step")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")


@dataclass(frozen=True)
class RegimeOptions:
    """The size regime as asked for (``--regime``, ``--sizes``, ``--size``, ``--base-size``, ``--batch-size``)."""

    kind: str = "D+"  # D+ (duplicates), B+ (batch scaling) or fixed
    sizes: str | dict | None = None  # mixed regimes: SIZE:PROB pairs (default: the dataset's reference distribution)
    size: int | None = None  # fixed: the one size (default: the base size)
    base_size: int | None = None  # the size the batch rules scale from (default 32 CIFAR, 224 ImageNet)
    batch_size: int = 64  # unique images per step at the base size

    def make(self, dataset: str) -> Regime:
        return make_regime(self.kind, self.sizes, self.size, dataset, self.base_size, self.batch_size)


@dataclass(frozen=True)
class OptimOptions:
    """SGD and its learning-rate schedule (``--lr``, ``--weight-decay``, ``--schedule``, ``--warmup-steps``, ``--grad-smoothing``)."""

    lr: float = 0.1  # the peak learning rate
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on conv/linear weights only
    schedule: str = "cosine"  # or "step": lr / 10 at 50% and 75% of the steps
    warmup_steps: int = 0
    grad_smoothing: bool | None = None  # None: on for the mixed regimes, off for fixed (as the reference code does)

    def smoothing(self, regime: Regime) -> bool:
        return regime.kind != "fixed" if self.grad_smoothing is None else self.grad_smoothing

    def record(self, regime: Regime) -> dict:
        """The settings as the checkpoint records them."""
        return {"name": "SGD", "lr": self.lr, "momentum": self.momentum, "nesterov": False, "weight_decay": self.weight_decay,
                "weight_decay_on": "conv/linear weights (not BN, not biases)", "schedule": self.schedule,
                "warmup_steps": self.warmup_steps, "grad_smoothing": self.smoothing(regime)}


@dataclass(frozen=True)
class StopOptions:
    """When training stops: ``steps`` (wins) or ``epochs``, and a wall-clock limit that saves and stops early."""

    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = None


@dataclass(frozen=True)
class RunOptions:
    """Where and how the run computes: device, precision (auto, fp32, bf16), the seed of everything random, decoding threads."""

    device: str = "cpu"
    precision: str = "auto"
    seed: int = 0
    workers: int | None = None


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``mmdeploy train`` takes besides the data folder and the output checkpoint."""

    arch: str = "cifar_resnet20"
    arch_kwargs: dict | None = None  # keyword arguments of the arch's factory, from the user only (never from a file)
    regime: RegimeOptions = field(default_factory=RegimeOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    stop: StopOptions = field(default_factory=StopOptions)
    run: RunOptions = field(default_factory=RunOptions)
    val: str | Path | None = None  # a validation ImageFolder: top-1 after each epoch
    resume: str | Path | None = None  # a checkpoint of mmdeploy train to continue
    overwrite: bool = False  # replace an existing output checkpoint
    command: str = ""  # the command line, recorded in the checkpoint


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MMDeployError(f"unknown device {name!r}", "use --device cpu or --device cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMDeployError("--device cuda but no CUDA GPU is visible to torch", "use --device cpu, or install a CUDA build of torch")
    if device.type not in ("cpu", "cuda"):
        raise MMDeployError(f"device {name!r} is not supported for training", "use --device cpu or --device cuda")
    return device


def check_options(options: TrainOptions, regime: Regime, info) -> int:
    """Validate before any work; returns the epoch count (0 when --steps decides)."""
    epochs, steps, max_minutes = options.stop.epochs, options.stop.steps, options.stop.max_minutes
    lr, schedule, warmup_steps, seed = options.optim.lr, options.optim.schedule, options.optim.warmup_steps, options.run.seed
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


def check_fits(n: int, store: int, device: torch.device) -> None:
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


def check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
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


def model_kwargs(arch_kwargs: dict | None, num_classes: int) -> dict:
    """The factory's keyword arguments for this run: the user's (plain data), and the number of class folders, which the
    checkpoint records whole so that later commands rebuild the same call."""
    from mmdeploy.models.trust import check_user_kwargs

    kwargs = dict(arch_kwargs or {})
    check_user_kwargs(kwargs)
    given = kwargs.pop("num_classes", num_classes)
    if isinstance(given, bool) or given != num_classes:
        raise MMDeployError(f"--arch-kwargs has num_classes {given!r}, but --data has {num_classes} class folders",
                            "leave num_classes out: training sets it to the number of class folders")
    return {"num_classes": num_classes, **kwargs}
