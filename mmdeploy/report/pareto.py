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
from mmdeploy.report.values import check_threshold
from mmdeploy.results import AccuracyResult, LatencyResult, Point, PointKey
from mmdeploy.stats import Comparison, Top1, at_least, compare_points, ratio_interval, significantly_better

REFERENCE_ENGINE = "torch"
REFERENCE_PRECISION = "fp32"

# The stable order of points in tables and diffs; works on Point and PointKey alike.
point_order = attrgetter("size", "engine", "precision")


@dataclass
class IsoAccuracySpeedup:
    """How much faster than the reference one can go while losing at most ``tolerance``
    points of top-1 accuracy."""

    reference: Point
    best: Point  # the fastest point decidedly within tolerance of the reference (see speedup_at_iso_accuracy)
    speedup: float  # reference.latency_ms / best.latency_ms
    tolerance: float  # accuracy points
    comparison: Comparison | None = None  # best vs reference on the same images; None: no image counts (old report)
    speedup_ci: list[float] | None = None  # from the two p50 intervals (mmdeploy.stats.ratio_interval)
    undecided: Point | None = None  # the fastest point, faster than best, that the images could not decide
    undecided_comparison: Comparison | None = None


def _dominates(a: Point, b: Point) -> bool:
    """``a`` is no slower than ``b``, ``b`` is not decidedly more accurate (paired, 95%: a gain inside the noise does
    not pay for latency), and ``a`` is better in one of the two numbers."""
    if a.latency_ms > b.latency_ms or significantly_better(a, b):
        return False
    if a.latency_ms < b.latency_ms:
        return True
    return a.top1 > b.top1  # equally fast: the more accurate numbers win


def pareto_front(points: list[Point]) -> list[Point]:
    """Mark each point's ``on_front`` and return the front, fastest first.

    A slower point stays on the front only when it is decidedly more accurate (paired on the
    same images, 95%) than every faster point. Points with identical accuracy and latency do
    not dominate each other, so all of them stay on the front.
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

    "Within" is decided on the same images (:func:`mmdeploy.stats.compare_top1`): the 95% interval
    of the point's top-1 minus the reference's lies above -``tolerance``. A faster point the images
    cannot decide is kept as ``undecided``, with the images that would decide it. Points without
    image counts (reports from before they were kept) are compared on the bare numbers.
    ``reference`` defaults to :func:`default_reference` (using ``training_size``).
    """
    check_threshold(tolerance, "--tolerance", "0.5")
    ref = _find(points, reference) if reference is not None else default_reference(points, training_size)
    _check_latencies(points)
    verdicts = {}
    for p in points:
        cmp = None if p is ref else compare_points(ref, p, tolerance)
        verdict = cmp.verdict if cmp else ("within" if p.top1 >= ref.top1 - tolerance else "worse")
        verdicts[p.key] = (verdict, cmp)
    fastest = lambda ps: min(ps, key=lambda p: (p.latency_ms, -p.top1))  # noqa: E731
    # The reference itself qualifies, so there is always a candidate.
    best = fastest([p for p in points if verdicts[p.key][0] == "within"])
    open_ = [p for p in points if verdicts[p.key][0] == "undecided" and p.latency_ms < best.latency_ms]
    undecided = fastest(open_) if open_ else None
    return IsoAccuracySpeedup(ref, best, ref.latency_ms / best.latency_ms, tolerance, verdicts[best.key][1],
                              [1.0, 1.0] if best is ref else ratio_interval(ref.extra.get("p50_ci_ms"), best.extra.get("p50_ci_ms")),
                              undecided, verdicts[undecided.key][1] if undecided else None)


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
      constraint (ties: the more accurate); where its image count is known, its Wilson interval
      against the minimum is attached as ``extra["min_accuracy_check"]`` (within: met at 95%;
      undecided: with the images that would decide it);
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
    chosen = min(feasible, key=lambda p: (p.latency_ms, -p.top1))
    if Top1.of(chosen).images > 0:  # does its true top-1 meet the minimum, at 95%? (within / worse / undecided)
        chosen.extra["min_accuracy_check"] = at_least(Top1.of(chosen), min_accuracy)
    return chosen


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
                extra={"top5": acc.top5, "p90_ms": lat.p90_ms, "p99_ms": lat.p99_ms, "images": acc.images, "top1_ci": acc.top1_ci}
                | ({"p50_ci_ms": list(lat.p50_ci_ms)} if lat.p50_ci_ms else {})
                | ({"image_set": acc.image_set, "correct": acc.correct} if acc.correct else {})
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
        ci = ratio_interval(point.extra.get("p50_ci_ms"), reference.extra.get("p50_ci_ms"))
        if ci is not None and point is not reference:
            point.extra["relative_latency_ci"] = list(ci)
        else:
            point.extra.pop("relative_latency_ci", None)
