"""Range checks of the numbers in a ``report.json`` and of the thresholds compared with them, so a baseline
cannot pass the CI gate on garbage.

The JSON schema check in :mod:`mmdeploy.report` makes sure each field has the right type; a
NaN top-1 compares false with everything (so it never "dropped"), a relative latency of 0
divides by zero, and negative accuracies are nonsense: each is refused here, naming the field.
"""

from __future__ import annotations

import math

from mmdeploy.errors import MMDeployError

# field -> (lowest, highest, lowest allowed itself?); None = unbounded
_POINT_RANGES = {
    "size": (1, None, True),
    "batch": (1, None, True),
    "top1": (0.0, 100.0, True),
    "latency_ms": (0.0, None, False),
    "relative_latency": (0.0, None, False),
}
_EXTRA_RANGES = {"top1_uncalibrated": (0.0, 100.0, True), "top5": (0.0, 100.0, True)}
_SPEEDUP_RANGES = {"speedup": (0.0, None, False), "tolerance": (0.0, None, True)}


def _problem(value: object, bounds: tuple, where: str) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # absence and types are the schema check's business
    low, high, low_ok = bounds
    if not math.isfinite(value):
        return f"{where} is {value} (must be a finite number)"
    if low is not None and (value < low or (value == low and not low_ok)):
        return f"{where} is {value:g} (must be {'>=' if low_ok else '>'} {low:g})"
    if high is not None and value > high:
        return f"{where} is {value:g} (must be <= {high:g})"
    return None


def point_problem(point: dict, where: str) -> str | None:
    """The first out-of-range number of one point of a report, or None."""
    checks = [(point.get(k), r, f"{where}.{k}") for k, r in _POINT_RANGES.items()]
    extra = point.get("extra") if isinstance(point.get("extra"), dict) else {}
    checks += [(extra.get(k), r, f"{where}.extra.{k}") for k, r in _EXTRA_RANGES.items()]
    return next((p for p in (_problem(*c) for c in checks) if p), None)


def report_problem(report: dict) -> str | None:
    """The first out-of-range number of a report's own fields (batch, speed-up), or None."""
    checks = [(report.get("batch"), (1, None, True), "batch")]
    speedup = report.get("speedup") if isinstance(report.get("speedup"), dict) else {}
    checks += [(speedup.get(k), r, f"speedup.{k}") for k, r in _SPEEDUP_RANGES.items()]
    return next((p for p in (_problem(*c) for c in checks) if p), None)


def check_threshold(value: float, flag: str, example: str) -> float:
    """``value`` if it is a finite number >= 0, else a one-line error naming ``flag``: a NaN threshold compares false
    with everything (so nothing ever fails the gate), an infinite one passes anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MMDeployError(f"{flag} must be a finite number >= 0 (got {value!r})", f"e.g. {flag} {example}")
    return value
