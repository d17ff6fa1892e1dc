"""The export plan (export/plan.py): which files each engine gets in which precisions, read by `export` and `run`; and
the shape of export/: every engine's step reached through its registry entry, no import cycle even inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mmdeploy.engines.registry import EngineSpec, engine_spec, register_engine, unregister_engine
from mmdeploy.errors import MMDeployError
from mmdeploy.export.plan import ExportPlan, plan_export, plan_exports

ROOT = Path(__file__).resolve().parents[1]
HERE = {"torch": "", "ort": "", "trt": "", "ov": ""}  # every engine usable (plan_exports takes the reasons it is given)


@pytest.fixture
def ov_serves_all(monkeypatch):
    """OpenVINO installed and bf16 native, whatever this machine has."""
    import mmdeploy.engines.openvino as ov_engine
    import mmdeploy.engines.trt_probe as trt_probe
    import mmdeploy.export.openvino as ov_export

    monkeypatch.setattr(ov_export, "ov_unavailable_reason", lambda: "")
    monkeypatch.setattr(ov_export, "check_precision", lambda p: None)
    monkeypatch.setattr(ov_engine, "ov_unavailable_reason", lambda: "")
    monkeypatch.setattr(trt_probe, "trt_unavailable_reason", lambda: "")


def test_run_plan_shares_one_onnx_pass_between_ort_and_trt_and_puts_ov_after(ov_serves_all):
    plan = plan_exports(["ort", "trt", "ov"], ["fp32", "fp16", "bf16", "int8"], HERE)
    assert [p.engine for p in plan.passes] == ["trt", "ov"]
    onnx_pass, ov = plan.passes
    assert onnx_pass.serves == ("ort", "trt") and onnx_pass.precisions == ("fp32", "fp16", "int8") and onnx_pass.builds_onnx
    assert onnx_pass.float_precisions == ["fp32", "fp16"]
    assert ov.precisions == ("fp32", "bf16", "int8") and ov.onnx_precisions == ("fp32", "int8") and not ov.builds_onnx
    assert plan.engines == ("ort", "trt", "ov") and plan.precisions == ("fp32", "fp16", "bf16", "int8") and plan.skipped == {}


def test_run_plan_skips_what_this_machine_cannot_serve_with_its_reason(monkeypatch):
    import mmdeploy.export.openvino as ov_export

    monkeypatch.setattr(ov_export, "ov_unavailable_reason", lambda: "")
    monkeypatch.setattr("mmdeploy.engines.openvino.ov_unavailable_reason", lambda: "")

    def no_bf16(p):
        if p == "bf16":
            raise MMDeployError("this CPU has no native bf16", "use fp32")

    monkeypatch.setattr(ov_export, "check_precision", no_bf16)
    plan = plan_exports(["auto"], ["fp32", "bf16", "int8"], {**HERE, "trt": "no GPU"})
    assert plan.engines == ("ort", "ov") and "trt" not in plan.skipped, "auto names only the engines usable here"
    assert plan.skipped == {"ov bf16": "this CPU has no native bf16"}
    assert plan.precisions == ("fp32", "int8"), "a precision no planned engine serves is not measured"
    assert [(p.engine, p.precisions) for p in plan.passes] == [("ort", ("fp32", "int8")), ("ov", ("fp32", "int8"))]
    named = plan_exports(["ort", "trt"], ["fp32"], {**HERE, "trt": "no GPU"})
    assert named.skipped == {"trt": "no GPU"} and named.engines == ("ort",) and named.passes[0].engine == "ort"


def test_run_plan_of_an_engine_that_reads_the_onnx_still_exports_the_onnx_first(ov_serves_all):
    plan = plan_exports(["ov"], ["bf16"], HERE)
    assert [(p.engine, p.precisions, p.serves) for p in plan.passes] == [("ort", ("fp32",), ("ort",)), ("ov", ("bf16",), ("ov",))]
    with pytest.raises(MMDeployError, match="unknown engine in config"):
        plan_exports(["ort", "tflite"], ["fp32"], HERE)


def test_export_plan_refuses_before_any_work(ov_serves_all):
    assert plan_export("ov", ["fp32", "bf16", "int8"]).onnx_precisions == ("fp32", "int8")
    assert plan_export("onnx", None).precisions == ("fp32",)
    with pytest.raises(MMDeployError, match="unknown precision 'bf16' for --engine ort"):
        plan_export("ort", ["fp32", "bf16"])
    with pytest.raises(MMDeployError, match="unknown export engine 'torch'"):
        plan_export("torch", ["fp32"])


def test_a_registered_engine_is_planned_from_its_entry_alone():
    """A toy engine that runs the ONNX under another name needs no line of export code to be planned."""
    register_engine(EngineSpec("toy", ("fp32", "int8"), "onnx", engine_spec("ort").runner))
    try:
        plan = plan_exports(["ort", "toy"], ["fp32", "fp16", "int8"], {**HERE, "toy": ""})
        assert isinstance(plan, ExportPlan) and plan.engines == ("ort", "toy")
        assert [(p.engine, p.serves, p.precisions) for p in plan.passes] == [("ort", ("ort", "toy"), ("fp32", "fp16", "int8"))]
        assert plan_export("toy", ["int8"]).precisions == ("int8",)
    finally:
        unregister_engine("toy")


def test_every_engine_export_step_is_reached_through_its_registry_entry():
    from mmdeploy.engines.registry import deployed_engines

    steps = {name: engine_spec(name).exporter for name in deployed_engines()}
    assert steps["trt"] == "mmdeploy.export.tensorrt_step:build_trt_step" and steps["ov"] == "mmdeploy.export.openvino:build_ov_step"
    for name, ref in steps.items():
        if ref:
            assert callable(engine_spec(name).export_step())
            assert not ref.startswith("mmdeploy.export.workflow:"), f"{name}'s step lives in its own export module"


def _all_imports(path: Path) -> set[str]:
    """Every mmdeploy module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("mmdeploy.")}


def test_no_import_cycle_inside_export_counting_function_local_imports():
    paths = {f"mmdeploy.export.{p.stem}": p for p in (ROOT / "mmdeploy/export").glob("*.py") if p.stem != "__init__"}
    paths["mmdeploy.pipeline"] = ROOT / "mmdeploy/pipeline.py"
    graph = {m: {i for i in _all_imports(p) if i in paths and i != m} for m, p in paths.items()}
    assert "mmdeploy.export.workflow" not in graph["mmdeploy.export.openvino"]

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for n in graph[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    assert [m for m in graph if m in reach(m)] == []
