"""Record the Python API of a TensorRT bindings wheel (names, enum values, pybind11 signatures) as JSON.

Run by ``regenerate.sh`` beside this file, which downloads the wheels and gives the bindings stand-in
native libraries so that they import on a machine without TensorRT or a GPU. Only the pybind11 module's
own metadata is read: class and enum members, property names and the signature line(s) of every
docstring. Usage: ``python record_tensorrt_api.py PACKAGE_DIR OUT.json`` (PACKAGE_DIR holds tensorrt_bindings/).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys

_SIG = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\)(?: -> (.+))?$")


def _split_top_level(text: str) -> list[str]:
    """Split a parameter list at the commas that are not inside brackets or a default's <...>."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _signatures(name: str, doc: str | None) -> list[dict]:
    """The overloads pybind11 wrote at the top of ``doc``: parameter names (defaulted or not) and return type."""
    sigs = []
    for line in (doc or "").splitlines():
        match = _SIG.match(line.strip())
        if not match or match.group(1) != name:
            continue
        params = []
        for part in _split_top_level(match.group(2)):
            pname = part.split(":", 1)[0].split("=", 1)[0].strip()
            params.append([pname, "=" in part])
        sigs.append({"params": params, "returns": (match.group(3) or "").replace("tensorrt_bindings.tensorrt.", "")})
    return sigs


def _enum_members(obj) -> dict[str, int]:
    return {k: int(v) for k, v in obj.__members__.items()}


def _describe_class(cls) -> dict:
    info = {"methods": {}, "properties": [], "enums": {}}
    for attr, value in sorted(vars(cls).items()):
        if attr.startswith("__") and attr != "__init__":
            continue
        if isinstance(value, property):
            info["properties"].append(attr)
        elif inspect.isclass(value) and hasattr(value, "__members__"):
            info["enums"][attr] = _enum_members(value)
        elif callable(value) or type(value).__name__ == "instancemethod":
            info["methods"][attr] = _signatures(attr, getattr(value, "__doc__", None))
    return info


def record(package_dir: str) -> dict:
    sys.path.insert(0, package_dir)
    trt = importlib.import_module("tensorrt_bindings")
    api = {"version": trt.__version__, "enums": {}, "classes": {}, "functions": {}, "other": []}
    for name, value in sorted(vars(trt).items()):
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if inspect.isclass(value) and hasattr(value, "__members__"):
            api["enums"][name] = _enum_members(value)
        elif inspect.isclass(value):
            api["classes"][name] = _describe_class(value)
        elif callable(value):
            api["functions"][name] = _signatures(name, getattr(value, "__doc__", None))
        else:
            api["other"].append(name)
    return api


if __name__ == "__main__":
    package_dir, out = sys.argv[1], sys.argv[2]
    with open(out, "w") as f:
        json.dump(record(package_dir), f, indent=0, sort_keys=True)
        f.write("\n")
