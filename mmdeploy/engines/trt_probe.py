"""What TensorRT is here: one probe shared by the plan builder (export/tensorrt.py) and the runtime (engines/tensorrt.py).

* availability: ``trt_unavailable_reason()`` says in one line what is missing (TensorRT, a new enough one, a
  CUDA GPU) and how to fix it; ``import_trt()`` / ``require_trt_engine()`` raise that as an ``MMDeployError``;
* identity: ``trt_versions()`` is the record stored with every plan (TensorRT, CUDA, driver, GPU), and
  ``trt_identity()`` the short form a plan's reuse key holds (a plan only runs where both match);
* ``make_logger()``: the TensorRT logger both sides hand to ``Builder``/``Runtime`` (errors kept for the message).

``tensorrt`` is imported lazily: this module imports without it.
"""

from __future__ import annotations

import logging

import torch

from mmdeploy.engines.trt_errors import import_hint, import_problem
from mmdeploy.errors import MMDeployError

MIN_TRT_MAJOR = 10
_INSTALL_HINT = "pip install 'mmdeploy-mixsize[trt]' on a machine with an NVIDIA GPU"
_log = logging.getLogger("mmdeploy.trt")


# -- availability ----------------------------------------------------------------------------
def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _trt_import_problem() -> str:
    """"" if ``import tensorrt`` works and is new enough, else what is wrong with it."""
    try:
        import tensorrt as trt
    except Exception as exc:  # not installed, or the bindings without their native libraries (ImportError, OSError)
        return import_problem(exc)
    major = _major(getattr(trt, "__version__", "0"))
    if major < MIN_TRT_MAJOR:
        return f"TensorRT {trt.__version__} is too old (need >= {MIN_TRT_MAJOR})"
    return ""


def _missing() -> tuple[str, str]:
    """(what is missing, how to fix it); ("", "") when the ``trt`` engine can run here."""
    trt_problem = _trt_import_problem()
    gpu_problem = "" if _cuda_available() else "no CUDA GPU is visible to PyTorch"
    if trt_problem:
        return " and ".join(p for p in (trt_problem, gpu_problem) if p), import_hint(trt_problem, _INSTALL_HINT)
    if gpu_problem:
        return gpu_problem, f"run on a machine with an NVIDIA GPU and a CUDA build of PyTorch (this one is {torch.__version__}, CUDA {torch.version.cuda or 'none'})"
    return "", ""


def trt_unavailable_reason() -> str:
    """"" if the ``trt`` engine can run here, else one line saying what is missing and how to fix it."""
    problem, fix = _missing()
    return f"{problem} ({fix})" if problem else ""


def require_trt_engine() -> None:
    problem, fix = _missing()
    if problem:
        raise MMDeployError(f"the trt engine is unavailable: {problem}", fix)


def import_trt():
    """The ``tensorrt`` module, or one line saying why it cannot be used here."""
    problem = _trt_import_problem()
    if problem:
        raise MMDeployError(f"the trt engine is unavailable: {problem}", import_hint(problem, _INSTALL_HINT))
    import tensorrt as trt

    return trt


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def make_logger(trt):
    """A TensorRT logger that keeps errors (for the exception) and sends warnings to logging."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(str(msg))
            elif severity == sev.WARNING:
                _log.warning("TensorRT: %s", msg)
            else:
                _log.debug("TensorRT: %s", msg)

    return _Logger()


# -- identity --------------------------------------------------------------------------------
def _gpu() -> tuple[str | None, str | None]:
    """(name, compute capability) of torch's current GPU, or (None, None) without a usable one."""
    if not _cuda_available():
        return None, None
    try:
        return torch.cuda.get_device_name(), "{}.{}".format(*torch.cuda.get_device_capability())
    except Exception:  # a broken driver still lets the build record and the reuse key be written
        return None, None


def trt_versions(trt=None) -> dict:
    """TensorRT, CUDA and GPU identity, recorded with every plan (a plan only runs where these match)."""
    info = {"tensorrt": getattr(trt, "__version__", None), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cuda_driver": None, "gpu": None, "compute_capability": None}
    info["gpu"], info["compute_capability"] = _gpu()
    try:
        import pynvml  # nvidia-ml-py: the only public way to the driver release (e.g. 580.159)

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["cuda_driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    return info


def trt_identity() -> str:
    """What a plan is only valid for, as one string for its reuse key: ``"<TensorRT version>/<GPU model>"``."""
    try:
        import tensorrt

        version = tensorrt.__version__
    except Exception:  # not installed or broken: only reached with a stand-in builder (tests)
        version = "none"
    return f"{version}/{_gpu()[0] or 'no-gpu'}"
