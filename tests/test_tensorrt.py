"""The TensorRT engine: pure planning on the CPU, the TensorRT call sequence against a fake
``tensorrt`` module, and real builds where TensorRT and a GPU exist (marked ``trt``).

The fake module (``fake_tensorrt.py``) has TensorRT 10/11's real names, enum values and
signatures and nothing else (``test_tensorrt_api.py`` checks it against the recorded real API):
a call to a removed or misspelled API (``EXPLICIT_BATCH`` or ``BuilderFlag.FP16`` on 11) fails
the test. Its "kernel" reads and writes the bound memory through the array interfaces, so the
engine's pointer, shape, dtype and profile handling is checked for real, on the CPU and
(``gpu`` mark) on a CUDA device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_tensorrt import SIZE, FakeTrt, fake_kernel  # tests/ is on sys.path (rootdir conftest)

import mmdeploy.engines.trt_probe as trt_probe
import mmdeploy.export.tensorrt as trt_build
from mmdeploy.bundle import Bundle
from mmdeploy.engines import InputMeta
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.tensorrt import TrtEngine
from mmdeploy.engines.trt_probe import trt_unavailable_reason
from mmdeploy.errors import MMDeployError
from mmdeploy.export.tensorrt import (
    TIMING_CACHE,
    TrtBuildOptions,
    build_bundle_plan,
    build_settings,
    build_trt_plan,
    derive_profiles,
    plan_filename,
)

REAL_TRT_REASON = trt_unavailable_reason()  # evaluated before any test injects a fake module
needs_trt = pytest.mark.skipif(bool(REAL_TRT_REASON), reason=f"needs TensorRT and a CUDA GPU: {REAL_TRT_REASON}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- pure planning ----------------------------------------------------------------------------
def test_static_profiles_are_min_opt_max_per_batch():
    profiles = derive_profiles("images", 24, (32, 1, 32), dynamic=False, max_dynamic_size=None)
    assert [p.min for p in profiles] == [(1, 3, 24, 24), (32, 3, 24, 24)]
    assert all(p.static and p.min == p.opt == p.max and p.input_name == "images" for p in profiles)


def test_dynamic_profile_covers_batches_and_is_last():
    *static, dyn = derive_profiles("images", 24, (1, 32), dynamic=True, max_dynamic_size=None)
    assert [p.min[0] for p in static] == [1, 32]
    assert (dyn.min, dyn.opt, dyn.max) == ((1, 3, 24, 24), (32, 3, 24, 24), (32, 3, 24, 24))
    assert not dyn.static and dyn.accepts((7, 3, 24, 24)) and not dyn.accepts((33, 3, 24, 24)) and not dyn.accepts((7, 3, 32, 32))


def test_dynamic_profile_with_a_size_range():
    dyn = derive_profiles("x", 24, (1, 8), dynamic=True, max_dynamic_size=48, channels=1, min_dynamic_size=16)[-1]
    assert (dyn.min, dyn.opt, dyn.max) == ((1, 1, 16, 16), (8, 1, 24, 24), (8, 1, 48, 48))
    with pytest.raises(MMDeployError, match="must contain the deployment size"):
        derive_profiles("x", 64, (1,), dynamic=True, max_dynamic_size=48)


def test_dynamic_profile_that_equals_a_static_one_is_not_repeated():
    assert len(derive_profiles("x", 24, (1,), dynamic=True, max_dynamic_size=None)) == 1


@pytest.mark.parametrize("batches", [(), (0, 4), (-1,)])
def test_bad_batch_sizes_are_user_errors(batches):
    with pytest.raises(MMDeployError, match="batch sizes"):
        derive_profiles("x", 24, batches)


def test_plan_names():
    assert plan_filename(160, "fp16") == "sizes/160/model.fp16.plan"
    assert plan_filename(24, "fp32", batch=32) == "sizes/24/model.fp32.b32.plan"
    assert plan_filename(24, "int8") == "sizes/24/model.int8.plan"
    with pytest.raises(MMDeployError, match="bf16"):
        plan_filename(24, "bf16")


def test_build_settings_record():
    s = build_settings("images", 32, "fp16", TrtBuildOptions((32, 1), dynamic=True, workspace_gb=0.5, timing_cache=Path("trt/timing.cache")))
    assert s["workspace_bytes"] == 512 << 20
    assert s["precision"] == "fp16" and s["strongly_typed"] is True and s["precision_source"] == "graph"
    assert s["batch_sizes"] == [1, 32] and s["dynamic"] is True and s["tf32"] is False
    assert s["profiles"][0] == {"input": "images", "min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [1, 3, 32, 32]}
    assert s["profiles"][-1]["max"] == [32, 3, 32, 32] and len(s["profiles"]) == 3
    assert s["timing_cache"] == "trt/timing.cache"
    json.dumps(s)  # goes into the manifest as is
    with pytest.raises(MMDeployError, match="workspace"):
        build_settings("images", 32, "fp32", TrtBuildOptions(workspace_gb=0))


# -- availability ---------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_TRT_REASON, reason="TensorRT and a GPU are present here")
def test_unavailable_reason_says_what_is_missing():
    reason = trt_unavailable_reason()
    assert reason and "\n" not in reason
    if "tensorrt" not in sys.modules:
        assert "TensorRT is not installed" in reason and "mmdeploy-mixsize[trt]" in reason
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in reason


def test_unavailable_reason_names_only_the_gpu_when_tensorrt_imports(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt().module)
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: False)
    reason = trt_unavailable_reason()
    assert reason.startswith("no CUDA GPU") and "TensorRT" not in reason.split(" (")[0]
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: True)
    assert trt_unavailable_reason() == ""


def test_plan_record_and_reuse_key_name_the_same_tensorrt_and_gpu(monkeypatch):
    """One probe (engines/trt_probe.py) feeds both the build record and the plan's reuse key."""
    fake = FakeTrt(version="10.13.0").module
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: False)
    assert trt_probe.trt_identity() == "10.13.0/no-gpu" and trt_probe.trt_versions(fake)["gpu"] is None
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    versions = trt_probe.trt_versions(fake)
    assert trt_probe.trt_identity() == "10.13.0/NVIDIA H200"
    assert (versions["tensorrt"], versions["gpu"], versions["compute_capability"]) == ("10.13.0", "NVIDIA H200", "9.0")
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.setattr(sys, "path", [])  # no real tensorrt either: the key still has a value
    assert trt_probe.trt_identity() == "none/NVIDIA H200"


def test_old_tensorrt_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt(version="8.6.1").module)
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: True)
    assert "8.6.1 is too old" in trt_unavailable_reason()


def _bundle(root: Path, artifacts: dict | None = None) -> Bundle:
    manifest = {"schema": "mmdeploy.bundle", "schema_version": 1, "source": {}, "preprocess": {}, "sizes": {str(SIZE): {"artifacts": artifacts or {}}}}
    return Bundle(root, manifest)


def test_missing_plan_is_a_one_line_error_with_a_hint(tmp_path):
    with pytest.raises(MMDeployError) as info:
        load_engine(_bundle(tmp_path), "trt", SIZE, "fp16")
    err = info.value
    assert "no TensorRT fp16 plan for size 16" in err.message and "--engine trt" in err.hint
    assert "\n" not in err.one_line()


def test_recorded_plan_whose_file_is_gone_is_missing(tmp_path):
    bundle = _bundle(tmp_path, {"trt/fp32": {"plan": "sizes/16/model.fp32.plan", "profiles": [1]}})
    with pytest.raises(MMDeployError, match="no TensorRT fp32 plan"):
        load_engine(bundle, "trt", SIZE, "fp32")


@pytest.mark.skipif(not REAL_TRT_REASON, reason="TensorRT and a GPU are present here")
def test_plan_without_tensorrt_says_why(tmp_path):
    (tmp_path / "sizes/16").mkdir(parents=True)
    (tmp_path / "sizes/16/model.fp32.plan").write_bytes(b"plan")
    bundle = _bundle(tmp_path, {"trt/fp32": {"plan": "sizes/16/model.fp32.plan", "profiles": [1]}})
    with pytest.raises(MMDeployError, match="trt engine is unavailable") as info:
        load_engine(bundle, "trt", SIZE, "fp32")
    assert "\n" not in info.value.one_line()


# -- the fake tensorrt (tests/fake_tensorrt.py, checked against the real API by test_tensorrt_api.py) ----
@pytest.fixture
def use_fake(monkeypatch):
    """Install a FakeTrt as ``tensorrt`` with a 'GPU' present; returns a factory taking FakeTrt options."""

    def install(**options) -> FakeTrt:
        fake = FakeTrt(**options)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        monkeypatch.setattr(trt_probe, "_cuda_available", lambda: True)
        return fake

    return install


# -- small ONNX graphs (onnx.helper: no exporter needed for the mocked builds) --------------
def _conv_mean_onnx(path: Path, batch="N") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["y"], ["logits"], axes=[2, 3], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx >= 1.23 writes IR 14 by default, which ONNX Runtime 1.30 cannot read
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _to_fp16(src: Path, dst: Path) -> Path:
    """fp16 inside, fp32 I/O, by ONNX Runtime's converter (as the export step does), without mmdeploy's metadata."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


@pytest.fixture
def onnx32(tmp_path) -> Path:
    return _conv_mean_onnx(tmp_path / "model.onnx")


@pytest.fixture
def onnx16(tmp_path, onnx32) -> Path:
    return _to_fp16(onnx32, tmp_path / "model.fp16.onnx")


def test_graph_precision_is_read_from_the_graph(onnx32, onnx16):
    assert trt_build._graph_precision(onnx32) == "fp32"
    assert trt_build._graph_precision(onnx16) == "fp16"


# -- the build sequence ----------------------------------------------------------------------
def test_build_calls_tensorrt_10_in_order(use_fake, onnx32, tmp_path):
    fake = use_fake()
    plan, cache = tmp_path / "out/sizes/16/model.fp32.plan", tmp_path / "out/trt/timing.cache"
    record = build_trt_plan(onnx32, plan, SIZE, "fp32", TrtBuildOptions(batch_sizes=(1, 32), dynamic=True, workspace_gb=2, timing_cache=cache))

    assert _in_order(fake.names(), ["Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
                                    "set_memory_pool_limit", "create_optimization_profile", "set_shape", "add_optimization_profile",
                                    "create_timing_cache", "set_timing_cache", "build_serialized_network", "get_timing_cache", "serialize"])
    assert fake.args("create_network") == [(1 << 1,)]  # STRONGLY_TYPED, and nothing else
    assert not any(t.endswith("EXPLICIT_BATCH") for t in fake.touched)
    assert fake.args("parse_from_file") == [(str(onnx32),)]
    assert fake.args("set_memory_pool_limit") == [(0, 2 << 30)]  # MemoryPoolType.WORKSPACE
    assert fake.args("clear_flag") == [(6,)]  # TF32 off: an fp32 plan computes in fp32
    assert fake.args("set_flag") == []
    expected = [(p.input_name, p.min, p.opt, p.max) for p in derive_profiles("images", SIZE, (1, 32), True, None)]
    assert fake.args("set_shape") == expected
    assert fake.args("set_timing_cache") == [(b"", False)]

    data = plan.read_bytes()
    assert data.startswith(b"FAKEPLAN")
    assert record["plan_sha256"] == hashlib.sha256(data).hexdigest() and record["plan_bytes"] == len(data)
    assert cache.read_bytes() == b"|tuned"
    assert record["profiles"] == [1, 32] and record["dynamic"] is True
    assert record["settings"]["strongly_typed"] is True and record["settings"]["timing_cache_reused"] is False
    assert record["versions"]["tensorrt"] == "10.13.0"
    assert record["build_seconds"] >= 0
    assert not [p for p in plan.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically, no debris


def _in_order(names: list[str], order: list[str]) -> bool:
    firsts = [names.index(n) for n in order]
    return firsts == sorted(firsts)


def test_fp16_on_tensorrt_11_uses_the_graph_not_a_builder_flag(use_fake, onnx16, tmp_path):
    fake = use_fake(version="11.4.0", fp16_flag=False)
    record = build_trt_plan(onnx16, tmp_path / "p.plan", SIZE, "fp16", TrtBuildOptions(batch_sizes=(8,)))
    assert fake.args("create_network") == [(1 << 0,)]  # STRONGLY_TYPED is 0 in TensorRT 11
    assert fake.args("set_flag") == [] and fake.args("clear_flag") == [(6,)]  # only TF32 off
    assert "BuilderFlag.FP16" not in fake.touched
    assert record["settings"]["precision_source"] == "graph" and "timing_cache_reused" not in record["settings"]


def test_fp16_without_strong_typing_falls_back_to_the_fp16_flag(use_fake, onnx16, tmp_path):
    fake = use_fake(strongly_typed=False)
    record = build_trt_plan(onnx16, tmp_path / "p.plan", SIZE, "fp16", TrtBuildOptions(batch_sizes=(1,)))
    assert fake.args("create_network") == [(0,)]
    assert fake.args("set_flag") == [(0,)]  # BuilderFlag.FP16
    assert record["settings"]["strongly_typed"] is False and record["settings"]["precision_source"] == "builder_flag"


def test_fp16_with_neither_strong_typing_nor_fp16_flag_is_refused(use_fake, onnx16, tmp_path):
    use_fake(strongly_typed=False, fp16_flag=False)
    with pytest.raises(MMDeployError, match="neither strongly typed networks nor the FP16 builder flag"):
        build_trt_plan(onnx16, tmp_path / "p.plan", SIZE, "fp16")
    assert not (tmp_path / "p.plan").exists()


def _qdq(src: Path, dst: Path) -> Path:
    """The export step's INT8 for TensorRT (QDQ, symmetric) of a tiny graph, ranges from random inputs."""
    from mmdeploy.export.quantize import quantize_int8

    rng = np.random.default_rng(0)
    quantize_int8(src, dst, [rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2)], "minmax", symmetric=True)
    return dst


def test_int8_plan_is_built_from_the_qdq_graph_without_precision_flags(use_fake, onnx32, tmp_path):
    import onnx
    from onnx import numpy_helper

    q = _qdq(onnx32, tmp_path / "model.int8.onnx")
    assert trt_build._graph_precision(q) == "int8"
    proto = onnx.load(str(q))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT: symmetric int8 only
    fake = use_fake(version="11.4.0", fp16_flag=False)
    record = build_trt_plan(q, tmp_path / "p.plan", SIZE, "int8", TrtBuildOptions(batch_sizes=(1,)))
    assert fake.args("create_network") == [(1 << 0,)] and fake.args("set_flag") == []  # strongly typed (0 in TensorRT 11): the graph decides
    assert record["settings"]["precision"] == "int8" and record["settings"]["precision_source"] == "graph"
    use_fake(strongly_typed=False)  # an old weakly typed 10.x without an INT8 flag cannot build it
    with pytest.raises(MMDeployError, match="nor the INT8 builder flag"):
        build_trt_plan(q, tmp_path / "p2.plan", SIZE, "int8")
    with pytest.raises(MMDeployError, match="int8 graph but a fp32 plan"):
        build_trt_plan(q, tmp_path / "p2.plan", SIZE, "fp32")


def test_precision_must_match_the_graph(use_fake, onnx32, onnx16, tmp_path):
    fake = use_fake()
    with pytest.raises(MMDeployError, match="fp32 graph but a fp16 plan") as info:
        build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp16")
    assert "--precision fp16" in info.value.hint
    with pytest.raises(MMDeployError, match="fp16 graph but a fp32 plan"):
        build_trt_plan(onnx16, tmp_path / "p.plan", SIZE, "fp32")
    assert fake.calls == []  # refused before TensorRT is touched


def test_parser_errors_are_listed_in_one_error(use_fake, onnx32, tmp_path):
    use_fake(parse_errors=("Unsupported op Foo", "bad attribute"))
    with pytest.raises(MMDeployError) as info:
        build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32")
    assert "node 3: Unsupported op Foo; node 4: bad attribute" in info.value.message
    assert "\n" not in info.value.one_line()


def test_failed_build_writes_nothing_and_says_why(use_fake, onnx32, tmp_path):
    use_fake(build_fails=True)
    cache = tmp_path / "c"
    with pytest.raises(MMDeployError, match="out of memory in tactic selection"):
        build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(timing_cache=cache))
    assert not (tmp_path / "p.plan").exists() and not cache.exists()


def test_timing_cache_is_reused_and_written_back(use_fake, onnx32, tmp_path):
    fake = use_fake()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    record = build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(timing_cache=cache))
    assert fake.args("create_timing_cache") == [(b"OLD",)] and fake.args("set_timing_cache") == [(b"OLD", False)]
    assert cache.read_bytes() == b"OLD|tuned" and record["settings"]["timing_cache_reused"] is True


def test_foreign_timing_cache_is_replaced(use_fake, onnx32, tmp_path):
    fake = use_fake(foreign_cache=True)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"FROM-ANOTHER-GPU")
    record = build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(timing_cache=cache))
    assert fake.args("set_timing_cache") == [(b"FROM-ANOTHER-GPU", False), (b"", False)]
    assert cache.read_bytes() == b"|tuned" and record["settings"]["timing_cache_reused"] is False


def test_fixed_batch_graph_cannot_serve_other_batches(use_fake, tmp_path):
    use_fake(input_shape=(2, 3, SIZE, SIZE))
    onnx = _conv_mean_onnx(tmp_path / "b2.onnx", batch=2)
    with pytest.raises(MMDeployError, match="fixed batch of 2"):
        build_trt_plan(onnx, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(batch_sizes=(1, 32)))


def test_graph_size_must_be_the_plan_size(use_fake, onnx32, tmp_path):
    use_fake()
    with pytest.raises(MMDeployError, match="fixed H/W 16x16"):
        build_trt_plan(onnx32, tmp_path / "p.plan", 24, "fp32")


# -- bundle round trip and inference through the fake ---------------------------------------
class _FakeStream:
    """torch.cuda.Stream's surface for CPU runs of the engine."""

    cuda_stream = 0

    def __init__(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass


@pytest.fixture
def cpu_streams(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def _bundle_with_plan(tmp_path, onnx32, dynamic=True) -> Bundle:
    bundle = _bundle(tmp_path / "bundle", {"onnx/fp32": {"path": "sizes/16/model.onnx"}})
    bundle.path("sizes/16").mkdir(parents=True)
    bundle.path("sizes/16/model.onnx").write_bytes(onnx32.read_bytes())
    entry = build_bundle_plan(bundle, SIZE, "fp32", options=TrtBuildOptions(batch_sizes=(1, 4), dynamic=dynamic, workspace_gb=1))
    assert entry["plan"] == "sizes/16/model.fp32.plan" and entry["settings"]["timing_cache"] == TIMING_CACHE
    assert bundle.manifest["sizes"]["16"]["artifacts"]["trt/fp32"] is entry
    assert bundle.path(TIMING_CACHE).is_file()
    json.dumps(bundle.manifest)
    return bundle


def _run_engine_checks(fake: FakeTrt, engine: TrtEngine, device: str) -> None:
    torch.manual_seed(0)
    with engine as run:
        for n in (1, 4, 4, 3, 1):
            x = torch.randn(n, 3, SIZE, SIZE)
            y = run(x)
            assert y.dtype == torch.float32 and y.device.type == "cpu" and y.shape == (n, 3)
            torch.testing.assert_close(y, fake_kernel(x), atol=2e-3, rtol=2e-3)
        run.synchronize()
        assert [p["min"][0] for p in run.describe()["profiles"]] == [1, 4, 1]
        assert run.input_metadata() == InputMeta("images", (None, 3, SIZE, SIZE), torch.float32)  # batches 1..4: dynamic
        with pytest.raises(MMDeployError, match="no profile for input shape"):
            run(torch.randn(5, 3, SIZE, SIZE))
        with pytest.raises(MMDeployError, match="no profile"):
            run(torch.randn(1, 3, 24, 24))
    names = fake.names()
    assert "execute_v2" not in names and names.count("execute_async_v3") == 5
    # profile 0 is active at first: switches to 1 (batch 4), 2 (dynamic, batch 3), back to 0 (batch 1)
    assert [a[0] for a in fake.args("set_optimization_profile_async")] == [1, 2, 0]
    assert fake.args("set_input_shape")[:3] == [("images", (1, 3, SIZE, SIZE)), ("images", (4, 3, SIZE, SIZE)), ("images", (3, 3, SIZE, SIZE))]
    assert set(fake.args("set_tensor_address")) == {("images",), ("logits",)}
    assert engine._context is None and not engine.active


def test_engine_round_trip_through_the_fake(use_fake, cpu_streams, onnx32, tmp_path):
    fake = use_fake()
    bundle = _bundle_with_plan(tmp_path, onnx32)
    engine = load_engine(bundle, "trt", SIZE, "fp32", device="cpu")
    assert isinstance(engine, TrtEngine) and engine.describe()["engine"] == "trt"
    _run_engine_checks(fake, engine, "cpu")


def test_half_output_is_returned_as_float32(use_fake, cpu_streams, onnx32, tmp_path):
    use_fake(out_dtype="HALF")
    bundle = _bundle_with_plan(tmp_path, onnx32, dynamic=False)
    with load_engine(bundle, "trt", SIZE, "fp32", device="cpu") as run:
        x = torch.randn(4, 3, SIZE, SIZE)
        y = run(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, fake_kernel(x), atol=1e-2, rtol=1e-2)


def test_unknown_batch_is_refused_before_loading(use_fake, onnx32, tmp_path):
    use_fake()
    bundle = _bundle_with_plan(tmp_path, onnx32, dynamic=False)
    with pytest.raises(MMDeployError, match=r"profiles for batches \[1, 4\], not 8"):
        load_engine(bundle, "trt", SIZE, "fp32", batch=8)


def test_plan_from_another_tensorrt_is_a_clear_error(use_fake, cpu_streams, tmp_path):
    use_fake()
    (tmp_path / "sizes/16").mkdir(parents=True)
    (tmp_path / "sizes/16/model.fp32.plan").write_bytes(b"NOT A PLAN")
    art = {"plan": "sizes/16/model.fp32.plan", "profiles": [1], "versions": {"tensorrt": "10.3.0", "gpu": "NVIDIA A100"}}
    engine = load_engine(_bundle(tmp_path, {"trt/fp32": art}), "trt", SIZE, "fp32", device="cpu")
    with pytest.raises(MMDeployError, match="built with TensorRT 10.3.0 on NVIDIA A100") as info:
        engine.activate()
    assert "rebuild" in info.value.hint


@needs_cuda
@pytest.mark.gpu
def test_engine_round_trip_through_the_fake_on_cuda(use_fake, onnx32, tmp_path):
    """Real CUDA memory, stream handles and copies; only the TensorRT kernels are faked."""
    fake = use_fake(device="cuda")
    bundle = _bundle_with_plan(tmp_path, onnx32)
    _run_engine_checks(fake, load_engine(bundle, "trt", SIZE, "fp32"), "cuda")


# -- real TensorRT ------------------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _export_tiny(model: torch.nn.Module, path: Path) -> Path:
    from torch.export import Dim

    program = torch.onnx.export(model, (torch.randn(2, 3, SIZE, SIZE),), dynamo=True,
                                dynamic_shapes=({0: Dim("batch", min=1, max=64)},), verbose=False)
    program.save(str(path), external_data=False)
    return path


def test_tiny_export_is_an_fp32_graph_and_converts_to_fp16(tmp_path):
    """The fixture the TensorRT tests build from, checked where they cannot run."""
    path = _export_tiny(_tiny_model(), tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx.data").exists()
    assert trt_build._graph_precision(path) == "fp32"
    assert trt_build._graph_precision(_to_fp16(path, tmp_path / "tiny.fp16.onnx")) == "fp16"


@needs_trt
@pytest.mark.trt
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_real_plan_matches_torch(tmp_path, precision, tol):
    model = _tiny_model()
    onnx = _export_tiny(model, tmp_path / "tiny.onnx")
    if precision == "fp16":
        onnx = _to_fp16(onnx, tmp_path / "tiny.fp16.onnx")
    cache = tmp_path / "timing.cache"
    plan = tmp_path / plan_filename(SIZE, precision)
    record = build_trt_plan(onnx, plan, SIZE, precision, TrtBuildOptions(batch_sizes=(1, 4), dynamic=True, workspace_gb=1, timing_cache=cache))
    assert plan.is_file() and cache.is_file() and record["versions"]["gpu"]
    again = build_trt_plan(onnx, plan, SIZE, precision, TrtBuildOptions(batch_sizes=(1, 4), dynamic=True, workspace_gb=1, timing_cache=cache))
    assert again["settings"]["timing_cache_reused"] is True
    with TrtEngine(plan, SIZE, precision) as run:
        for n in (1, 4, 3):
            x = torch.randn(n, 3, SIZE, SIZE)
            with torch.no_grad():
                want = model(x)
            got = run(x)
            assert got.dtype == torch.float32 and got.shape == want.shape
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        assert len(run.describe()["profiles"]) == 3


# -- TensorRT failures as one line naming the cause -------------------------------------------
def test_bindings_without_native_libraries_name_the_library(tmp_path, monkeypatch):
    """What the real tensorrt-cu12-bindings 10.16 wheel raises without its libraries (seen on this machine)."""
    from mmdeploy.engines import trt_errors

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        "raise ImportError('libnvonnxparser.so.10: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(trt_probe, "_cuda_available", lambda: True)
    monkeypatch.setattr(trt_errors, "_bindings_distribution", lambda: ("tensorrt-cu12-bindings", "10.16.1.11"))
    reason = trt_unavailable_reason()
    assert reason.startswith("TensorRT's Python bindings are installed but a native library failed to load: libnvonnxparser.so.10 "
                             "(cannot open shared object file")
    assert "not installed" not in reason and "pip install 'tensorrt-cu12-libs==10.16.1.11'" in reason and "\n" not in reason


def test_not_installed_is_still_said_so(monkeypatch):
    from mmdeploy.engines.trt_errors import import_problem

    assert import_problem(ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")) == "TensorRT is not installed"
    assert import_problem(OSError("weird")).startswith("TensorRT fails to import (OSError: weird")


@pytest.mark.parametrize("logged, shown", [("[cudaDriverHelpers.cpp::operator()::94] Error Code 1: Cuda Driver (initialization error)",
                                            "Error Code 1: Cuda Driver (initialization error)"), ("", "TensorRT logged nothing")])
def test_builder_nullptr_is_one_line_with_what_tensorrt_logged(use_fake, onnx32, tmp_path, logged, shown):
    use_fake(builder_fails=logged)
    with pytest.raises(MMDeployError) as info:
        build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32")
    text = info.value.one_line()
    assert "TensorRT could not create its Builder (the native factory returned nullptr)" in text and shown in text
    assert "nvidia-smi" in info.value.hint and "\n" not in text and not (tmp_path / "p.plan").exists()


def test_runtime_nullptr_is_one_line(use_fake, cpu_streams, onnx32, tmp_path):
    use_fake()
    bundle = _bundle_with_plan(tmp_path, onnx32, dynamic=False)
    use_fake(runtime_fails="CUDA initialization failure with error: 35")
    engine = load_engine(bundle, "trt", SIZE, "fp32", device="cpu")
    with pytest.raises(MMDeployError, match="could not create its Runtime .*CUDA initialization failure with error: 35"):
        engine.activate()
    assert not engine.active


def test_profile_shape_refused_by_tensorrt_is_one_line(use_fake, onnx32, tmp_path):
    use_fake(set_shape_fails=True)
    with pytest.raises(MMDeployError, match="rejected the optimization profile .* inconsistent with other shapes") as info:
        build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(batch_sizes=(1,)))
    assert "\n" not in info.value.one_line()


def test_build_goes_on_without_a_timing_cache_tensorrt_cannot_create(use_fake, onnx32, tmp_path):
    fake = use_fake(timing_cache_fails=True)
    cache = tmp_path / "timing.cache"
    record = build_trt_plan(onnx32, tmp_path / "p.plan", SIZE, "fp32", TrtBuildOptions(timing_cache=cache))
    assert fake.args("create_timing_cache") == [(b"",), (b"",)] and fake.args("set_timing_cache") == []
    assert (tmp_path / "p.plan").is_file() and not cache.exists() and record["settings"]["timing_cache_reused"] is False
