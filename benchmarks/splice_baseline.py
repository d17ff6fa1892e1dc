"""Make a CI baseline from a new run's accuracies and an older baseline's latencies.

Accuracy is deterministic, latency is not: a run made on a busy machine has the right accuracies (and per-image
results) but latencies marked unreliable, which the gate would skip. This writes ``OUT/report.{json,md,csv}`` and
``pareto.png`` with each point's top-1, image count, interval and per-image results from NEW and its latency, p50
interval, thread settings and noise marks from OLD (same size, engine and precision; a point OLD lacks keeps NEW's
latency), the bench environment from OLD, and the front and headline recomputed.

    python benchmarks/splice_baseline.py runs/demo/mixsize/report.json ci/baseline/mixsize/report.json ci/baseline/mixsize
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmdeploy.report import build_report, load_report, write_report

_LATENCY_EXTRA = ("p90_ms", "p99_ms", "settings", "unreliable", "noise", "p50_ci_ms")


def splice(new_path: Path, old_path: Path, out_dir: Path) -> None:
    new, old = load_report(new_path), load_report(old_path)
    if new.batch != old.batch:
        raise SystemExit(f"batch {new.batch} in {new_path} vs {old.batch} in {old_path}")
    timed = {p.key: p for p in old.points}
    points = []
    for point in new.points:
        before = timed.get(point.key)
        if before is not None:
            point.latency_ms = before.latency_ms
            point.extra = {k: v for k, v in point.extra.items() if k not in _LATENCY_EXTRA and k != "relative_latency_ci"}
            point.extra.update({k: before.extra[k] for k in _LATENCY_EXTRA if k in before.extra})
        points.append(point)
    reference = new.reference
    tolerance = new.speedup.tolerance if new.speedup else 0.5
    report = build_report(points, batch=new.batch, environment=old.environment if timed else new.environment,
                          reference=reference, tolerance=tolerance)
    report.bundle_name = new.bundle_name
    for name, path in write_report(report, out_dir).items():
        print(f"{name}: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path, help="report.json of the new run (accuracies)")
    parser.add_argument("old", type=Path, help="report.json of the baseline whose latencies to keep")
    parser.add_argument("out", type=Path, help="folder to write the spliced report into")
    args = parser.parse_args()
    splice(args.new, args.old, args.out)


if __name__ == "__main__":
    main()
