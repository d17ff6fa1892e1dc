"""Architecture registry: ``@register`` a factory and its function name becomes the arch name.

The built-in architectures' modules import torch, so they are imported when a factory is first needed. Their names
and facts are also listed in :data:`BUILTIN`, which is what lets ``mmdeploy archs`` and the trust check on a manifest
(:func:`is_registered`) answer without torch; ``@register`` refuses a built-in whose facts disagree with that table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmdeploy.errors import MMDeployError

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class ArchInfo:
    name: str
    factory: Callable[..., nn.Module]
    dataset: str  # "cifar" or "imagenet": default preprocessing and number of classes
    min_size: int  # smallest input side the network accepts
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ArchInfo] = {}

# name -> (module, dataset, smallest size) of each built-in architecture; the module registers it when imported.
BUILTIN: dict[str, tuple[str, str, int]] = {
    **{f"cifar_resnet{d}": ("mmdeploy.models.resnet", "cifar", 4) for d in (8, 20, 32, 44, 56, 110)},
    **{f"resnet{d}": ("mmdeploy.models.resnet", "imagenet", 32) for d in (18, 34, 50, 101, 152)},
    "mobilenet_v2": ("mmdeploy.models.mobilenet", "imagenet", 32),
}


def _load_builtin(name: str) -> None:
    if name in BUILTIN and name not in _REGISTRY:
        importlib.import_module(BUILTIN[name][0])


def register(dataset: str, min_size: int, **defaults):
    """Decorator: register ``fn`` under ``fn.__name__``. A name registered twice is an error."""

    def wrap(fn):
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        if name in BUILTIN and BUILTIN[name] != (fn.__module__, dataset, min_size):
            raise ValueError(f"architecture {name!r} is a built-in's name, registered as {BUILTIN[name]}")
        _REGISTRY[name] = ArchInfo(name, fn, dataset, min_size, dict(defaults))
        return fn

    return wrap


def list_archs() -> list[str]:
    return sorted({*_REGISTRY, *BUILTIN})


def is_registered(name: str) -> bool:
    return name in _REGISTRY or name in BUILTIN


def arch_facts(name: str) -> tuple[str, int]:
    """(dataset, smallest size) of a registered architecture, without importing its module (nor torch)."""
    if name in BUILTIN:
        return BUILTIN[name][1:]
    info = arch_info(name)
    return info.dataset, info.min_size


def arch_info(name: str) -> ArchInfo:
    _load_builtin(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _user_arch(name)
    raise MMDeployError(
        f"unknown architecture {name!r}",
        f"use one of {', '.join(list_archs())}, or --arch package.module:factory for your own code",
    )


def _user_arch(spec: str) -> ArchInfo:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MMDeployError(
            f"cannot import {module_name!r} for --arch {spec}: {exc}",
            "make the module importable (pip install -e it, or add its folder to PYTHONPATH)",
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise MMDeployError(
            f"{module_name!r} has no callable {attr!r}", "--arch package.module:factory names a function returning an nn.Module"
        )
    return ArchInfo(spec, factory, getattr(factory, "mmdeploy_dataset", "imagenet"), getattr(factory, "mmdeploy_min_size", 1))


def create_model(name: str, **kwargs) -> nn.Module:
    info = arch_info(name)
    params = {**info.defaults, **kwargs}
    try:
        model = info.factory(**params)
    except TypeError as exc:
        raise MMDeployError(f"architecture {name!r} does not take {params}: {exc}", "check --arch-kwargs and the checkpoint's config") from None
    except Exception as exc:  # noqa: BLE001  the user's own factory failing is their input's problem, not an internal error
        if ":" not in name:
            raise
        text = " ".join(str(exc).split())[:200]
        raise MMDeployError(f"--arch {name} raised {type(exc).__name__} when called with {params}: {text}",
                            "check --arch-kwargs (e.g. the model name your factory knows)") from None
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise MMDeployError(f"--arch {name} returned {type(model).__name__}, not an nn.Module", "the factory must return a torch.nn.Module")
    return model
