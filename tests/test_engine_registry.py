"""The engine registry is the one place an engine is declared: a toy engine registered here alone (an ONNX Runtime runner
under another name, loaded by the ONNX loader) is calibrated for, exported, evaluated, benched and reported like a built-in
one, and gets the lifecycle's state checks from the base class."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_lifecycle_checked

from mmdeploy.bundle import Bundle
from mmdeploy.config import config_problems
from mmdeploy.engines import available_engines, check_choices
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.engines.registry import (
    EngineSpec,
    artifact_of,
    deployed_engines,
    engine_names,
    engine_spec,
    engines_of_artifact,
    register_engine,
    serves,
    tunable_engines,
    unregister_engine,
)
from mmdeploy.errors import MMDeployError

FAST = ("--batches", "2", "--batch-size", "4")


class ToyEngine(OrtEngine):
    """ONNX Runtime under another name: what a new engine's runner module would hold."""

    name = "toy"


@pytest.fixture
def toy():
    spec = register_engine(EngineSpec("toy", ("fp32",), "onnx", ToyEngine, loader="mmdeploy.engines.loader:load_ort", unavailable=lambda: "",
                                      title="Toy runtime"))
    yield spec
    unregister_engine("toy")


def test_builtin_engines_in_the_demo_order():
    assert engine_names() == ("torch", "ort", "trt", "ov")  # report rows and default lists follow this order
    assert deployed_engines() == ("ort", "trt", "ov") and tunable_engines() == ("ort", "ov")
    assert artifact_of("torch") is None and artifact_of("trt") == "trt" and engines_of_artifact("onnx") == ("ort",)
    assert serves("ov", "bf16") and not serves("ort", "bf16") and not serves("torch", "int8") and not serves("nope", "fp32")
    assert engine_spec("ov").onnx_precisions(["bf16"]) == ["fp32"] and engine_spec("ov").onnx_precisions(["int8"]) == ["fp32", "int8"]
    assert engine_spec("trt").onnx_precisions(["fp16", "int8"]) == ["fp16", "int8"]


def test_registry_refuses_clashes_and_unknown_names(toy):
    with pytest.raises(ValueError, match="registered twice"):
        register_engine(EngineSpec("toy", ("fp32",), "onnx", ToyEngine))
    with pytest.raises(ValueError, match="unknown precisions"):
        register_engine(EngineSpec("toy2", ("fp8",), "onnx", ToyEngine))
    with pytest.raises(MMDeployError, match="unknown engine 'tyo'") as err:
        check_choices(["tyo"], None)
    assert "toy" in err.value.hint


def test_a_registered_engine_is_everywhere_and_gone_after(toy):
    assert "toy" in engine_names() and available_engines()["toy"] == ""
    assert engines_of_artifact("onnx") == ("ort", "toy")  # a new ONNX makes both engines' figures stale
    config = {"export": {"engines": ["toy"], "precisions": ["fp32"]}}
    assert not [p for p in config_problems(config) if "engines" in p]
    unregister_engine("toy")
    assert "toy" not in engine_names()
    assert [p for p in config_problems(config) if "engines" in p]  # config choices read the registry when checked


def test_toy_engine_through_every_step(toy, cli, resnet8_checkpoint, image_dir, tmp_path):
    out = tmp_path / "b"
    assert cli("calibrate", resnet8_checkpoint, "--size", "16", "--size", "24", "--data", image_dir, "--out", out, *FAST).exit_code == 0
    exported = cli("export", out, "--engine", "toy", "--data", image_dir)
    assert exported.exit_code == 0, exported.output
    refused = cli("export", out, "--engine", "toy", "--precision", "fp16", "--data", image_dir)
    assert refused.exit_code == 1 and "unknown precision 'fp16' for --engine toy" in refused.output
    with load_engine(Bundle.open(out), "toy", 16) as run:
        assert isinstance(run, ToyEngine) and run.name == "toy"
    assert_lifecycle_checked(load_engine(out, "toy", 16, threads=1), torch.zeros(2, 3, 16, 16))
    evaluated = cli("eval", out, "--data", image_dir, "--engine", "torch", "--engine", "toy", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    acc = {(a.size, a.engine) for a in Bundle.open(out).accuracies() if a.calibrated}
    assert {(16, "toy"), (24, "toy"), (16, "torch"), (24, "torch")} <= acc
    benched = cli("bench", out, "--engine", "torch", "--engine", "toy", "--batch", "1", "--warmup", "1", "--iters", "3", "--noise-budget", "0")
    assert benched.exit_code == 0, benched.output
    assert {(r.size, r.engine) for r in Bundle.open(out).latencies()} >= {(16, "toy"), (24, "toy")}
    reported = cli("report", out, "--batch", "1")
    assert reported.exit_code == 0, reported.output
    points = json.loads((out / "report.json").read_text())["points"]
    assert {(p["size"], p["engine"]) for p in points} >= {(16, "toy"), (24, "toy")}
    # The toy engine's figures are tied to the ONNX it ran: a new ONNX at 16 drops them, as it drops ort's.
    with Bundle.update(out) as b:
        b.remove_artifact(16, "onnx", "fp32")
    assert (16, "toy") not in {(a.size, a.engine) for a in Bundle.open(out).accuracies()}
