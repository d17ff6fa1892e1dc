"""How BN statistics settle as calibration images are added, and the rule that stops calibration once they have.

After every batch the running (exact, float64) mean and variance of each BN layer's channels are compared with
their values ``window`` batches earlier. A channel's change is measured on the scale BN itself divides by:
``|mean_now - mean_then| / sqrt(var_now + eps)`` and ``|var_now - var_then| / (var_now + eps)`` (a channel
that is always zero has nothing to move). A layer's change is its largest channel's; the model's is its largest
layer's, over every size being calibrated.

``--batches auto`` (:class:`StoppingRule`) stops after the first batch, at least ``min_batches`` in, where that
change is below ``tolerance`` at every size, and at ``max_batches`` (the plan's length) otherwise. The trace of the
change (:meth:`Convergence.summary`) is recorded with every calibration, fixed batch counts included, so a
user can see how many images the statistics needed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

AUTO = "auto"
AUTO_MAX_BATCHES = 200  # the reference code's count: auto never runs longer than the fixed default


@dataclass(frozen=True)
class StoppingRule:
    """``--batches auto``: stop when every layer's statistics moved less than ``tolerance`` over the last
    ``window`` batches, after at least ``min_batches`` and at most ``max_batches``.

    The tolerance, 0.01, is 1% of a channel's standard deviation for means and 1% of its variance (a 0.5%
    error in the scale BN applies). It bounds the last window's change, not the distance to an infinite
    sample: sampling noise shrinks as 1/sqrt(images), so the drift still to come is a few times the last
    window's (about sqrt(batches / window)). ``min_batches`` 16 is 1,024 images at batch 64, so a folder of
    up to 1,024 images (the shipped demo's 1,000) is always used whole and auto equals the fixed count there."""

    tolerance: float = 0.01
    window: int = 4
    min_batches: int = 16
    max_batches: int = AUTO_MAX_BATCHES

    def describe(self) -> dict:
        return {"rule": "max relative change of every BN layer's running mean and variance over the last `window` batches < tolerance",
                "tolerance": self.tolerance, "window": self.window, "min_batches": self.min_batches, "max_batches": self.max_batches}


class Convergence:
    """Running float64 sums per size, fed one batch at a time (:meth:`add_batch`), with the change trace and the stop."""

    def __init__(self, layer_names: list[str], channels: list[int], sizes: list[int], rule: StoppingRule | None = None,
                 window: int = 4, eps: float = 1e-5):
        self.names, self.channels, self.rule, self.eps = list(layer_names), list(channels), rule, eps
        self.window = rule.window if rule else window
        width = sum(channels)
        self._sum = {s: torch.zeros(width, dtype=torch.float64) for s in sizes}
        self._sumsq = {s: torch.zeros(width, dtype=torch.float64) for s in sizes}
        self._count = {s: torch.zeros(width, dtype=torch.float64) for s in sizes}
        self._past = {s: deque(maxlen=self.window + 1) for s in sizes}
        self.batches: list[int] = []  # global indices of the batches that ran, in order
        self.images = 0
        self.trace: list[tuple[int, int, float | None, str | None]] = []  # (batches, images, change, worst layer)
        self.stopped = False

    def add_batch(self, batch_index: int, stats: dict[int, tuple[list[int], int, torch.Tensor, torch.Tensor]]) -> None:
        """One batch at every size: {size: (values per channel per image of each layer, batch size, means, unbiased variances)}."""
        changes = []
        batch_size = 0
        for size, (per_image, batch_size, mean, var) in stats.items():
            n = torch.tensor(per_image, dtype=torch.float64).mul_(batch_size).repeat_interleave(torch.tensor(self.channels))
            mean, var = mean.to("cpu", torch.float64), var.to("cpu", torch.float64)
            self._count[size] += n
            self._sum[size] += n * mean
            self._sumsq[size] += (n - 1) * var + n * mean * mean
            now = self._mean_var(size)
            self._past[size].append(now)
            if len(self._past[size]) > self.window:
                changes.append(self._change(now, self._past[size][0]))
        self.batches.append(batch_index)
        self.images += batch_size
        change, worst = max(changes) if len(changes) == len(stats) and changes else (None, None)
        self.trace.append((len(self.batches), self.images, change, worst))
        rule = self.rule
        if rule is not None and change is not None and len(self.batches) >= rule.min_batches and change < rule.tolerance:
            self.stopped = True

    def _mean_var(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._count[size]
        mean = self._sum[size] / n
        return mean, ((self._sumsq[size] - n * mean * mean) / (n - 1).clamp_min(1)).clamp_min(0)

    def _change(self, now, then) -> tuple[float, str]:
        (mean, var), (mean0, var0) = now, then
        scale = var + self.eps
        per_channel = torch.maximum((mean - mean0).abs() / scale.sqrt(), (var - var0).abs() / scale)
        per_layer = [part.max().item() for part in per_channel.split(self.channels)]
        worst = max(range(len(per_layer)), key=per_layer.__getitem__)
        return per_layer[worst], self.names[worst]

    def summary(self) -> dict:
        """For the manifest and the summary: the change at 1, 2, 4, 8, ... batches and at the end, and how it stopped."""
        points = [t for t in self.trace if t[2] is not None and t[0] & (t[0] - 1) == 0]
        if self.trace and self.trace[-1][2] is not None and (not points or points[-1] is not self.trace[-1]):
            points.append(self.trace[-1])
        last = self.trace[-1] if self.trace else (0, 0, None, None)
        out = {"window_batches": self.window, "batches": last[0], "images": last[1], "final_change": last[2], "worst_layer": last[3],
               "trace": [{"batches": b, "images": i, "change": round(c, 6)} for b, i, c, _ in points]}
        if self.rule is not None:
            out["stopping"] = {**self.rule.describe(), "stopped_early": self.stopped, "batches_used": last[0]}
        return out
