"""The method-alone comparison: what the input size alone buys once a mixed-size model is calibrated.

A fixed-size baseline at its training size is set against the *smallest* calibrated size of the
mixed-size model whose top-1 is decidedly within ``tolerance`` points of it (paired on the same images,
:func:`mmdeploy.stats.compare_top1`; a smaller size the images cannot decide is named, with the images
that would decide it), on the same engine and
precision, so the only thing that differs is the input resolution (the MixSize paper's claim:
ResNet-50 at 160 px matching the 224 px baseline). The latency ratio comes from the two bundles'
benches at each batch both measured; the FLOPs ratio is counted on the two models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmdeploy.errors import MMDeployError
from mmdeploy.stats import Comparison, Top1, compare_top1, ratio_interval


@dataclass
class MethodAlone:
    baseline: str  # model names as in the run config
    candidate: str
    engine: str
    precision: str
    tolerance: float  # top-1 points
    baseline_size: int
    baseline_top1: float
    candidate_size: int | None = None  # None: no calibrated size of the candidate is within tolerance
    candidate_top1: float | None = None
    flops_ratio: float | None = None  # baseline FLOPs / candidate FLOPs (per image)
    latency_ratio: dict[int, float] = field(default_factory=dict)  # batch -> baseline p50 / candidate p50
    latency_reliable: dict[int, bool] = field(default_factory=dict)  # batch -> both latencies taken on a quiet machine
    # batch -> the candidate's own p50 at the baseline's size / at its chosen size, where one bench timed both (same
    # architecture only): no spread between two bundles' benches in it
    same_bench_ratio: dict[int, float] = field(default_factory=dict)
    note: str = ""
    images: int = 0  # the baseline's top-1 image count
    baseline_top1_ci: list[float] | None = None  # 95% Wilson intervals, percent
    candidate_top1_ci: list[float] | None = None
    comparison: Comparison | None = None  # candidate - baseline on the same images (mmdeploy.stats.compare_top1)
    latency_ratio_ci: dict[int, list[float]] = field(default_factory=dict)  # batch -> interval of latency_ratio
    undecided_size: int | None = None  # the smallest size below candidate_size that the images could not decide
    undecided_comparison: Comparison | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _results(bundle_dir: Path):
    from mmdeploy.bundle import Bundle
    from mmdeploy.report import results_from_bundle

    bundle = Bundle.open(bundle_dir)
    accuracies, latencies = results_from_bundle(bundle)
    return bundle, accuracies, latencies


def model_flops(bundle, size: int) -> int:
    """Forward FLOPs of one image at ``size`` (2 per multiply-add), counted by torch's own counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = bundle.build_model(size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def method_alone(baseline_dir: Path, candidate_dir: Path, baseline: str = "baseline", candidate: str = "candidate",
                 engine: str = "ort", precision: str = "fp32", tolerance: float = 0.3) -> MethodAlone:
    """Compare ``baseline`` at its training size with the smallest calibrated ``candidate`` size within ``tolerance``."""
    if tolerance < 0:
        raise MMDeployError(f"method-alone tolerance must not be negative, got {tolerance}", "use e.g. 0.3")
    base_bundle, base_acc, base_lat = _results(Path(baseline_dir))
    cand_bundle, cand_acc, cand_lat = _results(Path(candidate_dir))
    size = base_bundle.training_size
    ref = [a for a in base_acc if a.calibrated and (a.size, a.engine, a.precision) == (size, engine, precision)]
    if not ref:
        raise MMDeployError(f"model {baseline}: no {engine} {precision} accuracy at its training size {size}",
                            f"evaluate it (mmdeploy eval --engine {engine} --precision {precision}), or pick another engine")
    result = MethodAlone(baseline, candidate, engine, precision, tolerance, size, ref[0].top1, images=ref[0].images,
                         baseline_top1_ci=ref[0].top1_ci)
    # Each calibrated size against the baseline on the same images: within, worse or undecided (mmdeploy.stats).
    verdicts = sorted(((a, compare_top1(Top1.of(ref[0]), Top1.of(a), tolerance)) for a in cand_acc
                       if a.calibrated and (a.engine, a.precision) == (engine, precision)), key=lambda ac: ac[0].size)
    within = [(a, c) for a, c in verdicts if c.verdict == "within"]
    open_ = [(a, c) for a, c in verdicts if c.verdict == "undecided" and (not within or a.size < within[0][0].size)]
    if open_:
        result.undecided_size, result.undecided_comparison = open_[0][0].size, open_[0][1]
    if not within:
        result.note = f"no calibrated {candidate} size is decidedly within {tolerance:g} pt of {baseline} at {size} px"
        return result
    best, result.comparison = within[0]
    result.candidate_size, result.candidate_top1, result.candidate_top1_ci = best.size, best.top1, best.top1_ci
    result.flops_ratio = model_flops(base_bundle, size) / model_flops(cand_bundle, best.size)
    base_p = {r.batch: r for r in base_lat if (r.size, r.engine, r.precision) == (size, engine, precision)}
    cand_p = {r.batch: r for r in cand_lat if (r.size, r.engine, r.precision) == (best.size, engine, precision)}
    for batch in sorted(base_p.keys() & cand_p.keys()):
        result.latency_ratio[batch] = base_p[batch].p50_ms / cand_p[batch].p50_ms
        if (ci := ratio_interval(base_p[batch].p50_ci_ms, cand_p[batch].p50_ci_ms)) is not None:
            result.latency_ratio_ci[batch] = list(ci)
        result.latency_reliable[batch] = bool(base_p[batch].reliable and cand_p[batch].reliable)
    if base_bundle.arch == cand_bundle.arch and best.size != size:
        own = {r.batch: r for r in cand_lat if (r.size, r.engine, r.precision) == (size, engine, precision)}
        for batch in sorted(own.keys() & cand_p.keys()):
            result.same_bench_ratio[batch] = own[batch].p50_ms / cand_p[batch].p50_ms
    if not result.latency_ratio:
        result.note = "no batch was benched for both points"
    return result


def describe(m: MethodAlone) -> str:
    """One paragraph for the terminal and the markdown file."""
    ci = lambda c: f" [{c[0]:.2f}, {c[1]:.2f}]" if c else ""  # noqa: E731
    head = (f"Method alone ({m.engine} {m.precision}): {m.baseline} at {m.baseline_size} px, {m.baseline_top1:.2f}%{ci(m.baseline_top1_ci)} "
            f"top-1 on {m.images} images")
    undecided = ""
    if m.undecided_size is not None and m.undecided_comparison is not None:
        undecided = f" {m.candidate} at {m.undecided_size} px: {m.undecided_comparison.phrase()}."
    if m.candidate_size is None:
        return f"{head}; {m.note}.{undecided}"
    lat = ", ".join(f"{r:.2f}x{ci(m.latency_ratio_ci.get(b))} at batch {b}"
                    + ("" if m.latency_reliable.get(b, True) else " (busy machine: unreliable)")
                    for b, r in m.latency_ratio.items()) or m.note
    same = ", ".join(f"{r:.2f}x at batch {b}" for b, r in m.same_bench_ratio.items())
    same = (f" In {m.candidate}'s own bench, which timed {m.baseline_size} and {m.candidate_size} px together: {same}."
            if same else "")
    verdict = m.comparison.phrase() if m.comparison else f"within {m.tolerance:g} pt"
    return (f"{head}, vs {m.candidate} calibrated at {m.candidate_size} px, {m.candidate_top1:.2f}%{ci(m.candidate_top1_ci)} "
            f"({verdict}): {m.flops_ratio:.2f}x fewer FLOPs, latency {lat}.{same}{undecided}")


def write_method_alone(m: MethodAlone, out_dir: Path) -> dict[str, Path]:
    """``method_alone.json`` and ``method_alone.md`` in the run's output folder."""
    from mmdeploy.bundle import atomic_write_text

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "method_alone.json", "md": out_dir / "method_alone.md"}
    atomic_write_text(paths["json"], json.dumps(m.to_dict(), indent=2) + "\n")
    atomic_write_text(paths["md"], f"# Method alone\n\n{describe(m)}\n")
    return paths
