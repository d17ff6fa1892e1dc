"""Checkpoint I/O: every accepted format in, one ``LoadedCheckpoint`` out. Never unpickles by default.

Accepted (README, "Checkpoints accepted"):
- the reference code's dict: ``model`` (e.g. "resnet"), ``config`` (a *string* parsed with
  ``ast.literal_eval``), ``state_dict``, ``epoch``, ``best_prec1``, ...;
- a plain state_dict, or ``{"state_dict": ...}``, with ``--arch``; ``module.`` prefixes stripped;
- safetensors, with arch/config in its metadata or a ``.json`` sidecar;
- ``--arch package.module:factory`` for the user's own architecture code.

Reading the file's bytes safely is :mod:`~mmdeploy.models.checkpoint_files`; this module chooses the architecture
(and whether its code may run: :mod:`~mmdeploy.models.trust`), checks the weights and loads them strictly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from mmdeploy.bundle.files import sha256_file
from mmdeploy.errors import MMDeployError
from mmdeploy.models.checkpoint_files import read_checkpoint_file
from mmdeploy.models.registry import arch_info, create_model
from mmdeploy.models.trust import authorize_arch, check_user_kwargs, note_user_arch


@dataclass
class LoadedCheckpoint:
    path: Path
    sha256: str
    format: str  # "reference-dict", "state-dict", "safetensors"
    arch: str
    arch_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    config: dict = field(default_factory=dict)  # the checkpoint's own config (regime, ...), as recorded
    meta: dict = field(default_factory=dict)  # epoch, best_prec1, preprocess, training_size, ...

    @property
    def dataset(self) -> str:
        return arch_info(self.arch).dataset

    def build(self) -> nn.Module:
        """The model with these weights, loaded strictly, in eval mode."""
        model = create_model(self.arch, **self.arch_kwargs)
        load_state_strict(model, self.state_dict, f"{self.path.name} into {self.arch}")
        return model.eval()


def load_state_strict(model: nn.Module, state: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the missing and unexpected keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{name} {len(keys)}: {', '.join(keys[:5])}{more}")
        raise MMDeployError(f"keys do not match loading {what}: " + "; ".join(parts), "pass the right --arch (see `mmdeploy archs`)")
    model.load_state_dict(state, strict=True)


def _strip_prefix(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _infer_dataset(state: dict) -> str:
    w = state.get("conv1.weight")
    if w is not None and w.dim() == 4 and w.shape[-1] == 3:
        return "cifar"
    return "imagenet"


def _infer_num_classes(state: dict) -> int | None:
    for key in ("fc.weight", "classifier.1.weight", "classifier.weight", "head.weight"):
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[0])
    return None


def _resolve_arch(name, config: dict, state: dict, dataset: str | None) -> str:
    """Map the reference code's ``model`` + ``config`` (or ``--arch``) to a registry name."""
    if name is None:
        raise MMDeployError("the checkpoint does not say its architecture", "pass --arch NAME (see `mmdeploy archs`)")
    if not isinstance(name, str):
        raise MMDeployError(f"the checkpoint names its architecture with a {type(name).__name__}, not a name", "pass --arch NAME (see `mmdeploy archs`)")
    if name.lower() in ("resnet", "resnet_cifar", "resnet_imagenet"):
        depth = config.get("depth", 18 if _infer_dataset(state) == "imagenet" else 44)
        ds = dataset or config.get("dataset") or _infer_dataset(state)
        if "cifar" in str(ds) or name.lower() == "resnet_cifar":
            return f"cifar_resnet{depth}"
        return f"resnet{depth}"
    if name.lower() in ("mobilenet_v2", "mobilenetv2", "mobilenet2"):
        return "mobilenet_v2"
    return name


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    dataset: str | None = None,
    allow_pickle: bool = False,
    arch_kwargs: dict | None = None,
) -> LoadedCheckpoint:
    """Read any accepted checkpoint format and check it loads strictly into its architecture.

    ``arch_kwargs`` (the user's ``--arch-kwargs``) are the factory's keyword arguments: for your own
    ``module:factory`` they replace any the file records (kwargs reach user code only from the user), for a
    registered architecture they override the file's entries."""
    path = Path(path)
    if not path.exists():
        raise MMDeployError(f"checkpoint {path} does not exist", "check the path")
    if not path.is_file():
        raise MMDeployError(f"checkpoint {path} is not a file", "pass the checkpoint file, not a folder")
    if path.stat().st_size == 0:
        raise MMDeployError(f"checkpoint {path} is empty", "copy the checkpoint again")
    raw = read_checkpoint_file(path, allow_pickle)
    config, meta, mm_origin = raw.config, raw.meta, raw.mm_origin
    state = _strip_prefix({k: v for k, v in raw.state.items() if isinstance(v, torch.Tensor)})
    check_finite(state, path)
    mm = meta.get("mmdeploy", {}) if isinstance(meta.get("mmdeploy"), dict) else {}
    # Where the name and the kwargs come from decides whether code may be imported (mmdeploy.models.trust).
    if arch_kwargs is not None:
        check_user_kwargs(arch_kwargs)
    note_user_arch(arch, arch_kwargs)
    name, source = (arch, None) if arch else (mm["arch"], mm_origin) if mm.get("arch") else (raw.model_name, raw.origin)
    resolved = _resolve_arch(name, config, state, dataset)
    file_kwargs = mm.get("arch_kwargs", {})
    if not isinstance(file_kwargs, dict):
        raise MMDeployError(f"{mm_origin}: arch_kwargs is a {type(file_kwargs).__name__}, not a dict", "architecture kwargs must be a dict of plain values")
    if arch_kwargs is None:
        kwargs, kwargs_source = file_kwargs, mm_origin if file_kwargs else None
    elif ":" in resolved:  # the user's own code gets the user's kwargs only
        kwargs, kwargs_source = dict(arch_kwargs), None
    else:
        kwargs, kwargs_source = {**file_kwargs, **arch_kwargs}, mm_origin if file_kwargs else None
    authorize_arch(resolved, kwargs, source, kwargs_source=kwargs_source)
    info = arch_info(resolved)
    kwargs = dict(kwargs)
    n_classes = _infer_num_classes(state)
    if "num_classes" in kwargs:  # before building: 10**13 classes would ask for petabytes
        _check_num_classes(kwargs["num_classes"], n_classes, mm_origin)
    if n_classes is not None and ":" not in resolved:
        kwargs.setdefault("num_classes", n_classes)
    model = create_model(info.name, **kwargs)
    state, filled = fill_old_bn_buffers(model, state)
    load_state_strict(model, state, f"{path.name} into {info.name}")  # now, so a wrong arch fails here with the key names
    if filled:
        warnings.warn(f"{path.name} was saved by PyTorch < 0.4.1 (no num_batches_tracked in {filled} BatchNorm layers); "
                      "loaded with those counters set to 0", stacklevel=2)
    return LoadedCheckpoint(path, sha256_file(path), raw.format, info.name, kwargs, state, config, meta)


MAX_CLASSES = 1_000_000  # far above any classifier's (ImageNet-21k: 21,841); a bound when the weights do not say


def _check_num_classes(value, from_weights: int | None, origin: str) -> None:
    """A file's ``num_classes`` must be a positive integer, and the width of the classifier in its own weights."""
    hint = "remove num_classes from the file's arch_kwargs (it is read from the classifier's weights)"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASSES:
        raise MMDeployError(f"{origin}: num_classes = {str(value)[:40]} is not a class count (1 to {MAX_CLASSES:,})", hint)
    if from_weights is not None and value != from_weights:
        raise MMDeployError(f"{origin}: num_classes = {value}, but the checkpoint's classifier has {from_weights} outputs", hint)


def fill_old_bn_buffers(model: nn.Module, state: dict) -> tuple[dict, int]:
    """PyTorch < 0.4.1 saved BatchNorm without ``num_batches_tracked``; add it (0, as BatchNorm
    itself does for such state dicts) where the layer's other statistics are present. Returns
    the state and how many layers were filled; every other missing key is left to the strict check."""
    filled = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            prefix = f"{name}." if name else ""
            key = f"{prefix}num_batches_tracked"
            if key not in state and f"{prefix}running_mean" in state and f"{prefix}running_var" in state:
                filled[key] = torch.tensor(0, dtype=torch.long)
    return ({**state, **filled}, len(filled)) if filled else (state, 0)


def check_finite(state: dict, path: Path) -> None:
    """Weights with NaN or Inf give NaN logits everywhere: refuse them, naming the first bad tensor."""
    keys = [k for k, v in state.items() if v.is_floating_point() and v.numel()]
    if not keys:
        return
    # One pass per tensor (min and max carry any NaN or Inf), one sync for all: ~0.2 s for ResNet-50 on 2 cores.
    extremes = torch.stack([t.float() for k in keys for t in state[k].aminmax()]).view(-1, 2)
    ok = torch.isfinite(extremes).all(dim=1)
    if bool(ok.all()):
        return
    for key, good in zip(keys, ok.tolist()):
        if not good:
            value = state[key]
            bad = int((~torch.isfinite(value)).sum())
            raise MMDeployError(f"{path} has {bad} NaN/Inf values in {key} (of {value.numel()})",
                                "the checkpoint is broken (diverged training or a bad conversion); use an earlier or re-saved one")
