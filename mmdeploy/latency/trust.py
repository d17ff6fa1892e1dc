"""Whether a report's latencies can be trusted, and how each point was run: used by the report and the CI gate.

``mmdeploy bench`` marks a point ``unreliable`` (``Point.extra``) when the machine was busy
while it was timed or its own p90/p50 was too wide (:mod:`mmdeploy.latency.noise`). Such latencies are
shown with a mark, the speed-up headline built on them carries a warning, and the CI gate does
not pass or fail on them: it says in one line that it skipped latency, and why.
"""

from __future__ import annotations

UNRELIABLE_MARK = "!"


def is_unreliable(point) -> bool:
    return bool(point.extra.get("unreliable"))


def settings_label(point) -> str:
    """The thread policy the point ran under, e.g. ``1t``, ``2t spin``; ``-`` if not recorded."""
    s = point.extra.get("settings") or {}
    if "threads" not in s:
        return "-"
    if s.get("preset"):  # a library's own defaults (or OpenVINO's throughput hint alone), named as such
        return f"{s['preset']}{' cpu precision' if s.get('precision_hint') == 'cpu' else ''}{' (tuned)' if s.get('source') == 'tuned' else ''}"
    return f"{s['threads']}t{' spin' if s.get('spinning') else ''}{' (tuned)' if s.get('source') == 'tuned' else ''}"


def latency_cell(point) -> str:
    return f"{point.latency_ms:.3f}" + (f" {UNRELIABLE_MARK}" if is_unreliable(point) else "")


def _busy_phrase(report) -> str:
    summary = report.environment.get("interference_summary")
    if summary:
        return summary
    spreads = [p.extra.get("noise", {}).get("spread") for p in report.points if is_unreliable(p)]
    spreads = [s for s in spreads if isinstance(s, (int, float))]
    return f"p90/p50 up to {max(spreads):.1f}x" if spreads else "interference recorded by bench"


def speedup_warning(report) -> str:
    """"" if the headline's reference and best point are reliable, else why the headline cannot be trusted."""
    speedup = report.speedup
    if speedup is None or not (is_unreliable(speedup.reference) or is_unreliable(speedup.best)):
        return ""
    which = [label for p, label in ((speedup.reference, "the reference"), (speedup.best, "the best point")) if is_unreliable(p)]
    verb = "were" if len(which) == 2 else "was"
    return f"UNRELIABLE ({' and '.join(which)} {verb} timed on a busy machine: {_busy_phrase(report)}; re-run `mmdeploy bench` on a quiet machine)"


def _not_comparable(new, baseline) -> str:
    """Why two reports' relative latencies cannot be compared ("" if they can): ratios between engines
    depend on the CPU (its vector units decide how much faster ONNX Runtime is than torch) and on
    the timing protocol."""
    for field, what in (("cpu", "CPU"), ("cpu_count", "core count"), ("bench_protocol", "timing protocol")):
        old, cur = baseline.environment.get(field), new.environment.get(field)
        if old != cur and not (old is None and cur is None):
            return (f"latency comparison skipped: the baseline was benchmarked with {what} {old if old is not None else 'unknown'}, "
                    f"this run with {cur if cur is not None else 'unknown'} (relative latencies are not comparable; "
                    "regenerate the baseline on this kind of machine); accuracy still gated")
    return ""


def latency_skip_reason(new, baseline) -> str:
    """"" if relative latencies may be gated, else one line saying why the latency comparison is skipped."""
    different = _not_comparable(new, baseline)
    if different:
        return different
    for report, which in ((new, "this run"), (baseline, "the baseline")):
        bad = [p for p in report.points if is_unreliable(p)]
        if bad:
            ref_bad = any(p.key == report.reference for p in bad)
            return (f"latency comparison skipped: the machine was busy while {which} was benchmarked ({_busy_phrase(report)}; "
                    f"{len(bad)} of {len(report.points)} points unreliable{', the reference among them' if ref_bad else ''}); "
                    "accuracy still gated")
    return ""
