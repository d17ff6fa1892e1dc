"""Checkpoint I/O: every accepted format in, one ``LoadedCheckpoint`` out. Never unpickles by default.

Accepted (README, "Checkpoints accepted"):
- the reference code's dict: ``model`` (e.g. "resnet"), ``config`` (a *string* parsed with
  ``ast.literal_eval``), ``state_dict``, ``epoch``, ``best_prec1``, ...;
- a plain state_dict, or ``{"state_dict": ...}``, with ``--arch``; ``module.`` prefixes stripped;
- safetensors, with arch/config in its metadata or a ``.json`` sidecar;
- ``--arch package.module:factory`` for the user's own architecture code.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from mmdeploy.bundle.files import sha256_file
from mmdeploy.errors import MMDeployError
from mmdeploy.models.registry import arch_info, create_model
from mmdeploy.models.trust import authorize_arch, check_user_kwargs, note_user_arch

_UNSAFE_HINT = "re-save it as a plain state_dict or safetensors, or pass --unsafe-allow-pickle if you trust its author"


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


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < (1 << 30)


def _read_torch(path: Path, allow_pickle: bool):
    with open(path, "rb") as f:
        head = f.read(2)
    is_zip, is_pickle = head == b"PK", head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    if not (is_zip or is_pickle):  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise MMDeployError(f"{path} is not a checkpoint (neither a PyTorch file nor safetensors)", "pass a .pth/.pt file written by torch.save, or a .safetensors file")
    if is_zip and not zipfile.is_zipfile(path):
        raise MMDeployError(f"{path} is truncated or corrupt (its zip archive has no central directory)", "copy the checkpoint again; its sha256 should match the source")
    try:
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = _refused_global(str(exc))
            if refused is None:
                raise MMDeployError(f"{path} is truncated or corrupt (its pickle cannot be read)",
                                    "copy the checkpoint again; its sha256 should match the source") from None
            name, blocked_module = refused
            if not allow_pickle:
                raise _unsafe_error(path, name, blocked_module) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise MMDeployError(f"{path} is truncated or corrupt ({_first_line(exc)})", "copy the checkpoint again; its sha256 should match the source") from None
    # Only a file that needs it is unpickled without limits, and never silently (it may come from a run config's
    # unsafe_allow_pickle as well as the flag, so the warning names neither as "given").
    warnings.warn(f"unpickling {path} with arbitrary code allowed, as asked (it needs {name}): whatever its author put in it runs now",
                  stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the file's own classes and functions run here: any failure is theirs
        raise MMDeployError(f"{path} could not be unpickled ({type(exc).__name__}: {_first_line(exc)})",
                            "the code its pickle names must be importable here; or re-save it as a plain state_dict or safetensors") from None


def _refused_global(text: str) -> tuple[str, str | None] | None:
    """From torch's weights-only refusal: the global it refused and, if torch blocks its module outright (os, posix,
    subprocess, ...: it could run commands), that module. None: the pickle is broken, not unsafe."""
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+?)\.? is blocked", text)
    if blocked:
        return blocked.group(1), blocked.group(2)
    other = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    return (other.group(1), None) if other else None


def _unsafe_error(path: Path, name: str, blocked_module: str | None) -> MMDeployError:
    if blocked_module:  # no hint offers to load it anyway
        return MMDeployError(f"{path} was refused as unsafe: its pickle references {name} (module {blocked_module} can run commands), "
                             "so it was not loaded",
                             "a checkpoint needs only tensors and plain data: do not use this file; ask its author for a plain state_dict "
                             "or safetensors (--unsafe-allow-pickle would run that code)")
    return MMDeployError(f"{path} was refused as unsafe: it needs arbitrary unpickling to load ({name})", _UNSAFE_HINT)


def _numpy_scalar_globals() -> list:
    """Training scripts often save ``best_prec1`` as a numpy scalar. Rebuilding a numeric numpy
    scalar from its dtype and bytes runs no code, so weights-only loading may allow it (not arrays,
    not object dtypes)."""
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import scalar
    except ImportError:
        return []
    names = ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")
    return [scalar, np.dtype, *(getattr(np.dtypes, n) for n in names if hasattr(getattr(np, "dtypes", None), n))]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _read_safetensors(path: Path) -> tuple[dict, dict, str]:
    """(tensors, metadata merged with the sidecar, which file the architecture was read from)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MMDeployError(f"{path} is a truncated or corrupt safetensors file ({_first_line(exc)})", "copy the file again") from None
    sidecar = path.with_suffix(".json")
    origin = f"the safetensors metadata of {path}"
    if sidecar.exists():
        try:
            side = json.loads(sidecar.read_text())
        except (ValueError, RecursionError) as exc:  # also an undecodable file, a 5,000-digit integer, deep nesting
            raise MMDeployError(f"sidecar {sidecar} is not valid JSON ({_first_line(exc)[:100]})", "fix or delete the sidecar") from None
        if not isinstance(side, dict):
            raise MMDeployError(f"sidecar {sidecar} is not a JSON object", "fix or delete the sidecar")
        meta.update(side)
        if any(k in side for k in ("arch", "model", "mmdeploy")):
            origin = f"sidecar {sidecar}"
    for key in ("config", "mmdeploy"):
        if isinstance(meta.get(key), str):
            meta[key] = _parse_config(meta[key], path, key)
    return state, meta, origin


MAX_CONFIG_CHARS = 20_000  # a model config is a few dozen keys; parsing a huge string exhausts memory (MemoryError)


def _parse_config(text, path: Path, entry: str = "config") -> dict:
    """A dict, or the string of one (``entry``: which entry of the file it is, for the errors)."""
    if isinstance(text, dict):
        return text
    if not text:
        return {}
    hint = f"the {entry} must be a short literal dict like \"{{'depth': 44}}\""
    if not isinstance(text, str):
        raise MMDeployError(f"{path}: {entry} is a {type(text).__name__}, not a string or dict", hint)
    if len(text) > MAX_CONFIG_CHARS:
        raise MMDeployError(f"{path}: the {entry} string has {len(text):,} characters (at most {MAX_CONFIG_CHARS:,} are read)", hint)
    try:
        value = ast.literal_eval(text)  # the reference code stores the --model-config string; never eval()
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError, an over-long integer, deep nesting
            raise MMDeployError(f"{path}: {entry} {text[:80]!r} is not a literal dict", hint) from None
    if not isinstance(value, dict):
        raise MMDeployError(f"{path}: {entry} {text[:80]!r} is not a dict", hint)
    return value


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
    meta: dict = {}
    if _is_safetensors(path):
        state, meta, origin = _read_safetensors(path)
        fmt, model_name, config = "safetensors", meta.get("arch") or meta.get("model"), meta.get("config", {})
        mm_origin = origin
    else:
        origin, mm_origin = f"the 'model' entry of {path}", f"the 'mmdeploy' entry of {path}"
        obj = _read_torch(path, allow_pickle)
        if isinstance(obj, nn.Module):  # only reachable with --unsafe-allow-pickle
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            raise MMDeployError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict", "save model.state_dict() or the reference dict")
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            state = obj["state_dict"]
            fmt = "reference-dict" if "model" in obj else "state-dict"
            model_name = obj.get("model") if isinstance(obj.get("model"), str) else None
            config = _parse_config(obj.get("config") or {}, path)
            meta = {k: obj[k] for k in ("epoch", "best_prec1") if k in obj}
            if isinstance(obj.get("mmdeploy"), (dict, str)):
                meta["mmdeploy"] = _parse_config(obj["mmdeploy"], path, "mmdeploy")
        elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state, fmt, model_name, config = obj, "state-dict", None, {}
        else:
            raise MMDeployError(f"{path} has no state_dict (keys: {', '.join(map(str, list(obj)[:6]))})", "save model.state_dict() or the reference dict")
    state = _strip_prefix({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    _check_finite(state, path)
    mm = meta.get("mmdeploy", {}) if isinstance(meta.get("mmdeploy"), dict) else {}
    # Where the name and the kwargs come from decides whether code may be imported (mmdeploy.models.trust).
    if arch_kwargs is not None:
        check_user_kwargs(arch_kwargs)
    note_user_arch(arch, arch_kwargs)
    name, source = (arch, None) if arch else (mm["arch"], mm_origin) if mm.get("arch") else (model_name, origin)
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
    return LoadedCheckpoint(path, sha256_file(path), fmt, info.name, kwargs, state, config, meta)


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


def _check_finite(state: dict, path: Path) -> None:
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
