"""Engines, one module per backend, heavy imports deferred. A missing backend disables only itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmdeploy.errors import MMDeployError

if TYPE_CHECKING:
    from mmdeploy.engines.base import Engine, InputMeta

ENGINES = ("torch", "ort", "trt", "ov")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# What each engine can serve; a (engine, precision) outside this is skipped, not measured under a wrong name.
# int8 is an exported-graph precision (QDQ ONNX), so eager torch has none.
ENGINE_PRECISIONS = {"torch": ("fp32", "fp16"), "ort": ("fp32", "fp16", "int8"), "trt": ("fp32", "fp16", "int8"), "ov": ("fp32", "bf16", "int8")}


def serves(engine: str, precision: str) -> bool:
    return precision in ENGINE_PRECISIONS.get(engine, ())


def torch_runs(precision: str) -> bool:
    """Whether the eager torch engine has this precision here (fp16 needs CUDA)."""
    if not serves("torch", precision):
        return False
    if precision == "fp16":
        import torch

        return torch.cuda.is_available()
    return True


def check_choices(engines: list[str] | None, precisions: list[str] | None) -> None:
    """Refuse unknown engine or precision names before any work (a typo must not be measured as fp32)."""
    for name in engines or []:
        if name not in ENGINES:
            raise MMDeployError(f"unknown engine {name!r}", f"use one of {', '.join(ENGINES)}")
    for p in precisions or []:
        if p not in PRECISIONS:
            raise MMDeployError(f"unknown precision {p!r}", f"use one of {', '.join(PRECISIONS)}")


def create_engine(name: str, bundle, size: int, precision: str = "fp32", **options) -> Engine:
    if name == "torch":
        from mmdeploy.engines.torch_engine import TorchEngine

        return TorchEngine.from_bundle(bundle, size, precision, **options)
    if name == "ort":
        from mmdeploy.engines.onnxruntime import OrtEngine

        return OrtEngine.from_bundle(bundle, size, precision, **options)
    if name == "trt":
        from mmdeploy.engines.tensorrt import TrtEngine

        return TrtEngine.from_bundle(bundle, size, precision, **options)
    if name == "ov":
        from mmdeploy.engines.openvino import OvEngine

        return OvEngine.from_bundle(bundle, size, precision, **options)
    raise MMDeployError(f"unknown engine {name!r}", f"use one of {', '.join(ENGINES)}")


def __getattr__(name: str):
    # The lifecycle's classes import torch: loaded on first use, so that the names and precisions above (read by the
    # config schema, hence by every command's flags) cost no torch import.
    if name in ("Engine", "InputMeta"):
        from mmdeploy.engines import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_engines() -> dict[str, str]:
    """Engine name -> "" if usable here, else the one-line reason it is not."""
    from mmdeploy.engines.onnxruntime import ort_unavailable_reason
    from mmdeploy.engines.openvino import ov_unavailable_reason
    from mmdeploy.engines.trt_probe import trt_unavailable_reason

    return {"torch": "", "ort": ort_unavailable_reason(), "trt": trt_unavailable_reason(), "ov": ov_unavailable_reason()}


__all__ = ["ENGINES", "ENGINE_PRECISIONS", "PRECISIONS", "Engine", "InputMeta", "available_engines", "check_choices", "create_engine", "serves",
           "torch_runs"]
