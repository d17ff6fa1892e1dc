"""Optimizer pieces of MixSize training: gradient smoothing, weight-decay groups, the learning-rate schedule and one step."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def train_step(model, optimizer, smoother: GradSmoother | None, batch: tuple[torch.Tensor, torch.Tensor], autocast):
    """One SGD step on ``batch`` (inputs, labels) under ``autocast``, gradients smoothed first; (loss, hits) stay on the device."""
    x, y = batch
    with autocast():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if smoother is not None:
        smoother(model.parameters())
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()
