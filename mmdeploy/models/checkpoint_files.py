"""The bytes of a checkpoint file, read safely: a torch file with weights-only unpickling (arbitrary unpickling only when
asked, and loudly), safetensors with its metadata and ``.json`` sidecar, and config strings parsed as literals (never
evaluated). :mod:`mmdeploy.models.checkpoint` turns what is read here into a model.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from mmdeploy.errors import MMDeployError

_UNSAFE_HINT = "re-save it as a plain state_dict or safetensors, or pass --unsafe-allow-pickle if you trust its author"


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, before any architecture is chosen: tensors, names and metadata, each as read."""

    state: dict  # name -> value as stored (the caller keeps the tensors)
    format: str  # "reference-dict", "state-dict", "safetensors"
    model_name: str | None  # the architecture the file names (the reference dict's ``model``, the metadata's ``arch``)
    config: dict  # the reference code's config, parsed as a literal
    meta: dict  # epoch, best_prec1 and the ``mmdeploy`` section (parsed), the safetensors metadata and sidecar
    origin: str  # where the architecture's name was read, for the trust check's messages
    mm_origin: str  # where the ``mmdeploy`` section was read


def read_checkpoint_file(path: Path, allow_pickle: bool = False) -> RawCheckpoint:
    """The contents of any accepted format; never unpickles unless ``allow_pickle`` (and warns when it does)."""
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
    return RawCheckpoint(state, fmt, model_name, config, meta, origin, mm_origin)


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
                  stacklevel=4)
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
