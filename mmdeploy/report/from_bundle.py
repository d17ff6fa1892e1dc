""":func:`report_bundle`: the report of a bundle, built from its stored eval and bench results and written next to it."""

from __future__ import annotations

import os
from pathlib import Path

from mmdeploy.bundle import bundle_lock
from mmdeploy.errors import MMDeployError
from mmdeploy.report.model import Report, build_report
from mmdeploy.report.pareto import build_points
from mmdeploy.report.render import write_report
from mmdeploy.report.values import check_threshold
from mmdeploy.results import AccuracyResult, LatencyResult, PointKey


def results_from_bundle(bundle) -> tuple[list[AccuracyResult], list[LatencyResult]]:
    """The accuracy and latency results ``mmdeploy eval`` and ``mmdeploy bench`` stored in a bundle."""
    return bundle.accuracies(), bundle.latencies()


def report_bundle(
    bundle_dir: str | os.PathLike,
    batch: int = 1,
    reference: str | None = None,
    tolerance: float = 0.5,
    out_dir: str | os.PathLike | None = None,
) -> tuple[Report, dict[str, Path]]:
    """Build the Pareto report of a bundle from its stored eval and bench results and write it."""
    from mmdeploy.bundle import Bundle
    from mmdeploy.writable import ensure_writable

    check_threshold(tolerance, "--tolerance", "0.5")  # before any work (a NaN tolerance leaves no point within it)
    bundle = Bundle.open(bundle_dir)
    ensure_writable(out_dir or bundle.root, "report")
    accuracies, latencies = results_from_bundle(bundle)
    if not any(a.calibrated for a in accuracies):
        raise MMDeployError(f"{bundle.root} has no accuracy results", f"run `mmdeploy eval {bundle.root} --data DIR` first")
    if not any(lat.batch == batch for lat in latencies):
        have = sorted({lat.batch for lat in latencies})
        raise MMDeployError(f"{bundle.root} has no latency results at batch {batch} (has {have or 'none'})",
                            f"run `mmdeploy bench {bundle.root} --batch {batch}` first")
    _warn_if_mixed_data(bundle)
    points = build_points(accuracies, latencies, batch, training_size=bundle.training_size)
    if not points:
        acc = sorted({a.key.label for a in accuracies if a.calibrated})
        lat = sorted({t.key.label for t in latencies if t.batch == batch})
        raise MMDeployError(f"{bundle.root}: no point has both accuracy and batch-{batch} latency (accuracy: {', '.join(acc)}; latency: {', '.join(lat)})",
                            f"eval and bench the same engines and precisions, e.g. `mmdeploy eval {bundle.root} --engine torch --engine ort` "
                            f"and `mmdeploy bench {bundle.root} --engine torch --engine ort`")
    ref_key = _parse_key(reference) if reference else None
    env = bundle.bench_environment
    report = build_report(points, batch=batch, environment=env, bundle=bundle.root, reference=ref_key,
                          training_size=bundle.training_size, tolerance=tolerance)
    if out_dir is not None and Path(out_dir).resolve() != bundle.root.resolve():
        return report, write_report(report, out_dir)
    with bundle_lock(bundle.root):  # its temp files must not meet another writer's sweep
        return report, write_report(report, bundle.root)


def _warn_if_mixed_data(bundle) -> None:
    """Accuracies measured on different image folders (or subsets) do not belong on one front."""
    import warnings

    seen = bundle.accuracy_data_sets()
    if len(seen) > 1:
        warnings.warn(f"the accuracies in this bundle come from {len(seen)} different image sets or subsets; "
                      "re-run `mmdeploy eval BUNDLE --data DIR` for every engine on one folder", stacklevel=2)


def _parse_key(text: str) -> PointKey:
    parts = text.split("/")
    if len(parts) != 3 or not parts[0].isdigit():
        raise MMDeployError(f"reference {text!r} is not SIZE/ENGINE/PRECISION", "e.g. --reference 32/torch/fp32")
    return PointKey(int(parts[0]), parts[1], parts[2])
