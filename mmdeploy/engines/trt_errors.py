"""TensorRT failures turned into one line that says what failed and why, never a native traceback or a bare code.

* ``import tensorrt`` failing because a *native* library is missing (the Python bindings wheel is there,
  ``libnvinfer.so.10`` & co. are not) is not "TensorRT is not installed": name the library.
* ``trt.Builder(logger)`` / ``trt.Runtime(logger)`` whose native factory returns nullptr (TensorRT cannot
  initialise CUDA, no usable driver) raise pybind11's ``TypeError: ... factory function returned nullptr``;
  what TensorRT said about it went to the logger: include that.
"""

from __future__ import annotations

import re
from importlib import metadata

from mmdeploy.errors import MMDeployError

_BINDINGS = ("tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-cu11-bindings", "tensorrt_bindings")
_LIBRARY = re.compile(r"(lib[\w+-]+\.so(?:\.[\w]+)*)")


def _bindings_distribution() -> tuple[str, str] | None:
    """(distribution, version) of the installed TensorRT Python bindings wheel, if pip knows one."""
    for name in _BINDINGS:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def import_problem(exc: BaseException) -> str:
    """One line for a failed ``import tensorrt``: not installed, or installed with a native library missing."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in ("tensorrt", "tensorrt_bindings"):
        return "TensorRT is not installed"
    text = " ".join(str(exc).split())
    library = _LIBRARY.search(text)
    if library:
        why = text.split(": ", 1)[1] if ": " in text else text
        return f"TensorRT's Python bindings are installed but a native library failed to load: {library.group(1)} ({why[:120]})"
    return f"TensorRT fails to import ({type(exc).__name__}: {text[:120]})"


def import_hint(problem: str, default: str) -> str:
    """What to run for ``problem``: the libraries matching the installed bindings, else ``default``."""
    if "native library" not in problem:
        return default
    found = _bindings_distribution()
    if found and found[0].startswith("tensorrt-cu"):
        libs = found[0].replace("-bindings", "-libs")
        return f"install the libraries that match the bindings: pip install '{libs}=={found[1]}' (or put TensorRT's lib/ folder on LD_LIBRARY_PATH)"
    return "install TensorRT's libraries matching the bindings' version (pip install tensorrt, or put TensorRT's lib/ folder on LD_LIBRARY_PATH)"


def create_with_log(factory, logger, what: str):
    """``factory(logger)`` (``trt.Builder``, ``trt.Runtime``); a nullptr from TensorRT becomes one line quoting its logger."""
    try:
        return factory(logger)
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        said = "; ".join(" ".join(m.split()) for m in getattr(logger, "errors", [])[-2:]) or "TensorRT logged nothing"
        raise MMDeployError(f"TensorRT could not create its {what} (the native factory returned nullptr): {said}",
                            "check the GPU and driver (nvidia-smi), CUDA_VISIBLE_DEVICES, and that TensorRT's CUDA version suits the driver; "
                            "MMDEPLOY_DEBUG=1 shows the traceback") from None
