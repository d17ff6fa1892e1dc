"""``mmdeploy train``: the CLI wiring of :func:`mmdeploy.train.trainer.train_model`, and its progress display."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, err_console, make_progress
from mmdeploy.cli.options import JsonOpt
from mmdeploy.train.monitor import EpochRecord, TrainMonitor  # not the loop's module: that one imports torch


class _LineMonitor(TrainMonitor):
    """One line per epoch (for logs and pipes, where a live bar would be noise)."""

    def __init__(self, out):
        self.out = out

    def note(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False)

    def end_epoch(self, r: EpochRecord) -> None:
        val = f", val acc {r.val_acc:.2f}%" if r.val_acc is not None else ""
        self.out.print(f"epoch {r.epoch}: {r.steps} steps, loss {r.loss:.4f}, train acc {r.train_acc:.2f}%{val}, "
                       f"{r.images_per_s:.0f} images/s, lr {r.lr:.4g}")


class _BarMonitor(_LineMonitor):
    """A live bar with the recent loss and accuracy; epoch lines print above it."""

    def begin(self, total_steps: int, done_steps: int, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  lr {task.fields[lr]}  {task.fields[size]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.out, transient=True)
        self.bar.start()
        self.task = self.bar.add_task(description, total=total_steps, completed=done_steps, loss="-", acc="-", lr="-", size="")
        self.out = self.bar.console

    def update(self, step: int, loss: float, acc: float, lr: float, size: int) -> None:
        self.bar.update(self.task, completed=step, loss=f"{loss:.3f}", acc=f"{acc:.1f}%", lr=f"{lr:.4g}", size=f"{size}px")

    def finish(self) -> None:
        self.bar.stop()


def _command_line(canonical: list[str]) -> str:
    """The command as typed when this process is ``mmdeploy train ...``; otherwise the equivalent one."""
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        return shlex.join(["mmdeploy", *sys.argv[1:]])
    return shlex.join(["mmdeploy", "train", *canonical])


@command
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Training ImageFolder: DIR/<class>/<image>.jpg. Decoded once, kept on the device.")],
    arch: Annotated[str, typer.Option(help="Architecture (see `mmdeploy archs`) or package.module:factory.")] = "cifar_resnet20",
    arch_kwargs: Annotated[Optional[str], typer.Option("--arch-kwargs", help="Keyword arguments of the --arch factory as a JSON object, e.g. '{\"width\": 16}' (num_classes comes from --data). The checkpoint records the whole call; for your own package.module:factory, later commands need the same --arch and that recorded --arch-kwargs, num_classes included.")] = None,
    regime: Annotated[str, typer.Option(help="D+ (duplicates), B+ (batch scaling) or fixed (one size, the baseline).")] = "D+",
    sizes: Annotated[Optional[str], typer.Option(help="Mixed regimes: SIZE:PROB pairs. Default CIFAR 32:0.3,48:0.2,24:0.3,16:0.2.")] = None,
    size: Annotated[Optional[int], typer.Option("--size", "-s", help="--regime fixed: the one size (default: base size, 32 for CIFAR).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs over the training set.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps; wins over --epochs (to match a baseline's step count).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Base batch: unique images per step at the base size.")] = 64,
    base_size: Annotated[Optional[int], typer.Option(help="Base size the batch rules scale from (default 32 CIFAR, 224 ImageNet).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, momentum 0.9).")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="Weight decay on conv/linear weights (not BN, not biases).")] = 1e-4,
    schedule: Annotated[str, typer.Option(help="cosine, or step (lr / 10 at 50% and 75% of the steps).")] = "cosine",
    warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 0,
    grad_smoothing: Annotated[Optional[bool], typer.Option("--grad-smoothing/--no-grad-smoothing",
                                                           help="Running gradient-norm rescaling (default: on for D+/B+, off for fixed).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto: bf16 autocast on CUDA; on a CPU with native bf16, whichever of fp32 and bf16 a few timed train steps show faster (remembered per machine; a resume keeps its checkpoint's); else fp32. Or fp32, bf16.")] = "auto",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Checkpoint .pth (default models/<arch>_<regime>.pth); a .safetensors is written beside it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for initialization, epoch order and augmentation.")] = 0,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint written by mmdeploy train.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after this many minutes and save (recorded in the checkpoint).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding threads (default: up to 8).")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation ImageFolder: top-1 at the base size after each epoch (best_prec1).")] = None,
    json_out: JsonOpt = False,
):
    """Train a CNN with mixed image sizes (MixSize D+/B+) or a fixed size, and write a checkpoint.

    Example: [bold]mmdeploy train --data data/cifar10/train --arch cifar_resnet20 --regime D+ --epochs 200 --out models/cifar_resnet20_mixsize_dplus.pth[/]
    (your own model: [bold]mmdeploy train --data DIR --arch mynet:build --arch-kwargs '{"width": 16}' --steps 1000[/])
    """
    from mmdeploy.models.trust import parse_arch_kwargs
    from mmdeploy.train.options import OptimOptions, RegimeOptions, RunOptions, StopOptions, TrainOptions
    from mmdeploy.train.trainer import train_model

    canonical = ["--data", str(data), "--arch", arch, *(["--arch-kwargs", arch_kwargs] if arch_kwargs is not None else []),
                 "--regime", regime, *(["--sizes", sizes] if sizes else []),
                 *(["--size", str(size)] if size else []), *(["--epochs", str(epochs)] if epochs else []),
                 *(["--steps", str(steps)] if steps else []), "--batch-size", str(batch_size),
                 *(["--base-size", str(base_size)] if base_size else []), "--lr", repr(lr), "--weight-decay", repr(weight_decay),
                 "--schedule", schedule, "--warmup-steps", str(warmup_steps),
                 *([] if grad_smoothing is None else ["--grad-smoothing" if grad_smoothing else "--no-grad-smoothing"]),
                 "--device", device, "--precision", precision, *(["--out", str(out)] if out else []), "--seed", str(seed),
                 *(["--resume", str(resume)] if resume else []), *(["--max-minutes", repr(max_minutes)] if max_minutes else []),
                 *(["--val", str(val)] if val else [])]
    live = not json_out and err_console.is_terminal
    monitor = _BarMonitor(err_console) if live else _LineMonitor(err_console if json_out else console)
    options = TrainOptions(
        arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs),
        regime=RegimeOptions(kind=regime, sizes=sizes, size=size, base_size=base_size, batch_size=batch_size),
        optim=OptimOptions(lr=lr, weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, grad_smoothing=grad_smoothing),
        stop=StopOptions(epochs=epochs, steps=steps, max_minutes=max_minutes),
        run=RunOptions(device=device, precision=precision, seed=seed, workers=workers),
        val=val, resume=resume, overwrite=overwrite, command=_command_line(canonical),
    )
    try:
        summary = train_model(data, out, options, progress=make_progress(json_out), monitor=monitor)
    except KeyboardInterrupt:
        # train_model saved a checkpoint before letting the interrupt through (if training had started).
        where = out or "the --out checkpoint"
        err_console.print(f"[bold red]interrupted:[/] the progress so far is saved in {where}; continue with --resume {where}")
        raise typer.Exit(130) from None
    if json_out:
        return emit_json(summary)
    stop = {"max-minutes": " (stopped by --max-minutes; continue with --resume)"}.get(summary.stopped_early or "", "")
    val_text = f", best val top-1 {summary.best_prec1:.2f}%" if summary.val_acc is not None else ""
    console.print(f"wrote [bold]{summary.checkpoint}[/] and {summary.safetensors.name}: {summary.steps} steps ({summary.epochs:g} epochs), "
                  f"loss {summary.loss:.4f}, train acc {summary.train_acc:.2f}%{val_text}; {summary.images_per_s:.0f} images/s "
                  f"({summary.regime['kind']} on {summary.device}, {summary.precision}){stop}")
