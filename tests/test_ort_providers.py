"""ONNX Runtime builds and providers: a mixed onnxruntime/onnxruntime-gpu install is
named with its fix; a GPU provider that cannot load is dropped after one probe whose native stderr is
captured, and said once in one line; ``describe()`` reports the device that really runs."""

from __future__ import annotations

import os
import sys
import types
import warnings
from importlib import metadata

import pytest

from mmdeploy.engines import ort_providers
from mmdeploy.engines.onnxruntime import OrtEngine, choose_providers, ort_unavailable_reason
from mmdeploy.engines.ort_providers import (
    CPU,
    installed_ort_distributions,
    mixed_install_problem,
    usable_providers,
)

CUDA = "CUDAExecutionProvider"


@pytest.fixture(autouse=True)
def fresh_probe():
    usable_providers.cache_clear()
    yield
    usable_providers.cache_clear()


def test_mixed_install_is_named_with_the_fix():
    line = mixed_install_problem(["onnxruntime", "onnxruntime-gpu"], [CPU])
    assert "onnxruntime and onnxruntime-gpu are both installed" in line and "providers CPUExecutionProvider" in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in line and "\n" not in line
    assert mixed_install_problem(["onnxruntime-gpu"]) == "" and mixed_install_problem([]) == ""


def test_distributions_are_read_from_pip_metadata(monkeypatch):
    assert "onnxruntime" in installed_ort_distributions()  # this environment's own install

    def fake_distribution(name):
        if name in ("onnxruntime", "onnxruntime-gpu"):
            return object()
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ort_providers.metadata, "distribution", fake_distribution)
    assert installed_ort_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    assert "both installed" in mixed_install_problem()


def _fake_ort(loads: bool, native_log: bytes = b""):
    """An onnxruntime stand-in whose GPU build lists CUDA; its sessions write native logs to fd 2 like the real one."""

    class Session:
        def __init__(self, model, sess_options=None, providers=()):
            if native_log:
                os.write(2, native_log)
            first = providers[0] if isinstance(providers[0], str) else providers[0][0]
            self._providers = [first, CPU] if (loads and first == CUDA) else [CPU]

        def get_providers(self):
            return self._providers

    calls = []
    return types.SimpleNamespace(
        get_available_providers=lambda: ["TensorrtExecutionProvider", CUDA, CPU],
        SessionOptions=lambda: types.SimpleNamespace(log_severity_level=2),
        InferenceSession=Session,
        set_default_logger_severity=lambda level: calls.append(level),
        severity_calls=calls,
    )


NATIVE = (b"\x1b[1;31m2026-11-30 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] [ONNXRuntimeError] : 1 : FAIL : "
          b"Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: "
          b"No such file or directory\n\x1b[m\n[W:onnxruntime:Default] Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*.\n")


def test_provider_that_cannot_load_is_dropped_silently_and_said_once(monkeypatch, capfd):
    fake = _fake_ort(loads=False, native_log=NATIVE)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime-gpu"])
    with pytest.warns(UserWarning) as seen:
        choice = usable_providers((CUDA, CPU))
    assert choice.providers == (CPU,) and set(choice.failed) == {CUDA}
    assert len(seen) == 1 and str(seen[0].message) == choice.note
    assert choice.note == ("ONNX Runtime runs on CPUExecutionProvider (CUDAExecutionProvider did not load: "
                           "libcublasLt.so.13: cannot open shared object file: No such file or directory)")
    assert capfd.readouterr().err == "", "ONNX Runtime's native multi-line log is captured, not shown"
    assert fake.severity_calls == [3]  # later sessions log errors only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call is answered from the probe
        assert usable_providers((CUDA, CPU)).providers == (CPU,)


def test_provider_that_loads_is_kept_without_a_word(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(loads=True))
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime-gpu"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = usable_providers((CUDA, CPU))
    assert choice.providers == (CUDA, CPU) and choice.note == ""


def test_mixed_install_is_said_with_the_providers_that_won(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(loads=True))
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.warns(UserWarning, match="both installed.*pip uninstall -y onnxruntime onnxruntime-gpu"):
        usable_providers((CPU,))


def test_real_cpu_build_asked_for_cuda_runs_on_cpu_and_describe_agrees(monkeypatch, tmp_path):
    """The real onnxruntime (CPU build here) told it has CUDA: the probe finds out, the engine reports cpu throughout."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real()])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["logits"], axes=[2, 3], keepdims=0)], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.warns(UserWarning, match="runs on CPUExecutionProvider .CUDAExecutionProvider did not load"):
        assert choose_providers() == [CPU]
    engine = OrtEngine(tmp_path / "m.onnx", 8)
    before = engine.describe()
    with engine:
        after = engine.describe()
    assert (before["device"], before["provider"]) == (after["device"], after["provider"]) == ("cpu", CPU)


def test_broken_import_names_the_installed_build_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: [])
    assert ort_unavailable_reason().startswith("onnxruntime is not installed")
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime-gpu"])
    reason = ort_unavailable_reason()
    assert reason.startswith("onnxruntime-gpu is installed but does not import (ModuleNotFoundError") and "--force-reinstall onnxruntime-gpu" in reason
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    assert "both installed" in ort_unavailable_reason() and "\n" not in ort_unavailable_reason()


def test_a_build_that_raises_instead_of_falling_back_is_reported_with_its_message(monkeypatch):
    fake = _fake_ort(loads=False)

    def raising(model, sess_options=None, providers=()):
        if providers[0] == CUDA:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0")
        return types.SimpleNamespace(get_providers=lambda: [CPU])

    fake.InferenceSession = raising
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(ort_providers, "installed_ort_distributions", lambda: ["onnxruntime-gpu"])
    with pytest.warns(UserWarning, match=r"CUDAExecutionProvider did not load: CUDA failure 100: no CUDA-capable device is detected\)"):
        assert usable_providers((CUDA, CPU)).providers == (CPU,)
