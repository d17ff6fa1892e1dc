"""The one engine lifecycle every backend shares (activate / infer / deactivate).

An engine (a runner) serves one size and precision. Input: float32 NCHW torch tensor
(preprocessed); output: float32 logits as a CPU torch tensor. ``synchronize`` lets the
benchmark harness time device work honestly; ``input_metadata()`` says what the engine takes.

A runner is built from plain values (a model, an ONNX path, a plan path, a size, a precision,
a ``mmdeploy.latency.threads.ThreadPolicy``); it knows nothing of bundles or tuning. Finding those
values in a bundle is the loader's work (``mmdeploy.engines.loader``).

The lifecycle's state checks live here, once: ``activate``, ``infer`` (and ``__call__``) and
``deactivate`` are template methods that check the state and call the subclass's ``_activate``,
``_infer`` and ``_deactivate``. A subclass implements only those hooks (overriding the public
methods is refused when the class is defined), so none can forget the checks or run them in the
wrong order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class InputMeta:
    """The one image input of an engine: its graph name, its NCHW shape (None where any value
    is taken, e.g. a dynamic batch) and the dtype ``run(x)`` takes (the engine casts to its own)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: torch.dtype = torch.float32


_TEMPLATE_METHODS = {"activate": "_activate", "infer": "_infer", "deactivate": "_deactivate", "__call__": "_infer",
                     "input_metadata": "_input_metadata"}


class Engine:
    name = "base"
    policy = None  # mmdeploy.latency.threads.ThreadPolicy the engine runs under (recorded with each latency)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        overridden = [m for m in _TEMPLATE_METHODS if m in vars(cls)]
        if overridden:
            hooks = ", ".join(_TEMPLATE_METHODS[m] for m in overridden)
            raise TypeError(f"{cls.__name__} overrides {', '.join(overridden)}: implement {hooks} instead "
                            "(the base class checks the engine's state around them)")

    def __init__(self, size: int, precision: str = "fp32", device: str = "cpu"):
        self.size = size
        self.precision = precision
        self.device = device
        self.active = False

    # -- the lifecycle: state checks here, the work in the subclass's hooks ------------------------
    def activate(self) -> None:
        if self.active:
            raise RuntimeError(f"{self.name} engine activated twice (deactivate it first)")
        self._activate()
        self.active = True

    def deactivate(self) -> None:
        """Release what ``activate`` took; a no-op on an engine that is not active (cleanup may run twice)."""
        if not self.active:
            return
        try:
            self._deactivate()
        finally:
            self.active = False

    def infer(self, x):
        """Logits for a batch ``x``: a torch tensor gives a tensor; a numpy array gives an array, where the engine can
        without torch on the call path (ONNX Runtime and OpenVINO on the CPU): after a 10 ms idle gap, wrapping a call's
        input and output in torch tensors cost 26-29 us (2 us back to back), 1.11x a 16 px batch-1 request
        (benchmarks/bench_cold_call.py)."""
        if not self.active:
            raise RuntimeError(f"{self.name} engine used outside its `with` block (activate it first)")
        if isinstance(x, np.ndarray):
            return self._infer_numpy(x)
        return self._infer(x)

    def __call__(self, x):
        return self.infer(x)

    def _infer_numpy(self, x: np.ndarray) -> np.ndarray:
        """A numpy batch through the torch path (engines with a direct one override this)."""
        return self._infer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).detach().cpu().numpy()

    def input_metadata(self) -> InputMeta:
        """Name, shape and dtype of the input, as the activated engine sees it."""
        if not self.active:
            raise RuntimeError(f"{self.name} engine's input metadata asked for outside its `with` block")
        return self._input_metadata()

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
        return False

    # -- what a subclass implements ----------------------------------------------------------------
    def _activate(self) -> None:
        """Load the model, session or plan (called once, only when inactive)."""

    def _deactivate(self) -> None:
        """Release what ``_activate`` took (called only when active)."""

    def _infer(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _input_metadata(self) -> InputMeta:  # pragma: no cover - abstract
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": self.name, "size": self.size, "precision": self.precision, "device": self.device}
