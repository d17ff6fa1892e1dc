"""The one engine lifecycle every backend shares (activate / infer / deactivate).

An engine serves one bundle size and precision. Input: float32 NCHW torch tensor
(preprocessed); output: float32 logits as a CPU torch tensor. ``synchronize`` lets the
benchmark harness time device work honestly.
"""

from __future__ import annotations

import torch


class Engine:
    name = "base"
    policy = None  # mmdeploy.threads.ThreadPolicy the engine runs under (recorded with each latency)

    def __init__(self, size: int, precision: str = "fp32", device: str = "cpu"):
        self.size = size
        self.precision = precision
        self.device = device
        self.active = False

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    def infer(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": self.name, "size": self.size, "precision": self.precision, "device": self.device}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            raise RuntimeError(f"{self.name} engine used outside its `with` block")
        return self.infer(x)

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
        return False
