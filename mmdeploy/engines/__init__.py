"""Engines, one module per backend, heavy imports deferred. A missing backend disables only itself.

Which engines exist, and what each serves, is the registry's (engines/registry.py); an engine is loaded from a bundle by
``mmdeploy.engines.loader.load_engine`` (the loader finds the files and settings, the runner only runs them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmdeploy.engines.registry import PRECISIONS, EngineSpec, engine_names, engine_spec, register_engine, serves, unregister_engine
from mmdeploy.errors import MMDeployError

if TYPE_CHECKING:
    from mmdeploy.engines.base import Engine, InputMeta


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
        engine_spec(name)  # refuses an unknown name
    for p in precisions or []:
        if p not in PRECISIONS:
            raise MMDeployError(f"unknown precision {p!r}", f"use one of {', '.join(PRECISIONS)}")


def __getattr__(name: str):
    # The lifecycle's classes import torch: loaded on first use, so that the registry (read by the config
    # schema, hence by every command's flags) costs no torch import.
    if name in ("Engine", "InputMeta"):
        from mmdeploy.engines import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_engines() -> dict[str, str]:
    """Engine name -> "" if usable here, else the one-line reason it is not."""
    return {name: engine_spec(name).unavailable_reason() for name in engine_names()}


__all__ = ["PRECISIONS", "Engine", "EngineSpec", "InputMeta", "available_engines", "check_choices", "engine_names",
           "engine_spec", "register_engine", "serves", "torch_runs", "unregister_engine"]
