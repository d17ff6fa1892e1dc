"""The accuracy/latency plane: join measurements into points, find the Pareto front,
measure the speed-up at iso-accuracy and pick the point to deploy.

Every function here takes and returns the typed results of :mod:`mmdeploy.results`.
Accuracy is top-1 in percent (higher is better), latency is p50 in milliseconds (lower is
better). The *reference* point is the baseline every speed-up and every relative latency is
measured against: eager torch fp32, as the design asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from mmdeploy.errors import MMDeployError
from mmdeploy.report_values import check_threshold
from mmdeploy.results import AccuracyResult, LatencyResult, Point, PointKey

REFERENCE_ENGINE = "torch"
REFERENCE_PRECISION = "fp32"

# The stable order of points in tables and diffs; works on Point and PointKey alike.
point_order = attrgetter("size", "engine", "precision")


@dataclass
class IsoAccuracySpeedup:
    """How much faster than the reference one can go while losing at most ``tolerance``
    points of top-1 accuracy."""

    reference: Point
    best: Point  # the fastest point with top1 >= reference.top1 - tolerance
    speedup: float  # reference.latency_ms / best.latency_ms
    tolerance: float  # accuracy points


def _dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` in both accuracy and latency and better in one."""
    at_least_as_good = a.top1 >= b.top1 and a.latency_ms <= b.latency_ms
    strictly_better = a.top1 > b.top1 or a.latency_ms < b.latency_ms
    return at_least_as_good and strictly_better


def pareto_front(points: list[Point]) -> list[Point]:
    """Mark each point's ``on_front`` and return the front, fastest first.

    Points with identical accuracy and latency do not dominate each other, so all of
    them stay on the front.
    """
    for point in points:
        point.on_front = not any(_dominates(other, point) for other in points)
    front = [p for p in points if p.on_front]
    return sorted(front, key=lambda p: (p.latency_ms, -p.top1))


def default_reference(points: list[Point], training_size: int | None = None) -> Point:
    """The baseline point: torch fp32 at ``training_size`` if measured, else torch fp32 at the
    largest measured size, else the most accurate point (the slowest among equals)."""
    if not points:
        raise MMDeployError(
            "no points to take a reference from",
            "measure accuracy (mmdeploy eval) and latency (mmdeploy bench) first",
        )
    eager = [p for p in points if (p.engine, p.precision) == (REFERENCE_ENGINE, REFERENCE_PRECISION)]
    at_training_size = [p for p in eager if p.size == training_size]
    if at_training_size:
        return at_training_size[0]
    if eager:
        return max(eager, key=lambda p: p.size)
    return max(points, key=lambda p: (p.top1, p.latency_ms))


def _find(points: list[Point], key: PointKey) -> Point:
    for point in points:
        if point.key == key:
            return point
    known = ", ".join(sorted(p.key.label for p in points)) or "none"
    raise MMDeployError(f"reference point {key.label} was not measured", f"measured points: {known}")


def speedup_at_iso_accuracy(
    points: list[Point],
    reference: PointKey | None = None,
    tolerance: float = 0.5,
    training_size: int | None = None,
) -> IsoAccuracySpeedup:
    """The fastest point within ``tolerance`` top-1 points of the reference, and its speed-up.

    ``reference`` defaults to :func:`default_reference` (using ``training_size``).
    """
    check_threshold(tolerance, "--tolerance", "0.5")
    ref = _find(points, reference) if reference is not None else default_reference(points, training_size)
    _check_latencies(points)
    # The reference itself qualifies, so there is always a candidate.
    candidates = [p for p in points if p.top1 >= ref.top1 - tolerance]
    best = min(candidates, key=lambda p: (p.latency_ms, -p.top1))
    return IsoAccuracySpeedup(ref, best, ref.latency_ms / best.latency_ms, tolerance)


def _describe(point: Point) -> str:
    return f"{point.key.label} ({point.top1:.2f}%, {point.latency_ms:.3g} ms)"


def pick(
    points: list[Point],
    latency_budget_ms: float | None = None,
    min_accuracy: float | None = None,
) -> Point:
    """The point to deploy.

    - a latency budget only: the most accurate point within it (ties: the faster);
    - a minimum accuracy (with or without a budget): the fastest point meeting every
      constraint (ties: the more accurate);
    - no constraint: the most accurate point (ties: the faster).

    Raises :class:`MMDeployError` when no point meets the constraints.
    """
    if not points:
        raise MMDeployError("no points to pick from", "measure accuracy and latency first")
    feasible = [
        p
        for p in points
        if (latency_budget_ms is None or p.latency_ms <= latency_budget_ms)
        and (min_accuracy is None or p.top1 >= min_accuracy)
    ]
    if not feasible:
        wanted = []
        if latency_budget_ms is not None:
            wanted.append(f"p50 <= {latency_budget_ms:g} ms")
        if min_accuracy is not None:
            wanted.append(f"top-1 >= {min_accuracy:g}%")
        fastest = min(points, key=lambda p: (p.latency_ms, -p.top1))
        most_accurate = max(points, key=lambda p: (p.top1, -p.latency_ms))
        raise MMDeployError(
            f"no point meets {' and '.join(wanted)}",
            f"fastest is {_describe(fastest)}, most accurate is {_describe(most_accurate)}; "
            "relax the latency budget or the minimum accuracy",
        )
    if min_accuracy is None:
        return max(feasible, key=lambda p: (p.top1, -p.latency_ms))
    return min(feasible, key=lambda p: (p.latency_ms, -p.top1))


def _index_unique(results: list, what: str) -> dict[PointKey, object]:
    """Results by point key; two results for one key are ambiguous, so an error."""
    index: dict[PointKey, object] = {}
    for result in results:
        if result.key in index:
            raise MMDeployError(
                f"two {what} results for {result.key.label}",
                "keep one measurement per size, engine and precision",
            )
        index[result.key] = result
    return index


def build_points(
    accuracies: list[AccuracyResult],
    latencies: list[LatencyResult],
    batch: int,
    training_size: int | None = None,
) -> list[Point]:
    """Join calibrated accuracies with the latencies measured at ``batch``.

    A point needs both measurements; unmatched results are left out. Each point's
    ``relative_latency`` is its p50 over the reference point's p50 (see
    :func:`default_reference`), which makes comparisons across machines meaningful.
    ``on_front`` is set. Points come sorted by size, engine and precision.
    """
    accuracy = _index_unique([a for a in accuracies if a.calibrated], "calibrated accuracy")
    # The model's accuracy with the checkpoint's own BN statistics, per size: what calibration gained.
    before = {a.size: a.top1 for a in accuracies if not a.calibrated and a.engine == "torch" and a.precision == "fp32"}
    latency = _index_unique([t for t in latencies if t.batch == batch], f"batch-{batch} latency")
    points = []
    for key in sorted(accuracy.keys() & latency.keys(), key=point_order):
        acc, lat = accuracy[key], latency[key]
        points.append(
            Point(
                size=key.size,
                engine=key.engine,
                precision=key.precision,
                batch=batch,
                top1=acc.top1,
                latency_ms=lat.p50_ms,
                extra={"top5": acc.top5, "p90_ms": lat.p90_ms, "p99_ms": lat.p99_ms}
                | ({"top1_uncalibrated": before[key.size]} if key.size in before else {})
                | ({"settings": lat.policy} if lat.policy else {})
                | ({} if lat.reliable else {"unreliable": True, "noise": lat.noise}),
            )
        )
    if points:
        set_relative_latency(points, default_reference(points, training_size))
        pareto_front(points)
    return points


def _check_latencies(points: list[Point]) -> None:
    """Latencies are divided by; a zero, negative or NaN one is a broken measurement."""
    for point in points:
        if not point.latency_ms > 0:  # also catches NaN
            raise MMDeployError(
                f"{point.key.label} has a p50 latency of {point.latency_ms} ms",
                "re-run mmdeploy bench",
            )


def set_relative_latency(points: list[Point], reference: Point) -> None:
    """Set each point's ``relative_latency`` to its latency over the reference's."""
    _check_latencies(points)
    for point in points:
        point.relative_latency = point.latency_ms / reference.latency_ms
