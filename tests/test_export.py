"""Export: dynamic and per-size ONNX, the parity gate, fp16, reuse, and the ORT engine."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import mmdeploy
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import DEFAULT_TOLERANCES, check_parity, parity_images
from mmdeploy.export.workflow import export_bundle
from mmdeploy.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calib" / "train"


def _ckpt(tmp_path: Path, arch="cifar_resnet8") -> Path:
    torch.manual_seed(0)
    model = create_model(arch)
    for m in model.modules():  # non-trivial BN so folding and per-size statistics matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": "resnet", "config": "{'depth': 8}", "state_dict": model.state_dict(), "epoch": 1, "best_prec1": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "bundle"
    calibrate_to_bundle(_ckpt(tmp), [16, 24], CALIB, out, batches=2, batch_size=16)
    summary = export_bundle(out, "ort", ["fp32", "fp16"], parity_count=8)
    return out, summary


def _dims(path: Path):
    model = onnx.load(str(path))
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim], model


def test_export_writes_dynamic_and_per_size_files(exported):
    out, summary = exported
    for rel in ("model.dynamic.onnx", "model.dynamic.fp16.onnx", "sizes/16/model.onnx", "sizes/24/model.onnx", "sizes/16/model.fp16.onnx"):
        assert (out / rel).is_file(), rel
    assert not list(out.rglob("*.data")) and not list(out.rglob("*.tmp")), "no sidecars, no temp files"
    dyn, _ = _dims(out / "model.dynamic.onnx")
    assert isinstance(dyn[0], str) and isinstance(dyn[2], str) and isinstance(dyn[3], str)
    fixed, model = _dims(out / "sizes/24/model.onnx")
    assert fixed[2:] == [24, 24] and isinstance(fixed[0], str)
    onnx.checker.check_model(model, full_check=True)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}, "BN folded into convs"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mmdeploy.size"] == "24" and meta["mmdeploy.version"] == mmdeploy.__version__
    assert json.loads(meta["mmdeploy.calibration"])["batch_size"] == 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sizes"]["16"]["artifacts"]["onnx/fp32"]["sha256"]


def test_gate_covered_every_size_an_unseen_size_and_two_batches(exported):
    _, summary = exported
    dyn = {(c.size, c.batch) for c in summary.checks if c.artifact == "dynamic" and c.precision == "fp32"}
    sizes = {s for s, _ in dyn}
    assert {16, 24} <= sizes and len(sizes) == 3, "deployment sizes plus one the export never saw"
    assert {b for _, b in dyn} == {1, 8}
    assert all(c.passed for c in summary.checks)
    assert max(c.max_abs for c in summary.checks if c.precision == "fp32") < 1e-3


def test_fp16_keeps_fp32_io(exported):
    out, _ = exported
    model = onnx.load(str(out / "sizes/16/model.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_second_export_reuses(exported):
    out, _ = exported
    again = export_bundle(out, "ort", ["fp32"], parity_count=4)
    assert not again.written and len(again.reused) == 3


def test_ort_engine_matches_torch(exported):
    out, _ = exported
    bundle = mmdeploy.load(out)
    x = torch.randn(3, 3, 24, 24)
    with load_engine(bundle, "torch", size=24, device="cpu") as ref, load_engine(bundle, "ort", size=24) as run:
        assert torch.allclose(run(x), ref(x), atol=1e-4)

    with load_engine(bundle, "ort", 24, variant="dynamic") as dyn:  # dynamic file pinned to 24
        assert dyn(x).shape == (3, 10)


def test_model_that_bakes_its_size_never_exports_silently(tmp_path, monkeypatch):
    (tmp_path / "trapnet.py").write_text(textwrap.dedent("""
        import torch.nn as nn, torch.nn.functional as F
        class Trap(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.bn = nn.BatchNorm2d(8)
                self.fc = nn.Linear(8, 10)
            def forward(self, x):
                x = F.relu(self.bn(self.conv(x)))
                return self.fc(F.avg_pool2d(x, x.size(3)).flatten(1))  # kernel from x.size()
        def trap():
            return Trap()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("trapnet", None)
    import trapnet

    ckpt = tmp_path / "trap.pth"
    torch.save(trapnet.trap().state_dict(), ckpt)
    out = tmp_path / "bundle"
    calibrate_to_bundle(ckpt, [16, 24], CALIB, out, batches=2, batch_size=8, arch="trapnet:trap", preprocess="cifar")
    with pytest.raises(MMDeployError) as err:
        export_bundle(out, "ort", ["fp32"], parity_count=4)
    assert "x.size()" in err.value.hint
    assert not list(out.rglob("*.onnx")) and not list(out.rglob("*.tmp")), "nothing half-written"

    # The gate itself: an exporter that silently bakes the example's size (the TorchScript one)
    # yields a file that runs at 24 and returns wrong numbers; the gate must fail it.
    from mmdeploy.engines.onnxruntime import OrtEngine

    model = trapnet.trap()
    model.load_state_dict(torch.load(ckpt))
    baked = tmp_path / "baked.onnx"
    with pytest.warns(Warning):
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 16, 16),), str(baked), dynamo=False, input_names=["images"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    bundle = mmdeploy.load(out)
    images = parity_images(bundle, CALIB, 4, [16, 24])
    with OrtEngine(baked, 24) as run:
        checks = check_parity(model.eval(), run, images, 24, (1, 2), bundle.preprocess(), DEFAULT_TOLERANCES["fp32"], "dynamic")
    assert not any(c.passed for c in checks)


def test_dynamic_dim_names_are_the_ones_ort_overrides_pin(exported, tmp_path):
    from mmdeploy.engines.onnxruntime import OrtEngine
    from mmdeploy.export.onnx import BATCH_DIM, HEIGHT_DIM, WIDTH_DIM

    out, _ = exported
    dims, model = _dims(out / "model.dynamic.onnx")
    assert dims == [BATCH_DIM, 3, HEIGHT_DIM, WIDTH_DIM]
    assert _dims(out / "model.dynamic.fp16.onnx")[0] == dims
    bundle = mmdeploy.load(out)
    with load_engine(bundle, "ort", 24, variant="dynamic") as pinned:
        assert pinned(torch.randn(2, 3, 24, 24)).shape == (2, 10)
        with pytest.raises(Exception, match="invalid dimensions"):
            pinned(torch.randn(2, 3, 16, 16))  # pinned to 24: the override took effect
    # A graph whose dims have other names: the override would silently do nothing, so the engine refuses it.
    for d in model.graph.input[0].type.tensor_type.shape.dim:
        if d.dim_param:
            d.dim_param = "s" + d.dim_param
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(MMDeployError, match="did not pin"):
        OrtEngine(tmp_path / "renamed.onnx", 24, fixed_dims={HEIGHT_DIM: 24, WIDTH_DIM: 24}).__enter__()


def test_static_batch_export_eval_and_bench(exported, tmp_path):
    import shutil

    from mmdeploy.latency.bench import bench_bundle

    out = tmp_path / "static"
    shutil.copytree(exported[0], out)
    bundle = mmdeploy.load(out)
    bundle.manifest["sizes"]["16"]["metrics"]["accuracy"] = {"ort/fp32": {"top1": 1.0, "top5": 2.0, "images": 8}}
    bundle.save()
    # a fixed batch above the number of parity images still gets a full batch to check
    summary = export_bundle(out, "ort", ["fp32"], sizes=[16], dynamic=False, static_batch=12, parity_count=8)
    bundle = mmdeploy.load(out)
    new = bundle.size(16).artifact("onnx", "fp32").file
    assert summary.written == [new] and {c.batch for c in summary.checks} == {12}
    assert new == "sizes/16/model.1.onnx" and not (out / "sizes/16/model.onnx").exists(), "a new name, the old file swept after the commit"
    assert "ort/fp32" not in bundle.manifest["sizes"]["16"]["metrics"]["accuracy"], "metrics of the replaced file are stale"
    x = torch.randn(5, 3, 16, 16)
    with load_engine(bundle, "torch", size=16, device="cpu") as ref, load_engine(bundle, "ort", size=16) as run:
        assert torch.allclose(run(x), ref(x), atol=1e-4), "other batches run padded to the fixed batch"
    results, _, skipped = bench_bundle(out, ["ort"], sizes=[16, 24], batches=[1], warmup=0, iters=1)
    assert [(r.size, r.batch) for r in results] == [(24, 1)]
    assert any("fixed batch of 12" in line for line in skipped)


def test_export_straight_from_a_checkpoint_keeps_its_statistics(tmp_path, cli):
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "from_ckpt"
    result = cli("export", ckpt, "--size", "16", "--data", CALIB, "--out", out, "--no-dynamic")
    assert result.exit_code == 0, result.stdout + result.stderr
    bundle = mmdeploy.load(out)
    assert bundle.size(16).calibration.fields["method"].startswith("none")
    own = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(bundle.load_weights(16)["bn1.running_mean"], own["bn1.running_mean"])
    assert (out / "sizes/16/model.onnx").is_file()
    missing = cli("export", ckpt, "--size", "16")
    assert missing.exit_code == 1 and "--out" in missing.stderr
