"""Per-size INT8: QDQ ONNX per size, ranges calibrated per size, the INT8 gate, reuse, and int8 as one more precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.bundle import ONNX, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.export.quantize import activation_scales, calibration_batches
from mmdeploy.export.workflow import export_bundle

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "models/cifar_resnet20_mixsize_dplus.pth"  # a trained model: INT8 must keep its decisions
CALIB = ROOT / "calib/train"
SIZES = [16, 32]
IMAGES = 64  # two BN calibration batches (all the images the test calibrates BN on)


def _calibrate(out: Path, seed: int = 0, sizes=SIZES) -> None:
    calibrate_to_bundle(CKPT, sizes, CALIB, out, batches=2, batch_size=32, seed=seed)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    _calibrate(out)
    summary = export_bundle(out, "ort", ["fp32", "int8"], dynamic=False, int8_images=IMAGES, parity_count=64)
    return out, summary


def test_int8_artifact_per_size_passes_the_gate(int8_bundle):
    out, summary = int8_bundle
    bundle = Bundle.open(out)
    for s in SIZES:
        art = bundle.artifact(s, ONNX, "int8").fields
        assert art["path"] == f"sizes/{s}/model.int8.onnx" and bundle.path(art["path"]).is_file()
        assert art["int8"]["method"] == "percentile" and art["int8"]["images"] == IMAGES and art["int8"]["format"] == "QDQ" and art["int8"]["activations"].startswith("uint8")
        assert art["graph"]["quantized_nodes"] > 0 and "Conv" not in art["graph"]["float_ops"]
        checks = [c for c in art["parity"]]
        assert checks and all(c["passed"] and c["precision"] == "int8" and c["images"] >= 32 for c in checks)
    assert bundle.artifact(None, ONNX, "int8") is None  # no dynamic int8: ranges are per size
    assert {f"sizes/{s}/model.int8.onnx" for s in SIZES} <= set(summary.written)


def test_ranges_are_calibrated_per_size(int8_bundle):
    out, _ = int8_bundle
    bundle = Bundle.open(out)
    scales = {s: activation_scales(bundle.path(f"sizes/{s}/model.int8.onnx")) for s in SIZES}
    common = sorted(set(scales[16]) & set(scales[32]) - {"images"})
    assert len(common) > 5  # the same graph, so the same activations
    differ = [t for t in common if not np.isclose(scales[16][t], scales[32][t], rtol=1e-3)]
    assert len(differ) >= len(common) // 2, f"scales copied between sizes? {differ}"


def test_calibration_batches_are_whole_bn_batches_at_the_size(int8_bundle):
    out, _ = int8_bundle
    bundle = Bundle.open(out)
    record = bundle.size(16).calibration.fields
    batches = calibration_batches(record, bundle.preprocess(), 16, 40)  # rounds up to whole batches of 32
    assert [b.shape for b in batches] == [(32, 3, 16, 16), (32, 3, 16, 16)]
    again = calibration_batches(record, bundle.preprocess(), 16, 1)
    assert np.array_equal(again[0], batches[0])  # seeded: the same images and augmentation every time
    assert calibration_batches(record, bundle.preprocess(), 32, 1)[0].shape == (32, 3, 32, 32)


def test_changed_calibration_images_are_refused(int8_bundle, tmp_path):
    from mmdeploy.errors import MMDeployError

    out, _ = int8_bundle
    bundle = Bundle.open(out)
    record = dict(bundle.size(16).calibration.fields, data_fingerprint="something else")
    with pytest.raises(MMDeployError, match="changed since size 16 was calibrated"):
        calibration_batches(record, bundle.preprocess(), 16, 8)


def test_unchanged_bundle_reuses_int8_and_recalibrated_size_redoes_it(int8_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle[0], out)
    again = export_bundle(out, "ort", ["int8"], dynamic=False, int8_images=IMAGES, parity_count=64)
    assert again.written == [] and {f"sizes/{s}/model.int8.onnx" for s in SIZES} <= set(again.reused)
    before = activation_scales(out / "sizes/16/model.int8.onnx")
    _calibrate(out, seed=1, sizes=[16])  # new BN statistics (other images) for 16 only
    redo = export_bundle(out, "ort", ["int8"], dynamic=False, int8_images=IMAGES, parity_count=64)
    assert redo.written == ["sizes/16/model.int8.onnx"] and "sizes/32/model.int8.onnx" in redo.reused
    assert activation_scales(out / "sizes/16/model.int8.onnx") != before
    other_count = export_bundle(out, "ort", ["int8"], sizes=[32], dynamic=False, int8_images=IMAGES // 2, parity_count=64)
    # the settings are part of the key; the new file takes a name the committed manifest did not list
    assert other_count.written == [Bundle.open(out).artifact(32, ONNX, "int8").file] != ["sizes/32/model.int8.onnx"]


def test_failing_int8_gate_is_one_line_and_writes_nothing(int8_bundle, tmp_path, cli):
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle[0], out)
    (out / "sizes/16/model.int8.onnx").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sizes"]["16"]["artifacts"]["onnx/int8"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = (out / "manifest.json").read_bytes()
    result = cli("export", out, "--precision", "int8", "--size", "16", "--no-dynamic", "--int8-images", IMAGES, "--rtol", "1e-4")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "parity gate failed: per-size int8 at size 16" in lines[0] and "--int8-method" in lines[0]
    assert not (out / "sizes/16/model.int8.onnx").exists() and (out / "manifest.json").read_bytes() == before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith((".pre.onnx", ".q.onnx"))]


def test_bad_int8_options_are_user_errors(int8_bundle, cli):
    result = cli("export", int8_bundle[0], "--precision", "int8", "--int8-method", "magic")
    assert result.exit_code == 1 and "unknown INT8 calibration method 'magic'" in result.stderr
    result = cli("export", int8_bundle[0], "--precision", "int8", "--int8-images", "0")
    assert result.exit_code == 1 and "--int8-images must be >= 1" in result.stderr


def test_int8_is_one_more_precision_in_eval_bench_and_report(int8_bundle, tmp_path):
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.latency.bench import bench_bundle
    from mmdeploy.report import report_bundle

    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle[0], out)
    acc = evaluate_target(out, ROOT / "calib/val", engines=["torch", "ort"], precisions=["fp32", "int8"], limit=64)
    points = {(r.size, r.engine, r.precision) for r in acc if r.calibrated}
    assert {(s, "ort", "int8") for s in SIZES} <= points and not any(p == "int8" and e == "torch" for _, e, p in points)
    fp32 = {r.size: r.top1 for r in acc if r.calibrated and (r.engine, r.precision) == ("ort", "fp32")}
    int8 = {r.size: r.top1 for r in acc if r.calibrated and (r.engine, r.precision) == ("ort", "int8")}
    assert all(abs(fp32[s] - int8[s]) <= 10 for s in SIZES)  # 64 images: a loose sanity bound, the benchmark measures it
    lat, _, skipped = bench_bundle(out, ["torch", "ort"], ["fp32", "int8"], batches=[1], warmup=1, iters=2)
    assert {(r.size, r.engine, r.precision) for r in lat} >= {(s, "ort", "int8") for s in SIZES}
    assert not any(r.engine == "torch" and r.precision == "int8" for r in lat)
    report, files = report_bundle(out, batch=1)
    assert any(p.precision == "int8" for p in report.points)
    assert "int8" in Path(files["csv"]).read_text() and "int8" in Path(files["md"]).read_text()
