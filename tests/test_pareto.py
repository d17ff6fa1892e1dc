"""Pareto front, speed-up at iso-accuracy, picking a deployment point and joining measurements."""

from __future__ import annotations

import math

import pytest

from mmdeploy.errors import MMDeployError
from mmdeploy.report.pareto import (
    build_points,
    default_reference,
    pareto_front,
    pick,
    speedup_at_iso_accuracy,
)
from mmdeploy.results import AccuracyResult, LatencyResult, Point, PointKey


def _point(size: int, engine: str, precision: str, top1: float, latency_ms: float) -> Point:
    return Point(size=size, engine=engine, precision=precision, batch=1, top1=top1, latency_ms=latency_ms)


def _labels(points: list[Point]) -> list[str]:
    return [p.key.label for p in points]


@pytest.fixture
def plane() -> list[Point]:
    return [
        _point(224, "torch", "fp32", 76.0, 10.0),  # the reference; dominated by 224/ort/fp32
        _point(224, "ort", "fp32", 76.0, 6.0),  # as accurate and faster
        _point(160, "ort", "fp16", 75.7, 3.0),
        _point(160, "torch", "fp32", 75.7, 5.0),  # dominated by 160/ort/fp16
        _point(128, "ort", "fp16", 73.0, 2.0),
        _point(128, "torch", "fp32", 72.0, 2.5),  # dominated by 128/ort/fp16
    ]


def test_front_keeps_only_undominated_points_fastest_first(plane):
    front = pareto_front(plane)
    assert _labels(front) == ["128/ort/fp16", "160/ort/fp16", "224/ort/fp32"]
    assert {p.key.label for p in plane if p.on_front} == set(_labels(front))
    # Equal accuracy but slower is dominated.
    assert not next(p for p in plane if p.key == PointKey(224, "torch", "fp32")).on_front


def test_identical_points_both_stay_on_front():
    a = _point(160, "ort", "fp32", 75.0, 3.0)
    b = _point(160, "trt", "fp32", 75.0, 3.0)
    slower = _point(224, "torch", "fp32", 74.0, 4.0)
    assert _labels(pareto_front([a, b, slower])) == ["160/ort/fp32", "160/trt/fp32"]
    assert a.on_front and b.on_front and not slower.on_front


def test_single_point_and_empty_list():
    only = _point(160, "torch", "fp32", 70.0, 1.0)
    assert pareto_front([only]) == [only] and only.on_front
    assert pareto_front([]) == []


def test_front_flag_is_recomputed():
    stale = _point(160, "torch", "fp32", 70.0, 5.0)
    stale.on_front = True
    pareto_front([stale, _point(160, "ort", "fp32", 71.0, 1.0)])
    assert not stale.on_front


def test_speedup_at_iso_accuracy_uses_training_size_reference(plane):
    result = speedup_at_iso_accuracy(plane, training_size=224)
    assert result.reference.key == PointKey(224, "torch", "fp32")
    # 160/ort/fp16 loses 0.3 pt <= 0.5 and is the fastest such point.
    assert result.best.key == PointKey(160, "ort", "fp16")
    assert result.speedup == pytest.approx(10.0 / 3.0)


def test_speedup_tolerance_and_explicit_reference(plane):
    strict = speedup_at_iso_accuracy(plane, tolerance=0.0, training_size=224)
    assert strict.best.key == PointKey(224, "ort", "fp32")
    assert strict.speedup == pytest.approx(10.0 / 6.0)
    loose = speedup_at_iso_accuracy(plane, reference=PointKey(160, "torch", "fp32"), tolerance=3.0)
    assert loose.reference.key == PointKey(160, "torch", "fp32")
    assert loose.best.key == PointKey(128, "ort", "fp16")
    assert loose.speedup == pytest.approx(2.5)
    with pytest.raises(MMDeployError, match="not measured"):
        speedup_at_iso_accuracy(plane, reference=PointKey(999, "torch", "fp32"))


def test_default_reference_fallbacks(plane):
    assert default_reference(plane, training_size=160).key == PointKey(160, "torch", "fp32")
    # Training size not measured: torch fp32 at the largest size.
    assert default_reference(plane, training_size=192).key == PointKey(224, "torch", "fp32")
    assert default_reference(plane).key == PointKey(224, "torch", "fp32")
    # No eager fp32 at all: the most accurate point, the slowest among equals.
    no_torch = [p for p in plane if p.engine != "torch"] + [_point(96, "trt", "fp16", 76.0, 8.0)]
    assert default_reference(no_torch).key == PointKey(96, "trt", "fp16")
    with pytest.raises(MMDeployError):
        default_reference([])


def test_pick_with_latency_budget_prefers_accuracy_then_speed(plane):
    assert pick(plane, latency_budget_ms=5.0).key == PointKey(160, "ort", "fp16")  # 75.7 at 3 ms beats 75.7 at 5 ms
    assert pick(plane, latency_budget_ms=2.0).key == PointKey(128, "ort", "fp16")


def test_pick_with_min_accuracy_prefers_speed(plane):
    assert pick(plane, min_accuracy=75.5).key == PointKey(160, "ort", "fp16")
    assert pick(plane, min_accuracy=76.0).key == PointKey(224, "ort", "fp32")


def test_pick_with_both_constraints_and_none(plane):
    assert pick(plane, latency_budget_ms=6.0, min_accuracy=72.5).key == PointKey(128, "ort", "fp16")
    assert pick(plane).key == PointKey(224, "ort", "fp32")  # most accurate, then faster


def test_pick_infeasible_raises_with_hint(plane):
    with pytest.raises(MMDeployError) as info:
        pick(plane, latency_budget_ms=2.5, min_accuracy=75.0)
    assert "2.5 ms" in info.value.message and "75%" in info.value.message
    assert "128/ort/fp16" in info.value.hint  # the fastest point is named
    with pytest.raises(MMDeployError):
        pick([], min_accuracy=1.0)


def _accuracy(size, engine, precision, top1, calibrated=True) -> AccuracyResult:
    return AccuracyResult(size, engine, precision, top1=top1, top5=top1 + 15, images=1000, calibrated=calibrated)


def _latency(size, engine, precision, p50, batch=1) -> LatencyResult:
    throughput = batch * 1000 / p50 if p50 > 0 else 0.0
    return LatencyResult(
        size, engine, precision, batch, p50_ms=p50, p90_ms=p50 * 1.1, p99_ms=p50 * 1.3,
        mean_ms=p50, throughput=throughput, iters=100,
    )  # fmt: skip


def test_build_points_joins_calibrated_results_at_the_batch():
    accuracies = [
        _accuracy(224, "torch", "fp32", 76.0),
        _accuracy(160, "torch", "fp32", 70.0, calibrated=False),  # the checkpoint's own BN: ignored
        _accuracy(160, "torch", "fp32", 75.5),
        _accuracy(160, "ort", "fp16", 75.4),
        _accuracy(128, "ort", "fp16", 73.0),  # no latency: left out
    ]
    latencies = [
        _latency(224, "torch", "fp32", 8.0),
        _latency(224, "torch", "fp32", 50.0, batch=8),  # other batch: ignored
        _latency(160, "torch", "fp32", 4.0),
        _latency(160, "ort", "fp16", 2.0),
        _latency(96, "ort", "fp16", 1.0),  # no accuracy: left out
    ]
    points = build_points(accuracies, latencies, batch=1, training_size=224)
    assert _labels(points) == ["160/ort/fp16", "160/torch/fp32", "224/torch/fp32"]
    by_label = {p.key.label: p for p in points}
    assert by_label["160/torch/fp32"].top1 == 75.5
    assert by_label["224/torch/fp32"].latency_ms == 8.0
    assert [p.relative_latency for p in points] == pytest.approx([0.25, 0.5, 1.0])
    assert all(p.batch == 1 for p in points)
    # 75.4, 75.5 and 76.0% on 1,000 images are inside each other's noise: no slower point buys decided accuracy.
    assert [p.on_front for p in points] == [True, False, False]
    assert by_label["160/ort/fp16"].extra["p99_ms"] == pytest.approx(2.6)
    assert by_label["160/ort/fp16"].extra["images"] == 1000
    assert by_label["160/ort/fp16"].extra["top1_ci"] == pytest.approx([72.64, 77.97], abs=0.01)  # Wilson, 754/1000


def test_build_points_reference_follows_training_size():
    accuracies = [_accuracy(224, "torch", "fp32", 76.0), _accuracy(160, "torch", "fp32", 75.0)]
    latencies = [_latency(224, "torch", "fp32", 8.0), _latency(160, "torch", "fp32", 4.0)]
    points = build_points(accuracies, latencies, batch=1, training_size=160)
    assert [p.relative_latency for p in points] == pytest.approx([1.0, 2.0])


def test_build_points_empty_and_bad_input():
    assert build_points([], [], batch=1) == []
    with pytest.raises(MMDeployError, match="two"):
        build_points([_accuracy(160, "ort", "fp32", 1.0)] * 2, [_latency(160, "ort", "fp32", 1.0)], batch=1)
    with pytest.raises(MMDeployError, match="latency"):
        build_points([_accuracy(160, "ort", "fp32", 1.0)], [_latency(160, "ort", "fp32", 0.0)], batch=1)
    with pytest.raises(MMDeployError, match="latency"):
        speedup_at_iso_accuracy([_point(160, "torch", "fp32", 1.0, 0.0)])
    assert math.isnan(_point(1, "ort", "fp32", 1.0, 1.0).relative_latency)  # unset until joined


def test_build_points_carries_the_accuracy_before_calibration():
    from mmdeploy.report.pareto import build_points
    from mmdeploy.results import AccuracyResult, LatencyResult

    accs = [AccuracyResult(24, "torch", "fp32", 80.0, 99.0, 100, True), AccuracyResult(24, "ort", "fp32", 80.0, 99.0, 100, True),
            AccuracyResult(24, "torch", "fp32", 71.5, 97.0, 100, False)]
    lats = [LatencyResult(24, e, "fp32", 1, ms, ms, ms, ms, 1000 / ms, 5) for e, ms in (("torch", 2.0), ("ort", 1.0))]
    points = build_points(accs, lats, batch=1, training_size=24)
    assert [p.extra["top1_uncalibrated"] for p in points] == [71.5, 71.5]
    assert len(points) == 2, "the uncalibrated result is not a point of its own"
