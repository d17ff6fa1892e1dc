"""The one engine lifecycle every backend shares (activate / infer / deactivate).

An engine serves one bundle size and precision. Input: float32 NCHW torch tensor
(preprocessed); output: float32 logits as a CPU torch tensor. ``synchronize`` lets the
benchmark harness time device work honestly; ``input_metadata()`` says what the engine takes.

Engines are built from files (a model, an ONNX path, a plan path); ``from_bundle`` is each
engine's loader: it finds the files in a bundle and takes the engine's options as typed
keyword-only arguments. Options with the same name mean the same thing in every engine:
``batch`` (int: the batch the engine will be called with; every engine takes it), ``device``
(str: "cpu", "cuda", "cuda:N"), ``threads`` (int: intra-op CPU threads), ``policy``
(``mmdeploy.latency.threads.ThreadPolicy``). An option an engine does not have is refused, naming it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from mmdeploy.errors import MMDeployError


@dataclass(frozen=True)
class InputMeta:
    """The one image input of an engine: its graph name, its NCHW shape (None where any value
    is taken, e.g. a dynamic batch) and the dtype ``run(x)`` takes (the engine casts to its own)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: torch.dtype = torch.float32


class Engine:
    name = "base"
    policy = None  # mmdeploy.latency.threads.ThreadPolicy the engine runs under (recorded with each latency)

    @classmethod
    def from_bundle(cls, bundle, size: int, precision: str = "fp32", **options) -> Engine:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> list[str]:
        """The options ``from_bundle`` takes: its keyword-only parameters."""
        return [p.name for p in inspect.signature(cls.from_bundle).parameters.values() if p.kind is p.KEYWORD_ONLY]

    @classmethod
    def refuse_unknown(cls, unknown: dict) -> None:
        """Raise for options this engine does not have: a misspelled option must not be ignored."""
        if unknown:
            names = ", ".join(repr(k) for k in sorted(unknown))
            raise MMDeployError(f"the {cls.name} engine has no option {names}", f"its options are: {', '.join(cls.option_names())}")

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

    def input_metadata(self) -> InputMeta:
        """Name, shape and dtype of the input, as the activated engine sees it."""
        if not self.active:
            raise RuntimeError(f"{self.name} engine's input metadata asked for outside its `with` block")
        return self._input_metadata()

    def _input_metadata(self) -> InputMeta:  # pragma: no cover - abstract
        raise NotImplementedError

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
