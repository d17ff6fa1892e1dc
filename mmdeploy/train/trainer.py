"""Training with a MixSize regime: the whole train folder decoded once, batches made on the device.

Per step (Hoffer et al. 2019, arXiv 1908.08986, and its convNet.pytorch code): gather the step's images from the decoded
uint8 tensor, resize them to the step's size, repeat each D times, augment every copy
independently (random crop with S/8 padding + flip), SGD with momentum 0.9 and weight
decay on conv/linear weights only, gradients rescaled by a running gradient norm
("gradient smoothing"). The checkpoint is the reference code's dict (convNet.pytorch) plus
an ``mmdeploy`` section, so every mmdeploy command and the reference code can read it.

Everything random is derived from (seed, purpose, counter): the epoch plan from the epoch,
the augmentation from the global step. A resumed run therefore replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeploy.bundle import atomic_write_bytes, save_safetensors
from mmdeploy.data import DecodedImages, Preprocess, augment_crop_flip, decode_images, normalize, scan_image_folder, store_resolution
from mmdeploy.errors import MMDeployError
from mmdeploy.models import arch_info, create_model
from mmdeploy.progress import Progress
from mmdeploy.train.regime import Regime, make_regime
from mmdeploy.train.sampler import Step, derived_seed, epoch_steps, steps_per_epoch

SCHEDULES = ("cosine", "step")
PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")
_REPORT_EVERY = 10  # steps between progress updates (each one waits for the device)


# -- results -------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """What one epoch (or the part of one that ran) did."""

    epoch: int
    steps: int
    loss: float
    train_acc: float  # % of training samples (all duplicates) classified right, augmented
    images_per_s: float  # network inputs (duplicates included) per second of training
    lr: float
    val_acc: float | None = None


@dataclass
class TrainSummary:
    checkpoint: Path
    safetensors: Path
    arch: str
    regime: dict
    device: str
    precision: str
    steps: int  # optimizer steps done in total (resumed runs included)
    epochs: float  # epochs done in total, fractional where the last one stopped part-way
    images: int  # network inputs of this run (duplicates included)
    images_per_s: float
    wall_s: float  # this run, decoding and checkpoint writing included
    loss: float
    train_acc: float
    val_acc: float | None
    best_prec1: float
    stopped_early: str | None  # "max-minutes", "interrupted", or None
    history: list[EpochRecord] = field(default_factory=list)


class TrainMonitor:
    """Where training reports progress. The default is silent; the CLI shows a bar or lines."""

    def begin(self, total_steps: int, done_steps: int, description: str) -> None: ...

    def update(self, step: int, loss: float, acc: float, lr: float, size: int) -> None: ...

    def end_epoch(self, record: EpochRecord) -> None: ...

    def finish(self) -> None: ...


# -- the pieces, each testable on its own ---------------------------------------------------


class GradSmoother:
    """Rescale gradients by a running average of their global norm (the reference's ``GradSmooth``).

    r <- m * r + (1 - m) * |g|  (r = |g| on the first step), then g <- g * r / (|g| + eps).
    Steps at small sizes (or small batches) have noisier, larger gradients than others; the
    running norm keeps the update size steady across the mix. State stays on the device.
    """

    def __init__(self, momentum: float = 0.9, eps: float = 1e-6):
        self.momentum = momentum
        self.eps = eps
        self.running: torch.Tensor | None = None

    def __call__(self, params) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if self.running is None:
            self.running = norm.detach().clone()
        else:
            self.running.mul_(self.momentum).add_(norm, alpha=1 - self.momentum)
        torch._foreach_mul_(grads, self.running / (norm + self.eps))
        return norm

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "running_norm": None if self.running is None else float(self.running)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.momentum = float(state.get("momentum", self.momentum))
        value = state.get("running_norm")
        self.running = None if value is None else torch.tensor(float(value), device=device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BatchNorm parameters, not on biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = isinstance(module, nn.modules.batchnorm._NormBase) or name == "bias"
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, base: float, schedule: str = "cosine", warmup: int = 0) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up, then cosine to 0 or /10 at 50% and 75%."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
    return base * (0.1 ** ((step >= total // 2) + (step >= (3 * total) // 4)))


def make_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor,
    size: int,
    duplicates: int,
    pre: Preprocess,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 store -> a normalized training batch of len(rows) x duplicates inputs at ``size``.

    The resize is deterministic, so it is done once per image before the copies are made; each
    copy then gets its own crop and flip.
    """
    rows = rows.to(images.device)
    x = images.index_select(0, rows).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = labels.index_select(0, rows)
    if duplicates > 1:
        x, y = x.repeat_interleave(duplicates, 0), y.repeat_interleave(duplicates, 0)
    if gen is not None:
        x = augment_crop_flip(x, gen)
    return normalize(x, pre), y


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    Measured on a 2-core AVX512-BF16 EPYC, cifar_resnet20 train steps: channels_last + bf16
    autocast ~1.5x channels_last fp32, which is ~1.35x NCHW fp32 (threads = cores is fastest).
    """
    if precision not in PRECISIONS:
        raise MMDeployError(f"unknown precision {precision!r}", "use --precision auto, fp32 or bf16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


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


# -- checkpoints -----------------------------------------------------------------------------


def reference_model_config(arch: str, num_classes: int, regime: Regime) -> tuple[str, dict]:
    """The reference code's ``model`` name and ``--model-config`` dict for ``arch``."""
    m = re.fullmatch(r"cifar_resnet(\d+)", arch)
    if m:
        dataset = "cifar100" if num_classes == 100 else "cifar10"  # the reference code's dataset names for CIFAR ResNets
        return "resnet", {"depth": int(m.group(1)), "dataset": dataset, "regime": regime.reference_name}
    m = re.fullmatch(r"resnet(\d+)", arch)
    if m:
        return "resnet", {"depth": int(m.group(1)), "dataset": "imagenet", "regime": regime.reference_name}
    return arch, {"regime": regime.reference_name}


def _cpu_state(state: dict) -> dict:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in state.items()}


def _cpu_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", memory_format=torch.contiguous_format).clone()
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_cpu_tree(v) for v in obj]
    return obj


def save_training_checkpoint(path: Path, ckpt: dict) -> Path:
    """Write the reference dict (torch.save, readable with weights_only=True) and a safetensors
    copy of the weights beside it, each atomically. Returns the safetensors path."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())
    weights = path.with_suffix(".safetensors")
    meta = {
        "arch": ckpt["mmdeploy"]["arch"],
        "config": json.dumps(_literal(ckpt["config"])),
        "mmdeploy": json.dumps(ckpt["mmdeploy"]),
    }
    save_safetensors(weights, ckpt["state_dict"], meta)
    return weights


def _literal(text: str) -> dict:
    import ast

    return ast.literal_eval(text)


def _read_resume(path: Path, arch: str) -> dict:
    if not path.is_file():
        raise MMDeployError(f"--resume {path} does not exist", "pass a checkpoint written by mmdeploy train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read means "not a resumable checkpoint"
        raise MMDeployError(f"--resume {path} is not a readable checkpoint ({str(exc).splitlines()[0][:120]})",
                            "pass the .pth written by mmdeploy train (not the .safetensors)") from None
    if not isinstance(ckpt, dict) or "train_state" not in ckpt or "mmdeploy" not in ckpt:
        raise MMDeployError(f"--resume {path} was not written by mmdeploy train (no training state)", "start a new run without --resume")
    if ckpt["mmdeploy"].get("arch") != arch:
        raise MMDeployError(f"--resume {path} holds {ckpt['mmdeploy'].get('arch')}, not --arch {arch}",
                            f"pass --arch {ckpt['mmdeploy'].get('arch')}")
    return ckpt


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable state of a run: what a checkpoint must hold to continue it."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (or the next one when epoch_step == 0)
    epoch_step: int = 0  # steps of ``epoch`` already done
    best_prec1: float = 0.0
    samples: int = 0  # network inputs trained on, all segments of the run
    train_s: float = 0.0  # seconds in training steps (no decoding, validation or saving), all segments
    history: list = field(default_factory=list)  # commands of earlier segments of this run


def train_model(
    data: str | Path,
    out: str | Path | None = None,
    arch: str = "cifar_resnet20",
    regime: str = "D+",
    sizes: str | dict | None = None,
    size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    base_size: int | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    grad_smoothing: bool | None = None,
    device: str = "cpu",
    precision: str = "auto",
    seed: int = 0,
    resume: str | Path | None = None,
    overwrite: bool = False,
    max_minutes: float | None = None,
    workers: int | None = None,
    val: str | Path | None = None,
    command: str = "",
    progress: Progress | None = None,
    monitor: TrainMonitor | None = None,
) -> TrainSummary:
    """Train ``arch`` on the ImageFolder ``data`` with a MixSize (or fixed-size) regime and write a checkpoint.

    ``steps`` wins over ``epochs``; ``grad_smoothing`` defaults to on for the mixed regimes and
    off for ``fixed``, as in the reference code.
    """
    started = time.monotonic()
    progress = progress or Progress()
    monitor = monitor or TrainMonitor()
    dev = _device(device)
    info = arch_info(arch)
    plan_regime = make_regime(regime, sizes, size, info.dataset, base_size, batch_size)
    epochs_wanted = _check_options(plan_regime, info, epochs, steps, lr, schedule, warmup_steps, max_minutes, seed)
    out = Path(out) if out else Path("models") / f"{arch}_{plan_regime.slug}.pth"
    resume = Path(resume) if resume else None
    _check_out(out, resume, overwrite)
    state = _read_resume(resume, arch) if resume is not None else None  # before decoding: a bad path fails fast
    smoothing = plan_regime.kind != "fixed" if grad_smoothing is None else grad_smoothing
    prec = resolve_precision(precision, dev)

    folder = scan_image_folder(data)
    pre = Preprocess(info.dataset)
    store = store_resolution(folder, pre.kind, [s.size for s in plan_regime.sizes])
    _check_fits(len(folder), store, dev)
    with progress.task(f"decoding {len(folder)} training images", len(folder)) as advance:
        train_set = decode_images(folder, None, pre.kind, store, workers, progress=advance)
    val_set = _decode_val(val, folder.classes, pre, plan_regime, workers, progress)
    n = len(train_set)
    per_epoch = steps_per_epoch(n, plan_regime)
    total_steps = steps if steps else epochs_wanted * per_epoch

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(folder.classes))
    optimizer = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=False)
    smoother = GradSmoother() if smoothing else None
    run = _Run()
    if state is not None:
        model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        run = _Run(int(ts["step"]), int(ts["epoch"]), int(ts["epoch_step"]), float(state.get("best_prec1", 0.0)),
                   int(ts.get("samples", 0)), float(ts.get("train_s", 0.0)), [*ts.get("history", []), state["mmdeploy"].get("command", "")])
        if Regime.from_dict(state["mmdeploy"]["regime"]) != plan_regime:
            warnings.warn(f"--resume {resume} was trained with regime {Regime.from_dict(state['mmdeploy']['regime']).describe()}; "
                          f"continuing with {plan_regime.describe()}", stacklevel=2)
        if ts.get("rng") is not None:
            torch.set_rng_state(ts["rng"])

    memory_format = torch.channels_last  # faster for these convnets on CUDA and on the CPUs measured (resolve_precision)
    model.to(dev, memory_format=memory_format).train()
    if state is not None:
        optimizer.load_state_dict(state["optim_state_dict"])  # after .to(): state follows the params' device
        if smoother is not None and ts.get("grad_smoothing"):
            smoother.load_state_dict(ts["grad_smoothing"], dev)
    images = train_set.images.to(dev)
    labels = train_set.labels.to(dev)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if prec == "bf16" else nullcontext
    aug_gen = torch.Generator()

    def checkpoint(stopped: str | None) -> Path:
        mm = {
            "arch": arch,
            "arch_kwargs": {"num_classes": len(folder.classes)},
            "classes": list(folder.classes),
            "preprocess": pre.to_dict(),
            "training_size": plan_regime.base_size if plan_regime.kind != "fixed" else plan_regime.sizes[0].size,
            "regime": plan_regime.to_dict(),
            "steps": run.step,
            "total_steps": total_steps,
            "epochs": round(run.epoch + run.epoch_step / per_epoch, 4),
            "optimizer": {"name": "SGD", "lr": lr, "momentum": momentum, "nesterov": False, "weight_decay": weight_decay,
                          "weight_decay_on": "conv/linear weights (not BN, not biases)", "schedule": schedule, "warmup_steps": warmup_steps,
                          "grad_smoothing": smoothing},
            "seed": seed,
            "device": str(dev),
            "precision": prec,
            "channels_last": True,
            "threads": torch.get_num_threads(),
            "train_images": n,
            "images_per_s": round(run.samples / max(run.train_s, 1e-9), 2),
            "wall_s": round(run.train_s, 2),
            "stopped_early": stopped or "",
            "command": command,
        }
        model_name, config = reference_model_config(arch, len(folder.classes), plan_regime)
        ckpt = {
            "model": model_name,
            "config": repr(config),
            "state_dict": _cpu_state(model.state_dict()),
            "epoch": run.epoch,
            "best_prec1": float(run.best_prec1),
            "optim_state_dict": _cpu_tree(optimizer.state_dict()),
            "mmdeploy": mm,
            "train_state": {
                "step": run.step,
                "epoch": run.epoch,
                "epoch_step": run.epoch_step,
                "grad_smoothing": smoother.state_dict() if smoother is not None else None,
                "rng": torch.get_rng_state(),
                "samples": run.samples,
                "train_s": run.train_s,
                "history": list(run.history),
            },
        }
        return save_training_checkpoint(out, ckpt)

    # The training loop. Losses and hits stay on the device; they are read every few steps.
    records: list[EpochRecord] = []
    samples_run, seconds_run = 0, 0.0  # this segment only (the summary's throughput)
    stopped: str | None = None
    deadline = started + max_minutes * 60 if max_minutes else None
    last_lr = lr
    monitor.begin(total_steps, run.step, f"{arch} {plan_regime.kind}")
    weights = None
    try:
        while run.step < total_steps and stopped is None:
            plan = epoch_steps(n, plan_regime, seed, run.epoch)
            loss_sum = torch.zeros((), device=dev)
            hits = torch.zeros((), device=dev, dtype=torch.long)
            epoch_samples, epoch_steps_done, seg_start = 0, 0, time.monotonic()
            window_loss, window_hits, window_samples = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long), 0
            for st in plan[run.epoch_step:]:
                if run.step >= total_steps:
                    break
                last_lr = lr_at(run.step, total_steps, lr, schedule, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = last_lr
                loss, correct = _train_step(model, optimizer, smoother, images, labels, st, pre, aug_gen,
                                            derived_seed(seed, "augment", run.step), memory_format, autocast)
                loss_sum += loss * st.samples
                hits += correct
                window_loss += loss * st.samples
                window_hits += correct
                window_samples += st.samples
                epoch_samples += st.samples
                epoch_steps_done += 1
                run.step += 1
                run.epoch_step += 1
                if run.step % _REPORT_EVERY == 0 or run.step == total_steps:
                    wl = window_loss.item() / window_samples
                    if not math.isfinite(wl):
                        raise MMDeployError(f"the training loss became {wl} by step {run.step}", "lower --lr, or add --warmup-steps")
                    monitor.update(run.step, wl, 100.0 * window_hits.item() / window_samples, last_lr, st.size)
                    window_loss.zero_()
                    window_hits.zero_()
                    window_samples = 0
                if deadline is not None and time.monotonic() > deadline:
                    stopped = "max-minutes"
                    break
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.monotonic() - seg_start
            seconds_run += seconds
            samples_run += epoch_samples
            run.train_s += seconds
            run.samples += epoch_samples
            epoch_done = run.epoch_step >= len(plan)
            record = EpochRecord(run.epoch, epoch_steps_done, loss_sum.item() / max(1, epoch_samples),
                                 100.0 * hits.item() / max(1, epoch_samples), epoch_samples / max(seconds, 1e-9), last_lr)
            if epoch_done:
                run.epoch += 1
                run.epoch_step = 0
            if epoch_steps_done:
                if val_set is not None and (epoch_done or run.step >= total_steps or stopped):
                    record.val_acc = _val_accuracy(model, val_set, plan_regime, pre, memory_format, autocast)
                    run.best_prec1 = max(run.best_prec1, record.val_acc)
                records.append(record)
                monitor.end_epoch(record)
                weights = checkpoint(stopped)
    except KeyboardInterrupt:
        # Keep what was learned: the step counters are consistent (they advance after each whole step).
        stopped = "interrupted"
        checkpoint(stopped)
        monitor.finish()
        raise
    monitor.finish()
    if weights is None:  # nothing ran (already at --steps): still write the checkpoint where asked
        weights = checkpoint(stopped)
    last = records[-1] if records else None
    return TrainSummary(
        checkpoint=out, safetensors=weights, arch=arch, regime=plan_regime.to_dict(), device=str(dev), precision=prec,
        steps=run.step, epochs=round(run.epoch + run.epoch_step / per_epoch, 4), images=samples_run,
        images_per_s=samples_run / max(seconds_run, 1e-9), wall_s=time.monotonic() - started,
        loss=last.loss if last else float("nan"), train_acc=last.train_acc if last else float("nan"),
        val_acc=last.val_acc if last else None, best_prec1=run.best_prec1, stopped_early=stopped, history=records,
    )


def _train_step(model, optimizer, smoother, images, labels, st: Step, pre, gen, aug_seed, memory_format, autocast):
    gen.manual_seed(aug_seed)
    x, y = make_batch(images, labels, st.indices, st.size, st.duplicates, pre, gen)
    x = x.contiguous(memory_format=memory_format)
    with autocast():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if smoother is not None:
        smoother(model.parameters())
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


@torch.no_grad()
def _val_accuracy(model, val_set: DecodedImages, regime: Regime, pre, memory_format, autocast, batch: int = 256) -> float:
    """Top-1 (%) at the regime's evaluation size (base size; the fixed size for ``fixed``), eval mode."""
    size = regime.sizes[0].size if regime.kind == "fixed" else regime.base_size
    model.eval()
    hits = torch.zeros((), dtype=torch.long, device=val_set.images.device)
    try:
        for start in range(0, len(val_set), batch):
            rows = torch.arange(start, min(start + batch, len(val_set)))
            x, y = make_batch(val_set.images, val_set.labels, rows, size, 1, pre, None)
            with autocast():
                hits += (model(x.contiguous(memory_format=memory_format)).argmax(1) == y).sum()
    finally:
        model.train()
    return 100.0 * hits.item() / len(val_set)


def _decode_val(val, classes, pre, regime, workers, progress) -> DecodedImages | None:
    if val is None:
        return None
    folder = scan_image_folder(val)
    if folder.classes != classes:
        raise MMDeployError(f"--val {val} has classes {folder.classes[:5]}..., not the training classes {classes[:5]}...",
                            "the validation folder needs the same class subfolders as --data")
    size = regime.sizes[0].size if regime.kind == "fixed" else regime.base_size
    with progress.task(f"decoding {len(folder)} validation images", len(folder)) as advance:
        return decode_images(folder, None, pre.kind, store_resolution(folder, pre.kind, [size]), workers, progress=advance)


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
