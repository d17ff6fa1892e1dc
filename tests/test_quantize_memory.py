"""INT8 range collection in bounded memory: streaming equals ONNX Runtime's one-shot calibrator, runs hold
a few images at most, a model that cannot fit is refused up front, and an int8 failure keeps the fp32 files."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.bundle import ONNX, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.export import ranges
from mmdeploy.export.quantize import activation_scales, calibration_batches, quantize_int8
from mmdeploy.export.ranges import plan_ranges
from mmdeploy.export.workflow import export_bundle

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "models/cifar_resnet20_mixsize_dplus.pth"
SIZE = 16
IMAGES = 64  # two BN batches of 32


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8mem") / "bundle"
    calibrate_to_bundle(CKPT, [SIZE], ROOT / "calib/train", out, batches=2, batch_size=32, seed=0)
    export_bundle(out, "ort", ["fp32"], dynamic=False)
    return out


def _inputs(bundle_dir: Path):
    bundle = Bundle.open(bundle_dir)
    fp32 = bundle.path(bundle.artifact(SIZE, ONNX, "fp32").file)
    return fp32, calibration_batches(bundle.size(SIZE).calibration.fields, bundle.preprocess(), SIZE, IMAGES)


def _one_shot(fp32: Path, dst: Path, batches, method: str) -> None:
    """ONNX Runtime's own calibrator over every batch in one collect_data (what quantize_int8 did before streaming)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    prepared = dst.with_suffix(".pre.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


@pytest.mark.parametrize("method", ["percentile", "minmax"])
def test_streaming_ranges_equal_the_one_shot_calibrator(fp32_bundle, tmp_path, method):
    fp32, batches = _inputs(fp32_bundle)
    assert [b.shape[0] for b in batches] == [32, 32]
    _one_shot(fp32, tmp_path / "ort.onnx", [batches[i] for i in range(len(batches))], method)
    record = quantize_int8(fp32, tmp_path / "ours.onnx", batches, method)
    ours, theirs = activation_scales(tmp_path / "ours.onnx"), activation_scales(tmp_path / "ort.onnx")
    assert len(ours) > 10 and ours == theirs  # exactly: whole BN batches fit a run at this size
    assert record["range_collection"]["images_per_run"] == 32


class _CountingSession:
    """Wraps onnxruntime.InferenceSession: the most images any run was given, and the runs."""

    largest, runs = 0, 0

    def __init__(self, *args, **kwargs):
        self._session = _CountingSession.real(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, outputs, feeds, *args):
        _CountingSession.largest = max(_CountingSession.largest, max(len(v) for v in feeds.values()))
        _CountingSession.runs += 1
        return self._session.run(outputs, feeds, *args)


def test_collection_holds_one_run_of_a_few_images_whatever_the_image_count(fp32_bundle, tmp_path, monkeypatch):
    import onnxruntime

    fp32, batches = _inputs(fp32_bundle)
    whole = activation_scales_after(fp32, tmp_path / "whole.onnx", batches)
    # A budget of 3 images' activations (twice: ONNX Runtime's buffers and their numpy copies).
    per_image = quantize_int8(fp32, tmp_path / "probe.onnx", batches[:1], "minmax")["range_collection"]["activation_bytes_per_image"]
    monkeypatch.setattr(ranges, "ACTIVATION_BUDGET", 3 * 2 * per_image + 1)
    _CountingSession.real, _CountingSession.largest, _CountingSession.runs = onnxruntime.InferenceSession, 0, 0
    monkeypatch.setattr(onnxruntime, "InferenceSession", _CountingSession)
    record = quantize_int8(fp32, tmp_path / "chunked.onnx", batches, "percentile")
    assert record["range_collection"]["images_per_run"] == 3 and record["range_collection"]["images_held_at_most"] == 3
    assert _CountingSession.largest == 3 and _CountingSession.runs >= 2 * 2 * 11  # two passes over 2 batches of 32 in runs of <= 3
    chunked = activation_scales(tmp_path / "chunked.onnx")
    # ONNX Runtime's kernels round a few activations differently at another batch size: ranges agree to float rounding.
    assert chunked.keys() == whole.keys()
    assert all(np.isclose(chunked[k], whole[k], rtol=1e-5, atol=0) for k in whole)


def activation_scales_after(fp32: Path, dst: Path, batches) -> dict:
    quantize_int8(fp32, dst, batches, "percentile")
    return activation_scales(dst)


def test_plan_fits_runs_to_the_budget_and_refuses_one_line_with_the_numbers():
    mib = 2**20
    plan = plan_ranges(224, activation_bytes=200 * mib, model_bytes=100 * mib, batch_bytes=38 * mib, batch=64, available=None, budget=1024 * mib)
    assert plan.images_per_run == 2  # 2 x 200 MiB, twice, within 1 GiB
    small = plan_ranges(32, activation_bytes=1 * mib, model_bytes=1 * mib, batch_bytes=1 * mib, batch=64, available=None, budget=1024 * mib)
    assert small.images_per_run == 64  # never more than a batch
    tight = plan_ranges(224, activation_bytes=200 * mib, model_bytes=100 * mib, batch_bytes=38 * mib, batch=64, available=2 * 2**30, budget=1024 * mib)
    assert tight.images_per_run == 1 and tight.need(1) <= 2 * 2**30  # what is free bounds it below the budget
    with pytest.raises(MMDeployError) as info:
        plan_ranges(224, activation_bytes=200 * mib, model_bytes=100 * mib, batch_bytes=38 * mib, batch=64, available=1 * 2**30)
    text = info.value.one_line()
    assert "\n" not in text and "size 224" in text and "200 MiB of activations per image" in text and "100 MiB model" in text
    assert "1.0 GiB free" in text and "one image at a time" in text
    assert "--int8-images" not in text and "--int8-method" not in text  # neither changes the memory needed


def test_refused_int8_keeps_the_fp32_files_that_passed(fp32_bundle, tmp_path, cli, monkeypatch):
    import shutil

    from mmdeploy.models import fit

    out = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sizes"][str(SIZE)]["artifacts"]["onnx/fp32"]  # so this export writes the fp32 file again
    (out / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(fit, "available_memory", lambda device="cpu": 64 * 2**20)
    result = cli("export", out, "--precision", "fp32", "--precision", "int8", "--no-dynamic", "--int8-images", IMAGES)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "INT8 calibration at size 16 needs about" in lines[0] and "0.1 GiB free" in lines[0]
    assert f"kept what passed its gate before int8: sizes/{SIZE}/model.onnx" in lines[0]
    bundle = Bundle.open(out)
    fp32 = bundle.artifact(SIZE, ONNX, "fp32")
    assert fp32 is not None and bundle.artifact_usable(fp32) and fp32.fields["parity"]
    assert bundle.artifact(SIZE, ONNX, "int8") is None and not (out / f"sizes/{SIZE}/model.int8.onnx").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith((".pre.onnx", ".q.onnx", ".aug.onnx", ".json.tmp"))]


def test_failing_int8_gate_keeps_the_fp32_files(fp32_bundle, tmp_path, cli):
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sizes"][str(SIZE)]["artifacts"]["onnx/fp32"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    # fp32 passes at its default bound; int8 cannot meet an rtol this tight
    result = cli("export", out, "--precision", "fp32", "--precision", "int8", "--no-dynamic", "--int8-images", IMAGES, "--rtol", "1e-4")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "parity gate failed: per-size int8 at size 16" in line and "nothing was written" not in line
    assert f"kept what passed its gate before int8: sizes/{SIZE}/model.onnx" in line
    bundle = Bundle.open(out)
    assert bundle.artifact(SIZE, ONNX, "fp32") is not None and bundle.artifact(SIZE, ONNX, "int8") is None


def test_export_help_says_int8_memory_and_what_a_failure_keeps(cli):
    result = cli("export", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "memory does not grow with it" in text and "keeps the fp32/fp16 files that passed" in text


@pytest.mark.parametrize("method, absolute", [("percentile", True), ("entropy", False)])
def test_a_value_the_range_pass_did_not_see_is_refused_not_dropped(method, absolute):
    stats = ranges.RangeStats(method, absolute)
    stats.add("range", "t", np.array([[0.5, -1.0, 2.0]], dtype=np.float32))
    stats.add("histogram", "t", np.array([[0.5, -1.0, 2.0]], dtype=np.float32))
    assert stats.counts["t"].sum() == 3
    with pytest.raises(MMDeployError, match="non-finite or different on a second identical run"):
        stats.add("histogram", "t", np.array([[0.5, np.nan, 3.0]], dtype=np.float32))
