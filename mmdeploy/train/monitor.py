"""What a training run reports while it runs: one record per epoch, and the monitor interface the CLI implements.

Kept apart from the loop (:mod:`~mmdeploy.train.trainer`) and free of torch, so that the ``train`` command's module,
which every CLI start-up imports, does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class TrainMonitor:
    """Where training reports progress. The default is silent; the CLI shows a bar or lines."""

    def begin(self, total_steps: int, done_steps: int, description: str) -> None: ...

    def update(self, step: int, loss: float, acc: float, lr: float, size: int) -> None: ...

    def end_epoch(self, record: EpochRecord) -> None: ...

    def finish(self) -> None: ...

    def note(self, text: str) -> None:
        """One line about a decision the run made (e.g. the precision ``auto`` chose)."""
