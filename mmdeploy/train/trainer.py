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
weight-decay groups, learning rate, one step), :mod:`~mmdeploy.train.batches` (batches and validation),
:mod:`~mmdeploy.train.checkpoint_io` (writing and resuming checkpoints), :mod:`~mmdeploy.train.options`
(the options in groups, and their checks before any work).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmdeploy.data import Preprocess, decode_images, scan_image_folder, store_resolution
from mmdeploy.errors import MMDeployError
from mmdeploy.models import arch_info, create_model
from mmdeploy.progress import Progress
from mmdeploy.train.batches import decode_val, make_batch, val_accuracy
from mmdeploy.train.checkpoint_io import cpu_state, cpu_tree, read_resume, reference_model_config, save_training_checkpoint
from mmdeploy.train.monitor import EpochRecord, TrainMonitor
from mmdeploy.train.optim import GradSmoother, lr_at, param_groups, train_step
from mmdeploy.train.options import TrainOptions, check_device, check_fits, check_options, check_out, model_kwargs
from mmdeploy.train.precision import cache_key, check_precision, choose_precision, step_timer
from mmdeploy.train.regime import Regime
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


def train_model(data: str | Path, out: str | Path | None = None, options: TrainOptions | None = None,
                progress: Progress | None = None, monitor: TrainMonitor | None = None) -> TrainSummary:
    """Train ``options.arch`` on the ImageFolder ``data`` with a MixSize (or fixed-size) regime and write a checkpoint.

    ``out`` defaults to ``models/<arch>_<regime>.pth``; ``options`` (:class:`~mmdeploy.train.options.TrainOptions`) holds
    the rest in groups (regime, optimizer, when to stop, device and precision). ``stop.steps`` wins over ``stop.epochs``;
    ``optim.grad_smoothing`` defaults to on for the mixed regimes and off for ``fixed``, as in the reference code.
    """
    started = time.monotonic()
    progress = progress or Progress()
    monitor = monitor or TrainMonitor()
    trainer = _Trainer(data, out, options or TrainOptions())
    trainer.decode(progress)
    trainer.place(monitor)
    trainer.fit(monitor, deadline=started + trainer.options.stop.max_minutes * 60 if trainer.options.stop.max_minutes else None)
    return trainer.summary(started)


_MEMORY_FORMAT = torch.channels_last  # faster for these convnets on CUDA and on the CPUs measured (train/precision.py)
_PROBE_STEPS = 2  # steps of the first epoch's plan timed per precision and round by --precision auto


class _Trainer:
    """One run, step by step: the checks and the model (construction), the data (``decode``), the device and precision
    (``place``), the loop (``fit``), checkpoints and the summary. Holds what a checkpoint must save to continue it."""

    def __init__(self, data: str | Path, out: str | Path | None, options: TrainOptions):
        o = self.options = options
        self.device = check_device(o.run.device)
        self.info = arch_info(o.arch)
        self.regime = o.regime.make(self.info.dataset)
        self.epochs = check_options(o, self.regime, self.info)
        self.out = Path(out) if out else Path("models") / f"{o.arch}_{self.regime.slug}.pth"
        resume = Path(o.resume) if o.resume else None
        check_out(self.out, resume, o.overwrite)
        check_precision(o.run.precision)
        self.folder = scan_image_folder(data)
        self.kwargs = model_kwargs(o.arch_kwargs, len(self.folder.classes))
        self.state = read_resume(resume, o.arch, self.kwargs) if resume is not None else None  # before decoding: fail fast
        self.pre = Preprocess(self.info.dataset)
        self.store = store_resolution(self.folder, self.pre.kind, [s.size for s in self.regime.sizes])
        check_fits(len(self.folder), self.store, self.device)
        self.run = _Run()
        self._build_model()  # before decoding too: kwargs the factory refuses fail in a moment
        # What this segment of the run did (the summary's figures); ``run`` counts all segments.
        self.records: list[EpochRecord] = []
        self.samples, self.seconds, self.stopped, self.last_lr = 0, 0.0, None, o.optim.lr
        self.weights: Path | None = None

    def _build_model(self) -> None:
        o, state = self.options, self.state
        torch.manual_seed(o.run.seed)
        self.model = create_model(o.arch, **self.kwargs)
        self.optimizer = torch.optim.SGD(param_groups(self.model, o.optim.weight_decay), lr=o.optim.lr, momentum=o.optim.momentum,
                                         nesterov=False)
        self.smoother = GradSmoother() if o.optim.smoothing(self.regime) else None
        if state is None:
            return
        self.model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        self.run = _Run(int(ts["step"]), int(ts["epoch"]), int(ts["epoch_step"]), float(state.get("best_prec1", 0.0)),
                        int(ts.get("samples", 0)), float(ts.get("train_s", 0.0)), [*ts.get("history", []), state["mmdeploy"].get("command", "")])
        trained = Regime.from_dict(state["mmdeploy"]["regime"])
        if trained != self.regime:
            warnings.warn(f"--resume {o.resume} was trained with regime {trained.describe()}; continuing with {self.regime.describe()}",
                          stacklevel=4)  # the caller of train_model
        if ts.get("rng") is not None:
            torch.set_rng_state(ts["rng"])

    def decode(self, progress: Progress) -> None:
        """The training set decoded once (uint8, at the store resolution), and the validation set; the run's length in steps."""
        o = self.options
        with progress.task(f"decoding {len(self.folder)} training images", len(self.folder)) as advance:
            train_set = decode_images(self.folder, None, self.pre.kind, self.store, o.run.workers, progress=advance)
        self.val_set = decode_val(o.val, self.folder.classes, self.pre, self.regime, o.run.workers, progress)
        self.images, self.labels = train_set.images, train_set.labels
        self.n = len(train_set)
        self.per_epoch = steps_per_epoch(self.n, self.regime)
        self.total_steps = o.stop.steps if o.stop.steps else self.epochs * self.per_epoch

    def place(self, monitor: TrainMonitor) -> None:
        """Model, optimizer state and images on the device; the precision chosen (``auto`` may time a few steps)."""
        self.model.to(self.device, memory_format=_MEMORY_FORMAT).train()
        if self.state is not None:
            ts = self.state["train_state"]
            self.optimizer.load_state_dict(self.state["optim_state_dict"])  # after .to(): state follows the params' device
            if self.smoother is not None and ts.get("grad_smoothing"):
                self.smoother.load_state_dict(ts["grad_smoothing"], self.device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self.choice = self._choose_precision()
        monitor.note(self.choice.reason)
        bf16 = self.choice.precision == "bf16"
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
        self.aug_gen = torch.Generator()

    def _choose_precision(self):
        """--precision auto on a native-bf16 CPU times the run's own first steps in fp32 and bf16 (see train/precision.py)."""
        from mmdeploy.latency.machine import cpu_name

        o, gen = self.options, torch.Generator()
        steps = epoch_steps(self.n, self.regime, o.run.seed, 0)[:_PROBE_STEPS]

        def run_step(m, optimizer, st, autocast):
            train_step(m, optimizer, None, self._batch(st, gen, o.run.seed), autocast)

        key = cache_key(cpu_name(), f"{torch.get_num_threads()} threads", f"torch {torch.__version__}", o.arch, self.regime.describe(),
                        f"batch {o.regime.batch_size}")
        return choose_precision(o.run.precision, self.device, resumed=self.state["mmdeploy"] if self.state is not None else None,
                                cache_key=key, time_steps=step_timer(self.model, run_step, steps, self.device))

    def _batch(self, st: Step, gen: torch.Generator, aug_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen.manual_seed(aug_seed)
        x, y = make_batch(self.images, self.labels, st.indices, st.size, st.duplicates, self.pre, gen)
        return x.contiguous(memory_format=_MEMORY_FORMAT), y

    # -- the loop: losses and hits stay on the device; they are read every few steps ----------------------------

    def fit(self, monitor: TrainMonitor, deadline: float | None) -> None:
        """Epochs until ``total_steps`` or the deadline, a checkpoint after each; Ctrl-C saves, then lets the interrupt through."""
        monitor.begin(self.total_steps, self.run.step, f"{self.options.arch} {self.regime.kind}")
        try:
            while self.run.step < self.total_steps and self.stopped is None:
                self._epoch(monitor, deadline)
        except KeyboardInterrupt:
            # Keep what was learned: the step counters are consistent (they advance after each whole step).
            self.stopped = "interrupted"
            self.checkpoint()
            monitor.finish()
            raise
        monitor.finish()
        if self.weights is None:  # nothing ran (already at --steps): still write the checkpoint where asked
            self.weights = self.checkpoint()

    def _epoch(self, monitor: TrainMonitor, deadline: float | None) -> None:
        """The rest of the epoch in progress (or up to the last step or the deadline), then its record and a checkpoint."""
        o, run, dev = self.options, self.run, self.device
        plan = epoch_steps(self.n, self.regime, o.run.seed, run.epoch)
        loss_sum, hits = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long)
        window = _Window(dev)
        samples, steps_done, seg_start = 0, 0, time.monotonic()
        for st in plan[run.epoch_step:]:
            if run.step >= self.total_steps:
                break
            self.last_lr = lr_at(run.step, self.total_steps, o.optim.lr, o.optim.schedule, o.optim.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = self.last_lr
            batch = self._batch(st, self.aug_gen, derived_seed(o.run.seed, "augment", run.step))
            loss, correct = train_step(self.model, self.optimizer, self.smoother, batch, self.autocast)
            loss_sum += loss * st.samples
            hits += correct
            window.add(loss * st.samples, correct, st.samples)
            samples += st.samples
            steps_done += 1
            run.step += 1
            run.epoch_step += 1
            if run.step % _REPORT_EVERY == 0 or run.step == self.total_steps:
                window.report(monitor, run.step, self.last_lr, st.size)
            if deadline is not None and time.monotonic() > deadline:
                self.stopped = "max-minutes"
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.monotonic() - seg_start
        self.seconds += seconds
        self.samples += samples
        run.train_s += seconds
        run.samples += samples
        epoch_done = run.epoch_step >= len(plan)
        record = EpochRecord(run.epoch, steps_done, loss_sum.item() / max(1, samples), 100.0 * hits.item() / max(1, samples),
                             samples / max(seconds, 1e-9), self.last_lr)
        if epoch_done:
            run.epoch += 1
            run.epoch_step = 0
        if not steps_done:
            return
        if self.val_set is not None and (epoch_done or run.step >= self.total_steps or self.stopped):
            record.val_acc = val_accuracy(self.model, self.val_set, self.regime, self.pre, _MEMORY_FORMAT, self.autocast)
            run.best_prec1 = max(run.best_prec1, record.val_acc)
        self.records.append(record)
        monitor.end_epoch(record)
        self.weights = self.checkpoint()

    # -- results ------------------------------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """The reference code's dict plus the ``mmdeploy`` record and the training state, written atomically."""
        o, run, regime, classes = self.options, self.run, self.regime, self.folder.classes
        mm = {
            "arch": o.arch,
            "arch_kwargs": dict(self.kwargs),  # the factory's whole call: later commands rebuild (and check) exactly this
            "classes": list(classes),
            "preprocess": self.pre.to_dict(),
            "training_size": regime.base_size if regime.kind != "fixed" else regime.sizes[0].size,
            "regime": regime.to_dict(),
            "steps": run.step,
            "total_steps": self.total_steps,
            "epochs": round(run.epoch + run.epoch_step / self.per_epoch, 4),
            "optimizer": o.optim.record(regime),
            "seed": o.run.seed,
            "device": str(self.device),
            "precision": self.choice.precision,
            "precision_choice": self.choice.to_dict(),
            "channels_last": True,
            "threads": torch.get_num_threads(),
            "train_images": self.n,
            "images_per_s": round(run.samples / max(run.train_s, 1e-9), 2),
            "wall_s": round(run.train_s, 2),
            "stopped_early": self.stopped or "",
            "command": o.command,
        }
        model_name, config = reference_model_config(o.arch, len(classes), regime)
        ckpt = {
            "model": model_name,
            "config": repr(config),
            "state_dict": cpu_state(self.model.state_dict()),
            "epoch": run.epoch,
            "best_prec1": float(run.best_prec1),
            "optim_state_dict": cpu_tree(self.optimizer.state_dict()),
            "mmdeploy": mm,
            "train_state": {
                "step": run.step,
                "epoch": run.epoch,
                "epoch_step": run.epoch_step,
                "grad_smoothing": self.smoother.state_dict() if self.smoother is not None else None,
                "rng": torch.get_rng_state(),
                "samples": run.samples,
                "train_s": run.train_s,
                "history": list(run.history),
            },
        }
        return save_training_checkpoint(self.out, ckpt)

    def summary(self, started: float) -> TrainSummary:
        run, last = self.run, self.records[-1] if self.records else None
        return TrainSummary(
            checkpoint=self.out, safetensors=self.weights, arch=self.options.arch, regime=self.regime.to_dict(), device=str(self.device),
            precision=self.choice.precision, steps=run.step, epochs=round(run.epoch + run.epoch_step / self.per_epoch, 4),
            images=self.samples, images_per_s=self.samples / max(self.seconds, 1e-9), wall_s=time.monotonic() - started,
            loss=last.loss if last else float("nan"), train_acc=last.train_acc if last else float("nan"),
            val_acc=last.val_acc if last else None, best_prec1=run.best_prec1, stopped_early=self.stopped, history=self.records,
        )


class _Window:
    """Loss and hits since the last progress report, kept on the device (reading them waits for it)."""

    def __init__(self, device: torch.device):
        self.loss, self.hits, self.samples = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0

    def add(self, loss: torch.Tensor, hits: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.hits += hits
        self.samples += samples

    def report(self, monitor: TrainMonitor, step: int, lr: float, size: int) -> None:
        loss = self.loss.item() / self.samples
        if not math.isfinite(loss):
            raise MMDeployError(f"the training loss became {loss} by step {step}", "lower --lr, or add --warmup-steps")
        monitor.update(step, loss, 100.0 * self.hits.item() / self.samples, lr, size)
        self.loss.zero_()
        self.hits.zero_()
        self.samples = 0

