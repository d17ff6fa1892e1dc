"""Which ONNX Runtime is installed and which of its providers really work here, said once, in one line.

Two traps this module exists for:

* ``onnxruntime`` and ``onnxruntime-gpu`` install into the same ``onnxruntime/`` folder. With both
  installed, whichever pip wrote last wins, silently (a "GPU" install that has CPU providers only),
  and uninstalling one breaks the other. ``mixed_install_problem`` names that state and the fix.
* onnxruntime-gpu lists ``CUDAExecutionProvider`` even where CUDA/cuDNN libraries are missing; each
  session then prints ONNX Runtime's native multi-line errors to stderr and quietly runs on the CPU.
  ``usable_providers`` probes each GPU provider once per process on a one-node graph with native
  stderr captured, keeps only those that really load, and says in one line which provider is used
  and why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata

# Distributions that provide the ``onnxruntime`` import package (each a different build).
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"
_GPU_SWAP = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
_CPU_SWAP = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime"


def installed_ort_distributions() -> list[str]:
    """The ONNX Runtime distributions pip has installed in this environment (by their metadata, not by import)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def mixed_install_problem(distributions: list[str] | None = None, providers: list[str] | None = None) -> str:
    """"" unless several ONNX Runtime builds share the ``onnxruntime/`` folder; then one line saying what to run."""
    dists = installed_ort_distributions() if distributions is None else distributions
    if len(dists) < 2:
        return ""
    seen = f" (the build that won has providers {', '.join(providers)})" if providers else ""
    return (f"{' and '.join(dists)} are both installed: they share one onnxruntime/ folder and the last one installed wins{seen}; "
            f"keep one: `{_GPU_SWAP}` on a CUDA machine, else `{_CPU_SWAP}`")


@dataclass(frozen=True)
class ProviderChoice:
    """The providers that load here, best first, and the one line that explains the choice."""

    providers: tuple[str, ...]
    note: str  # "" when nothing needs saying (a CPU build on a CPU machine, or the GPU provider loaded)
    failed: dict  # provider -> why it did not load


class _CapturedStderr:
    text = ""


@contextlib.contextmanager
def captured_native_stderr():
    """Capture file descriptor 2 (where ONNX Runtime's C++ logger writes), not just ``sys.stderr``."""
    holder = _CapturedStderr()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield holder
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            holder.text = tmp.read().decode(errors="replace")


def _probe_graph() -> bytes:
    """A one-node ONNX graph (Relu on a float vector): enough for a provider to load its library."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project accepts
    return model.SerializeToString()


_REASON_PATTERNS = (
    re.compile(r"with error: ([^\n\x1b]+)"),  # Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open ...
    re.compile(r"(CUDA failure \d+: [^\n\x1b;]+)"),
    re.compile(r"(Require cuDNN [^.]+\.\* and CUDA [^.]+\.\*)"),
)


def _reason(text: str) -> str:
    """The most useful fragment of ONNX Runtime's native log (a missing library beats generic advice)."""
    for pattern in _REASON_PATTERNS:
        match = pattern.search(text)
        if match:
            return " ".join(match.group(1).split())[:160]
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    return lines[0][:160] if lines else "ONNX Runtime gave no reason"


def _probe(ort, provider: str) -> str:
    """"" if ``provider`` creates a session here, else why not (ONNX Runtime falls back to the CPU instead of raising)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    raised = ""
    with captured_native_stderr() as err, warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(_probe_graph(), sess_options=so, providers=[provider, CPU])
            got = session.get_providers()[0]
        except Exception as exc:  # noqa: BLE001  some builds raise instead of falling back
            got, raised = CPU, str(exc)
    if got == provider:
        return ""
    return _reason("\n".join([err.text, raised, *(str(w.message) for w in python_warnings)]))


@functools.cache
def usable_providers(wanted: tuple[str, ...]) -> ProviderChoice:
    """Of ``wanted`` (best first), those that load here; probed once per process, the finding said once."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    listed = [p for p in wanted if p in have]
    failed = {}
    for provider in [p for p in listed if p in GPU_PROVIDERS]:
        why = _probe(ort, provider)
        if why:
            failed[provider] = why
    chosen = tuple(p for p in listed if p not in failed) or (CPU,)
    # Sessions made later must not repeat native warnings the probe has already summed up.
    ort.set_default_logger_severity(3)
    notes = []
    if failed:
        reasons = "; ".join(f"{p} did not load: {why}" for p, why in failed.items())
        notes.append(f"ONNX Runtime runs on {chosen[0]} ({reasons})")
    mixed = mixed_install_problem(providers=sorted(have))
    if mixed:
        notes.append(mixed)
    note = "; ".join(notes)
    if note:
        warnings.warn(note, stacklevel=2)
    return ProviderChoice(chosen, note, failed)
