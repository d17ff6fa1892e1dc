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

This module is the loop; its pieces live beside it: :mod:`~mmdeploy.train.optim` (gradient smoothing,
weight-decay groups, learning rate), :mod:`~mmdeploy.train.batches` (batches and validation),
:mod:`~mmdeploy.train.checkpoint_io` (writing and resuming checkpoints), :mod:`~mmdeploy.train.options`
(option checks before any work).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mmdeploy.data import Preprocess, decode_images, scan_image_folder, store_resolution
from mmdeploy.errors import MMDeployError
from mmdeploy.models import arch_info, create_model
from mmdeploy.progress import Progress
from mmdeploy.train.batches import _decode_val, _val_accuracy, make_batch
from mmdeploy.train.checkpoint_io import _cpu_state, _cpu_tree, _read_resume, reference_model_config, save_training_checkpoint
from mmdeploy.train.monitor import EpochRecord, TrainMonitor
from mmdeploy.train.optim import GradSmoother, lr_at, param_groups
from mmdeploy.train.options import _check_fits, _check_options, _check_out, _device
from mmdeploy.train.precision import cache_key, check_precision, choose_precision, step_timer
from mmdeploy.train.regime import Regime, make_regime
from mmdeploy.train.sampler import Step, derived_seed, epoch_steps, steps_per_epoch

_REPORT_EVERY = 10  # steps between progress updates (each one waits for the device)


# -- results -------------------------------------------------------------------------------


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
    check_precision(precision)

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

    memory_format = torch.channels_last  # faster for these convnets on CUDA and on the CPUs measured (train/precision.py)
    model.to(dev, memory_format=memory_format).train()
    if state is not None:
        optimizer.load_state_dict(state["optim_state_dict"])  # after .to(): state follows the params' device
        if smoother is not None and ts.get("grad_smoothing"):
            smoother.load_state_dict(ts["grad_smoothing"], dev)
    images = train_set.images.to(dev)
    labels = train_set.labels.to(dev)
    choice = _choose_precision(precision, dev, state, model, images, labels, n, plan_regime, pre, seed, arch, batch_size, memory_format)
    prec = choice.precision
    monitor.note(choice.reason)
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
            "precision_choice": choice.to_dict(),
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


_PROBE_STEPS = 2  # steps of the first epoch's plan timed per precision and round by --precision auto


def _choose_precision(precision, dev, state, model, images, labels, n, plan_regime, pre, seed, arch, batch_size, memory_format):
    """--precision auto on a native-bf16 CPU times the run's own first steps in fp32 and bf16 (see train/precision.py)."""
    from mmdeploy.latency.machine import cpu_name

    gen = torch.Generator()
    steps = epoch_steps(n, plan_regime, seed, 0)[:_PROBE_STEPS]

    def run_step(m, optimizer, st, autocast):
        _train_step(m, optimizer, None, images, labels, st, pre, gen, seed, memory_format, autocast)

    key = cache_key(cpu_name(), f"{torch.get_num_threads()} threads", f"torch {torch.__version__}", arch, plan_regime.describe(),
                    f"batch {batch_size}")
    return choose_precision(precision, dev, resumed=state["mmdeploy"] if state is not None else None, cache_key=key,
                            time_steps=step_timer(model, run_step, steps, dev))


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

