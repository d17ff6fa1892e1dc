"""The :class:`Report` (what ``report.json`` stores) and :func:`build_report`, which makes one from measured points."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mmdeploy.report.pareto import IsoAccuracySpeedup, pareto_front, set_relative_latency, speedup_at_iso_accuracy
from mmdeploy.results import Point, PointKey
from mmdeploy.version import __version__

SCHEMA_VERSION = 2  # 2: top-1 intervals and image counts, per-image results, p50 and speed-up intervals
FRONT_MARKER = "★"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _mmdeploy_version() -> str:
    return __version__


@dataclass
class Report:
    """Everything ``report.json`` stores. Build one with :func:`build_report`."""

    batch: int
    points: list[Point]
    reference: PointKey | None  # None only when there are no points
    speedup: IsoAccuracySpeedup | None
    environment: dict  # device, threads, library versions
    bundle_path: str = ""
    bundle_name: str = ""
    created: str = field(default_factory=_now)  # ISO 8601, UTC
    mmdeploy_version: str = field(default_factory=_mmdeploy_version)
    schema_version: int = SCHEMA_VERSION


def build_report(
    points: list[Point],
    *,
    batch: int,
    environment: dict,
    bundle: str | os.PathLike | None = None,
    reference: PointKey | None = None,
    training_size: int | None = None,
    tolerance: float = 0.5,
) -> Report:
    """A report of ``points``: marks the front, sets relative latencies against the reference
    (``reference``, else :func:`~mmdeploy.report.pareto.default_reference`) and the speed-up."""
    bundle_path = Path(bundle).resolve() if bundle is not None else None
    speedup = None
    if points:
        speedup = speedup_at_iso_accuracy(points, reference, tolerance, training_size)
        set_relative_latency(points, speedup.reference)
        pareto_front(points)
    return Report(
        batch=batch,
        points=points,
        reference=speedup.reference.key if speedup else None,
        speedup=speedup,
        environment=dict(environment),
        bundle_path=str(bundle_path) if bundle_path else "",
        bundle_name=bundle_path.name if bundle_path else "",
    )
