"""What every engine shares, so one latency and one accuracy harness serve all: one lifecycle, typed options with one meaning each, unknown
options refused by name, and one input-metadata accessor.

The engines that run on this machine (torch, ONNX Runtime, OpenVINO where installed) run a tiny
conv graph; the TensorRT engine's metadata is checked against the fake ``tensorrt`` in test_tensorrt.py.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_lifecycle_checked

from mmdeploy.bundle import Bundle
from mmdeploy.engines import InputMeta, engine_names
from mmdeploy.engines.loader import load_engine, option_names
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.engines.openvino import OvEngine
from mmdeploy.engines.registry import engine_spec
from mmdeploy.engines.tensorrt import TrtEngine
from mmdeploy.engines.torch_engine import TorchEngine
from mmdeploy.errors import MMDeployError
from mmdeploy.export.onnx import INPUT_NAME

ENGINES = engine_names()
CLASSES = {"torch": TorchEngine, "ort": OrtEngine, "trt": TrtEngine, "ov": OvEngine}
SIZE = 12
HAVE_OV = importlib.util.find_spec("openvino") is not None


def _empty_bundle(root: Path) -> Bundle:
    """A bundle with one size and no artifacts: an unknown option must be refused before anything is looked up."""
    manifest = {"schema": "mmdeploy.bundle", "schema_version": 1, "source": {}, "preprocess": {}, "sizes": {str(SIZE): {"artifacts": {}}}}
    return Bundle(root, manifest)


def test_every_engine_name_has_its_class():
    assert set(CLASSES) == set(ENGINES) and all(CLASSES[n].name == n for n in ENGINES)


@pytest.mark.parametrize("name", ENGINES)
def test_an_unknown_option_is_refused_by_name(name, tmp_path):
    bundle = _empty_bundle(tmp_path)
    with pytest.raises(MMDeployError) as info:
        load_engine(bundle, name, SIZE, "fp32", treads=2)  # a typo of `threads` must not run with the default
    err = info.value
    assert f"the {name} engine has no option 'treads'" in err.message
    assert "batch" in err.hint and "\n" not in err.one_line()
    with pytest.raises(MMDeployError, match="no option 'colour', 'shape'"):
        load_engine(bundle, name, SIZE, "fp32", shape=(1, 3), colour="red")


def _options(name: str) -> dict[str, str]:
    """The typed options of an engine's loader: name -> annotation (a string: these modules use postponed annotations)."""
    params = inspect.signature(engine_spec(name).loader_function()).parameters.values()
    return {p.name: p.annotation for p in params if p.kind is p.KEYWORD_ONLY}


def test_shared_options_have_one_type_in_every_engine():
    options = {name: _options(name) for name in ENGINES}
    assert all(opts and all(a is not inspect.Parameter.empty for a in opts.values()) for opts in options.values()), options
    assert all("batch" in opts for opts in options.values())  # the one option a harness can pass to any engine
    seen: dict[str, set[str]] = {}
    for opts in options.values():
        for option, annotation in opts.items():
            seen.setdefault(option, set()).add(str(annotation))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
    assert option_names("ort")[:2] == ["variant", "batch"]  # from the signature, in its order


# -- input metadata, on the engines that run here -------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def _tiny_onnx(model: _Tiny, path: Path) -> Path:
    """The same network as an ONNX graph with a dynamic batch, written with onnx.helper (no exporter needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(model.conv.weight.detach().numpy(), "w")
    bias = numpy_helper.from_array(model.conv.bias.detach().numpy(), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["y"], ["logits"], axes=[2, 3], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [weight, bias],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by every ONNX Runtime and OpenVINO this project supports
    onnx.save(proto, str(path))
    return path


ENGINES_HERE = [
    pytest.param("torch", id="torch"),
    pytest.param("ort", id="ort"),
    pytest.param("ov", id="ov", marks=pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed (pip install -e '.[openvino]')")),
]


def _tiny_engine(name: str, tmp_path):
    """The tiny model and one engine of it by name (its ONNX written under ``tmp_path``)."""
    model = _Tiny().eval()
    onnx_path = _tiny_onnx(model, tmp_path / "tiny.onnx")
    engine = {"torch": lambda: TorchEngine(model, SIZE, device="cpu"),
              "ort": lambda: OrtEngine(onnx_path, SIZE, threads=1),
              "ov": lambda: OvEngine(onnx_path, SIZE, threads=1)}[name]()
    return model, engine


@pytest.mark.parametrize("name", ENGINES_HERE)
def test_input_metadata_is_one_accessor_with_one_answer(name, tmp_path):
    model, engine = _tiny_engine(name, tmp_path)
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        engine.input_metadata()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with engine as run:
        meta = run.input_metadata()
        assert meta == InputMeta(INPUT_NAME, (None, 3, SIZE, SIZE), torch.float32)
        out = run(torch.zeros(meta.shape[0] or 2, *meta.shape[1:], dtype=meta.dtype) + x)  # a tensor made from the metadata runs
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ENGINES_HERE)
def test_every_input_form_gives_the_same_logits(name, tmp_path):
    """float32 contiguous CPU tensors take a short path (no conversion calls); every other form still runs, converted."""
    model, engine = _tiny_engine(name, tmp_path)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with engine as run:
        want = run(x).clone()
        forms = {"float64": x.double(), "strided": torch.randn(2, SIZE, SIZE, 3).permute(0, 3, 1, 2).copy_(x),
                 "requires_grad": x.clone().requires_grad_(True), "batch 1": x[:1]}
        for form, value in forms.items():
            got = run(value)
            np.testing.assert_allclose(got.detach().numpy(), want[: value.shape[0]].numpy(), atol=1e-4, err_msg=form)
    assert not forms["strided"].is_contiguous() and forms["requires_grad"].requires_grad


@pytest.mark.parametrize("name", ENGINES_HERE)
def test_a_numpy_batch_gets_numpy_logits_without_torch_on_the_call_path(name, tmp_path, monkeypatch):
    model, engine = _tiny_engine(name, tmp_path)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with engine as run:
        want = run(x).clone().numpy()
        if name != "torch":  # ONNX Runtime and OpenVINO: a float32 array goes straight to the runtime
            import mmdeploy.engines.base as base

            def no_torch(*a, **k):
                raise AssertionError("torch on the numpy call path")

            monkeypatch.setattr(base.torch, "from_numpy", no_torch)
            monkeypatch.setattr(type(run), "_infer", no_torch)
        for form, value in {"float32": x.numpy(), "batch 1": x[:1].numpy().copy()}.items():
            got = run(value)
            assert isinstance(got, np.ndarray) and got.dtype == np.float32, form
            np.testing.assert_allclose(got, want[: value.shape[0]], atol=1e-4, err_msg=form)
        monkeypatch.undo()
        got = run(x.double().numpy())  # another dtype: converted, through the general path
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, atol=1e-4)


# -- the lifecycle's state checks: the base class's, whatever the subclass implements ---------------------------------
@pytest.mark.parametrize("name", ENGINES_HERE)
def test_every_engine_gets_the_lifecycle_checks_from_the_base_class(name, tmp_path):
    model, engine = _tiny_engine(name, tmp_path)
    assert_lifecycle_checked(engine, torch.randn(2, 3, SIZE, SIZE))


def test_a_subclass_implements_hooks_and_cannot_override_the_checked_methods():
    from mmdeploy.engines.base import Engine

    calls = []

    class Minimal(Engine):  # only the hooks: no super() calls to remember
        name = "minimal"

        def _activate(self):
            calls.append("activate")

        def _infer(self, x):
            return x.sum(dim=(1, 2, 3))

        def _deactivate(self):
            calls.append("deactivate")

    assert_lifecycle_checked(Minimal(SIZE), torch.ones(2, 3, SIZE, SIZE))
    assert calls == ["activate", "deactivate", "activate", "deactivate"], "the hooks run once per transition"
    with pytest.raises(TypeError, match="overrides activate, infer: implement _activate, _infer instead"):
        class Old(Engine):  # the old pattern, which could forget super().activate() or call it too early
            def activate(self):
                pass

            def infer(self, x):
                return x
