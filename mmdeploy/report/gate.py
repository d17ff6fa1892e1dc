"""The CI gate: :func:`compare_reports` checks a new report against a baseline (absolute top-1, *relative* latency)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mmdeploy.errors import MMDeployError
from mmdeploy.latency.trust import latency_skip_reason
from mmdeploy.report.model import Report
from mmdeploy.report.pareto import point_order
from mmdeploy.report.values import check_threshold
from mmdeploy.results import PointKey
from mmdeploy.stats import Comparison, compare_points

FindingKind = Literal["accuracy-drop", "accuracy-undecided", "latency-regression", "missing-point", "new-point", "not-served-here"]
_FAILING_KINDS = ("accuracy-drop", "latency-regression", "missing-point")
UNDECIDED_CHOICES = ("pass", "fail")  # what an accuracy drop the images cannot decide does to the gate
# Thresholds are compared with a little slack, so a drop of exactly the limit passes
# despite floating-point rounding (76.1 - 75.6 = 0.5000000000000071).
_SLACK = 1e-9


@dataclass
class Finding:
    """One difference between a new report and its baseline."""

    key: PointKey
    kind: FindingKind
    old: float | None  # baseline top-1 % or relative latency; None if the point is new
    new: float | None  # new top-1 % or relative latency; None if the point is missing
    message: str
    comparison: Comparison | None = None  # new vs baseline top-1 on the same images (None: no image counts, bare numbers)
    strict: bool = False  # an accuracy-undecided finding under --undecided fail

    @property
    def fails(self) -> bool:
        return self.kind in _FAILING_KINDS or (self.kind == "accuracy-undecided" and self.strict)


@dataclass
class GateResult:
    passed: bool
    findings: list[Finding]  # failures and notes (new points), ordered by point
    compared: int  # points present in both reports
    latency_skipped: str = ""  # why relative latencies were not gated (a busy machine), "" if they were

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.fails]


def _check_comparable(new: Report, baseline: Report) -> None:
    if new.batch != baseline.batch:
        raise MMDeployError(
            f"the baseline was measured at batch {baseline.batch}, the new report at batch {new.batch}",
            "bench both at the same batch size",
        )
    if new.reference and baseline.reference and new.reference != baseline.reference:
        raise MMDeployError(
            f"relative latencies are not comparable: the baseline is relative to "
            f"{baseline.reference.label}, the new report to {new.reference.label}",
            "build both reports with the same reference (the same training size)",
        )
    for report, name in ((baseline, "baseline"), (new, "new report")):
        for point in report.points:
            if not math.isfinite(point.relative_latency):
                raise MMDeployError(
                    f"{point.key.label} in the {name} has no relative latency", "regenerate the report"
                )


def check_gate_thresholds(max_acc_drop: float, max_latency_regress: float, undecided: str = "pass") -> None:
    """Both thresholds finite and >= 0, and a known --undecided (checked before any work as well as by :func:`compare_reports`)."""
    check_threshold(max_acc_drop, "--max-acc-drop", "0.3")
    check_threshold(max_latency_regress, "--max-latency-regress", "15%")
    if undecided not in UNDECIDED_CHOICES:
        raise MMDeployError(f"--undecided {undecided!r}: not one of {', '.join(UNDECIDED_CHOICES)}", "use --undecided pass or --undecided fail")


def _accuracy_finding(key, old, current, max_acc_drop: float, undecided: str) -> Finding | None:
    """The top-1 verdict of one point: paired on the same images where both reports kept per-image results, as
    independent samples where they did not (said so), on the bare numbers where a report has no image counts."""
    cmp = compare_points(old, current, max_acc_drop)
    drop = old.top1 - current.top1
    if cmp is None:
        if drop > max_acc_drop + _SLACK:
            return Finding(key, "accuracy-drop", old.top1, current.top1,
                           f"top-1 {old.top1:.2f}% -> {current.top1:.2f}% (-{drop:.2f} pt; limit {max_acc_drop:g} pt; "
                           "no image counts in a report: compared without intervals)")
        return None
    change = f"top-1 {old.top1:.2f}% -> {current.top1:.2f}% ({cmp.interval()} at 95%, " + (
        f"paired on {cmp.images} images)" if cmp.paired else f"unpaired: no per-image results on the same images, {cmp.images} images)")
    if cmp.verdict == "worse":
        return Finding(key, "accuracy-drop", old.top1, current.top1, f"{change}: decidedly more than {max_acc_drop:g} pt lost", cmp)
    if cmp.verdict == "undecided":
        need = (f"~{cmp.images_needed} images would decide it" if cmp.images_needed
                else "the drop is exactly the limit, no sample size decides it")
        return Finding(key, "accuracy-undecided", old.top1, current.top1,
                       f"{change}: inside the noise for a {max_acc_drop:g} pt limit; {need}"
                       + ("" if undecided == "fail" else " (passes: --undecided pass)"), cmp, strict=undecided == "fail")
    return None


def compare_reports(
    new: Report, baseline: Report, max_acc_drop: float, max_latency_regress: float, undecided: str = "pass"
) -> GateResult:
    """Gate ``new`` on ``baseline``.

    Top-1 is compared on the same images (:func:`mmdeploy.stats.compare_top1`): a point fails when
    the 95% interval of its top-1 change lies wholly below -``max_acc_drop`` (a drop that is both
    significant and beyond the limit); a change whose interval lies above it passes; one whose
    interval straddles it is *undecided*: noted with the images that would decide it, and a
    failure only with ``undecided="fail"``. A point also fails when its relative latency grew by
    more than the fraction ``max_latency_regress`` (0.15 = 15%), or when it is in the baseline but
    not in the new report. New points are noted, not failed.
    """
    check_gate_thresholds(max_acc_drop, max_latency_regress, undecided)
    _check_comparable(new, baseline)
    skip_latency = latency_skip_reason(new, baseline)
    old_points = {p.key: p for p in baseline.points}
    new_points = {p.key: p for p in new.points}
    findings = []
    for key in sorted(old_points.keys() | new_points.keys(), key=point_order):
        old, current = old_points.get(key), new_points.get(key)
        if current is None:
            findings.append(
                Finding(key, "missing-point", old.top1, None, "in the baseline, missing from the new report")
            )
            continue
        if old is None:
            findings.append(Finding(key, "new-point", None, current.top1, "new in this report (not gated)"))
            continue
        if (accuracy := _accuracy_finding(key, old, current, max_acc_drop, undecided)) is not None:
            findings.append(accuracy)
        regress = current.relative_latency / old.relative_latency - 1
        if not skip_latency and regress > max_latency_regress + _SLACK:
            findings.append(
                Finding(
                    key,
                    "latency-regression",
                    old.relative_latency,
                    current.relative_latency,
                    f"relative latency {old.relative_latency:.3f} -> {current.relative_latency:.3f} "
                    f"(+{regress:.1%}; limit {max_latency_regress:.1%})",
                )
            )
    compared = len(old_points.keys() & new_points.keys())
    return GateResult(not any(f.fails for f in findings), findings, compared, skip_latency)


def format_gate(result: GateResult) -> str:
    """One line per finding, then a PASS/FAIL summary line."""
    width = max((len(f.key.label) for f in result.findings), default=0)
    lines = [
        f"{'FAIL' if f.fails else 'note'}  {f.kind:<18}  {f.key.label:<{width}}  {f.message}"
        for f in result.findings
    ]
    undecided = sum(f.kind == "accuracy-undecided" and not f.fails for f in result.findings)
    if result.latency_skipped:
        lines.append(f"skip  {result.latency_skipped}")
    failures = len(result.failures)
    if result.passed:
        lines.append(f"PASS: {result.compared} points compared, no regressions" + (" (accuracy only)" if result.latency_skipped else "")
                     + (f"; {undecided} accuracy change{'s' if undecided != 1 else ''} undecided (see notes)" if undecided else ""))
    else:
        lines.append(f"FAIL: {failures} finding{'s' if failures != 1 else ''} in {result.compared} points compared")
    return "\n".join(lines)


def parse_fraction(text: str | float) -> float:
    """A threshold given as ``"15%"`` or ``"0.15"`` (or a number) as the fraction 0.15."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.removesuffix("%").strip())
    except ValueError:
        raise MMDeployError(f"not a fraction: {text!r}", "write e.g. 15% or 0.15") from None
    if percent:
        value /= 100
    elif value > 1:
        # "15" almost certainly means 15%, not 1500%; make the user say which.
        raise MMDeployError(f"ambiguous fraction {text!r}", f"write {raw}% or {value / 100:g}")
    if not math.isfinite(value) or value < 0:
        raise MMDeployError(f"not a non-negative fraction: {text!r}", "write e.g. 15% or 0.15")
    return value
