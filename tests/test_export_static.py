"""A "dynamic" export that came out static, and engine errors inside the parity gate: both are refused with
a one-line message, never exported or reported as passing.

Third-party-style model code, written to tmp_path and loaded through ``--arch module:factory``:
each reads the spatial size as a Python value, which the exporter either refuses or bakes in.
Every case must end in one MMDeployError line and leave no ONNX and no temp file in the bundle.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.export import onnx as onnx_mod
from mmdeploy.export.parity import DEFAULT_TOLERANCES, check_parity
from mmdeploy.export.workflow import export_bundle

CALIB = Path(__file__).resolve().parents[1] / "calib" / "train"

THIRD_PARTY = textwrap.dedent("""
    import torch.nn as nn, torch.nn.functional as F

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 10)

        def feats(self, x):
            return F.relu(self.bn(self.conv(x)))

    class ShapeKernel(Base):  # the pooling kernel read from x.shape
        def forward(self, x):
            x = self.feats(x)
            return self.fc(F.avg_pool2d(x, x.shape[3]).flatten(1))

    class SizeSlice(Base):  # h, w = x.size()[2:] turned into ints
        def forward(self, x):
            x = self.feats(x)
            h, w = x.size()[2:]
            return self.fc(F.avg_pool2d(x, (int(h), int(w))).flatten(1))

    class AdaptiveFromShape(Base):  # a fixed adaptive output size computed from the input's shape
        def forward(self, x):
            x = self.feats(x)
            side = int(x.shape[-1]) // 8
            return self.fc(nn.AdaptiveAvgPool2d((side, side))(x).mean((2, 3)))

    def shape_kernel():
        return ShapeKernel()

    def size_slice():
        return SizeSlice()

    def adaptive_from_shape():
        return AdaptiveFromShape()
""")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Writes the module, returns a function making a calibrated bundle for one of its factories."""
    (tmp_path / "thirdnet.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("thirdnet", None)
    import thirdnet

    def make(factory: str) -> Path:
        torch.manual_seed(0)
        ckpt = tmp_path / f"{factory}.pth"
        torch.save(getattr(thirdnet, factory)().state_dict(), ckpt)
        out = tmp_path / f"bundle_{factory}"
        calibrate_to_bundle(ckpt, [16, 24], CALIB, out, batches=1, batch_size=8, arch=f"thirdnet:{factory}", preprocess="cifar")
        return out

    return make


def _debris(bundle: Path) -> list[str]:
    return sorted(p.name for p in bundle.rglob("*") if p.name.endswith((".onnx", ".tmp")))


@pytest.mark.parametrize("factory, message", [
    ("shape_kernel", "torch.onnx.export failed"),  # the exporter refuses the specialization itself
    ("size_slice", "dynamic ONNX export came out static"),  # the exporter falls back to a static graph
    ("adaptive_from_shape", "dynamic ONNX export came out static"),
])
def test_third_party_size_reads_are_refused_in_one_line(third_party, factory, message):
    bundle = third_party(factory)
    with pytest.raises(MMDeployError) as info:
        export_bundle(bundle, "ort", ["fp32"], parity_count=4)
    err = info.value
    assert message in err.message and "\n" not in err.one_line()
    if "static" in message:
        assert "Python int" in err.message and "fixed" in err.message
    assert _debris(bundle) == [], "no ONNX, no temp file"


def test_engine_error_in_the_gate_is_a_named_parity_failure(third_party, monkeypatch):
    """A static file that reaches the gate (the dims check disabled): ORT's crash becomes a parity failure."""
    bundle = third_party("size_slice")
    monkeypatch.setattr(onnx_mod, "check_input_dims", lambda *a, **k: None)
    with pytest.raises(MMDeployError) as info:
        export_bundle(bundle, "ort", ["fp32"], parity_count=4)
    text = info.value.one_line()
    assert "parity gate failed: the dynamic fp32 ONNX could not run at size 16" in text
    assert "invalid dimensions" in text.lower() and "x.size()" in info.value.hint and "\n" not in text
    assert _debris(bundle) == []


class _Broken:
    precision = "fp32"

    def __call__(self, x):
        raise RuntimeError("INVALID_ARGUMENT : Got invalid dimensions\nfor input: images")


def test_check_parity_records_engine_errors_as_failures(third_party):
    import mmdeploy
    from mmdeploy.export.parity import parity_images

    bundle = mmdeploy.load(third_party("size_slice"))
    images = parity_images(bundle, CALIB, 4, [16])
    checks = check_parity(bundle.build_model(16), _Broken(), images, 16, (1, 2), bundle.preprocess(), DEFAULT_TOLERANCES["fp32"], "per-size")
    assert [c.batch for c in checks] == [1, 2] and not any(c.passed for c in checks)
    assert all(c.error == "RuntimeError: INVALID_ARGUMENT : Got invalid dimensions for input: images" for c in checks)


def test_cli_prints_one_line_and_exits_1(third_party, cli):
    bundle = third_party("size_slice")
    result = cli("export", bundle, "--engine", "ort")
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: the dynamic ONNX export came out static") and "internal error" not in result.stderr
    assert _debris(bundle) == []
    # The refusal names the way out (--no-dynamic), and it works: the per-size files match PyTorch at their own sizes.
    assert "or pass --no-dynamic to export only the per-size files" in lines[0]
    per_size = cli("export", bundle, "--engine", "ort", "--no-dynamic", "--json")
    assert per_size.exit_code == 0, per_size.output
    checks = json.loads(per_size.stdout)["checks"]
    assert {(c["artifact"], c["size"]) for c in checks} == {("per-size", 16), ("per-size", 24)} and all(c["passed"] for c in checks)
    assert _debris(bundle) == ["model.onnx", "model.onnx"]


def test_exporter_refusal_and_a_dynamic_only_gate_failure_name_no_dynamic(third_party, monkeypatch):
    with pytest.raises(MMDeployError) as info:
        export_bundle(third_party("shape_kernel"), "ort", ["fp32"], parity_count=4)
    assert "--no-dynamic" in info.value.hint
    monkeypatch.setattr(onnx_mod, "check_input_dims", lambda *a, **k: None)
    with pytest.raises(MMDeployError) as info:
        export_bundle(third_party("size_slice"), "ort", ["fp32"], parity_count=4)
    assert "the dynamic fp32 ONNX could not run" in info.value.message and "--no-dynamic" in info.value.hint
