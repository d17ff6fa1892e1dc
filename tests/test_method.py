"""The method-alone comparison (the paper's claim, isolated from engine speed-ups): fixed baseline at its training size vs the smallest
calibrated mixed-size point within tolerance, same engine and precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmdeploy.report.method import describe, method_alone, model_flops, write_method_alone
from mmdeploy.stats import pack_correct

FAST = ("--batches", "2", "--batch-size", "4")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, image_dir, resnet8_checkpoint) -> Path:
    from typer.testing import CliRunner

    from mmdeploy import cli as cli_module

    out = tmp_path_factory.mktemp("method") / "b"
    result = CliRunner().invoke(cli_module.app, ["calibrate", str(resnet8_checkpoint), "--size", "16", "--size", "24", "--size", "32",
                                                 "--data", str(image_dir), "--out", str(out), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    return out


def _with_metrics(src: Path, dst: Path, top1: dict[int, float], p50: dict[tuple[int, int], float], reliable: bool = True,
                  images: int = 10_000) -> Path:
    """A copy of ``src`` whose manifest holds ort/fp32 accuracy and latency results as eval and bench store them.

    Per-image results on one image set: each point gets the first top1% of the images right, so two points differ on
    exactly the images between their counts (the least discordance their top-1s allow)."""
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    for size, acc in top1.items():
        metrics = manifest["sizes"][str(size)].setdefault("metrics", {})
        right = round(acc * images / 100)
        metrics.setdefault("accuracy", {})["ort/fp32"] = {"top1": acc, "top5": 99.0, "images": images, "image_set": "same",
                                                          "correct": pack_correct([i < right for i in range(images)])}
    for (size, batch), ms in p50.items():
        metrics = manifest["sizes"][str(size)].setdefault("metrics", {})
        metrics.setdefault("latency", {})[f"ort/fp32/b{batch}"] = {
            "p50_ms": ms, "p90_ms": ms, "p99_ms": ms, "mean_ms": ms, "throughput": batch * 1000 / ms, "iters": 10,
            "device": "cpu", "threads": 1, "reliable": reliable}
    path.write_text(json.dumps(manifest, indent=2))
    return dst


def test_the_smallest_size_within_tolerance_is_compared_with_the_baseline(calibrated, tmp_path):
    base = _with_metrics(calibrated, tmp_path / "fixed", {16: 50.0, 24: 80.0, 32: 85.0}, {(32, 1): 2.0, (32, 32): 40.0})
    cand = _with_metrics(calibrated, tmp_path / "mixed", {16: 84.0, 24: 84.8, 32: 85.5},
                         {(16, 1): 1.0, (16, 32): 10.0, (24, 1): 1.5, (24, 32): 20.0, (32, 32): 30.0})
    m = method_alone(base, cand, "fixed", "mixed", tolerance=0.3)
    assert m.baseline_size == 32 and m.baseline_top1 == 85.0
    assert (m.candidate_size, m.candidate_top1) == (24, 84.8)  # 16 px is 1 pt below: decidedly not within 0.3
    assert m.comparison.verdict == "within" and m.comparison.paired and m.comparison.images == 10_000
    assert m.comparison.difference == pytest.approx(-0.2) and m.comparison.low > -0.3
    assert m.undecided_size is None  # 16 px is decided: worse
    assert m.latency_ratio == {1: pytest.approx(2.0 / 1.5), 32: pytest.approx(2.0)}
    assert m.latency_reliable == {1: True, 32: True}
    # FLOPs counted on the model: 32 px costs about (32/24)^2 of 24 px (the classifier adds a little)
    assert 1.6 < m.flops_ratio < (32 / 24) ** 2 + 0.01
    # the candidate's own bench timed 32 and 24 px together at batch 32 (same architecture): 30 / 20
    assert m.same_bench_ratio == {32: pytest.approx(1.5)}
    text = describe(m)
    assert "24 px" in text and "2.00x at batch 32" in text and "own bench" in text and "1.50x at batch 32" in text
    assert "within 0.3 pt: -0.20 pt [" in text and "paired on 10000 images" in text and "85.00% [84.29, 85.69]" in text
    paths = write_method_alone(m, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["candidate_size"] == 24


def test_no_candidate_within_tolerance_says_so_and_busy_latencies_are_marked(calibrated, tmp_path):
    base = _with_metrics(calibrated, tmp_path / "fixed", {32: 90.0}, {(32, 1): 2.0})
    cand = _with_metrics(calibrated, tmp_path / "mixed", {16: 80.0, 24: 89.0, 32: 89.8}, {(32, 1): 1.0}, reliable=False)
    m = method_alone(base, cand, tolerance=0.1)  # 32 px is 0.2 pt below, decidedly (-0.29 .. -0.11)
    assert m.candidate_size is None and "within 0.1 pt" in m.note
    m = method_alone(base, cand, tolerance=0.3)
    assert m.candidate_size == 32 and m.latency_reliable == {1: False}
    assert "unreliable" in describe(m)


def test_a_size_the_images_cannot_decide_is_named_with_the_images_that_would(calibrated, tmp_path):
    # 2,000 images: 24 px is 0.2 pt below the baseline (4 images); the interval [-0.46, +0.04] straddles -0.3.
    base = _with_metrics(calibrated, tmp_path / "fixed", {32: 90.0}, {(32, 1): 2.0}, images=2000)
    cand = _with_metrics(calibrated, tmp_path / "mixed", {16: 60.0, 24: 89.8, 32: 90.0}, {(32, 1): 2.0, (24, 1): 1.5}, images=2000)
    m = method_alone(base, cand, tolerance=0.3)
    assert m.candidate_size == 32  # identical per-image results: within
    assert m.undecided_size == 24 and m.undecided_comparison.verdict == "undecided"
    assert m.undecided_comparison.images_needed == pytest.approx(7668, rel=0.01)  # 1.96^2 * (4/2000 - 0.002^2) / 0.001^2
    assert "candidate at 24 px: undecided 0.3 pt" in describe(m) and "images would decide it" in describe(m)


def test_flops_scale_with_area(calibrated):
    from mmdeploy.bundle import Bundle

    bundle = Bundle.open(calibrated)
    assert model_flops(bundle, 32) > 3.5 * model_flops(bundle, 16)


def test_a_baseline_without_accuracy_at_its_training_size_is_a_user_error(calibrated, tmp_path):
    from mmdeploy.errors import MMDeployError

    base = _with_metrics(calibrated, tmp_path / "fixed", {16: 50.0}, {})
    with pytest.raises(MMDeployError, match="no ort fp32 accuracy at its training size"):
        method_alone(base, base)
