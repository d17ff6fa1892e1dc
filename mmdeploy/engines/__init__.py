"""Engines, one module per backend, heavy imports deferred. A missing backend disables only itself."""

from __future__ import annotations

from mmdeploy.engines.base import Engine
from mmdeploy.errors import MMDeployError

ENGINES = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16")


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

        return TorchEngine(bundle.build_model(size), size, precision, device=options.get("device"), policy=options.get("policy"))
    if name == "ort":
        from mmdeploy.engines.onnxruntime import OrtEngine

        return OrtEngine.from_bundle(bundle, size, precision, **options)
    if name == "trt":
        from mmdeploy.engines.tensorrt import TrtEngine

        return TrtEngine.from_bundle(bundle, size, precision, **options)
    raise MMDeployError(f"unknown engine {name!r}", f"use one of {', '.join(ENGINES)}")


def available_engines() -> dict[str, str]:
    """Engine name -> "" if usable here, else the one-line reason it is not."""
    from mmdeploy.engines.onnxruntime import ort_unavailable_reason
    from mmdeploy.engines.tensorrt import trt_unavailable_reason

    return {"torch": "", "ort": ort_unavailable_reason(), "trt": trt_unavailable_reason()}


__all__ = ["ENGINES", "PRECISIONS", "Engine", "available_engines", "check_choices", "create_engine"]
