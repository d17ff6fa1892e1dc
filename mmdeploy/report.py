"""The latency/accuracy report of a bundle, its files, and the CI gate that compares two reports.

A :class:`Report` holds the measured points, the reference they are relative to and the
speed-up at iso-accuracy. :func:`write_report` writes it as ``report.json`` (the versioned,
machine-readable form that :func:`load_report` reads back), ``report.csv``, ``report.md``
(for CI job summaries) and ``pareto.png``. :func:`compare_reports` is the CI gate: it checks
absolute top-1 and *relative* latency, so a baseline from another machine still applies.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from rich.table import Table

import mmdeploy
from mmdeploy.bundle import atomic_write_bytes, bundle_lock
from mmdeploy.errors import MMDeployError
from mmdeploy.latency_trust import UNRELIABLE_MARK, latency_cell, latency_skip_reason, settings_label, speedup_warning
from mmdeploy.pareto import (
    IsoAccuracySpeedup,
    build_points,
    pareto_front,
    point_order,
    set_relative_latency,
    speedup_at_iso_accuracy,
)
from mmdeploy.report_values import point_problem, report_problem
from mmdeploy.results import AccuracyResult, LatencyResult, Point, PointKey

SCHEMA_VERSION = 1
FRONT_MARKER = "★"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _mmdeploy_version() -> str:
    return str(getattr(mmdeploy, "__version__", "0"))


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
    (``reference``, else :func:`~mmdeploy.pareto.default_reference`) and the speed-up."""
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


# ---------------------------------------------------------------------------- JSON form


def _key_to_json(key: PointKey) -> dict:
    return asdict(key)


def _point_to_json(point: Point) -> dict:
    data = point.to_dict()
    # JSON has no NaN; an unset relative latency is written as null.
    if not math.isfinite(data["relative_latency"]):
        data["relative_latency"] = None
    return data


def _report_to_json(report: Report) -> dict:
    speedup = report.speedup
    return {
        "schema_version": report.schema_version,
        "created": report.created,
        "mmdeploy_version": report.mmdeploy_version,
        "bundle_path": report.bundle_path,
        "bundle_name": report.bundle_name,
        "batch": report.batch,
        "reference": _key_to_json(report.reference) if report.reference else None,
        "speedup": None
        if speedup is None
        else {
            "reference": _key_to_json(speedup.reference.key),
            "best": _key_to_json(speedup.best.key),
            "speedup": speedup.speedup,
            "tolerance": speedup.tolerance,
        },
        "environment": report.environment,
        "points": [_point_to_json(p) for p in report.points],
    }


_NUMBER = (int, float)
_REPORT_FIELDS = {
    "created": str,
    "mmdeploy_version": str,
    "bundle_path": str,
    "bundle_name": str,
    "batch": int,
    "environment": dict,
    "points": list,
}
_KEY_FIELDS = {"size": int, "engine": str, "precision": str}
_POINT_FIELDS = {
    **_KEY_FIELDS,
    "batch": int,
    "top1": _NUMBER,
    "latency_ms": _NUMBER,
    "relative_latency": (*_NUMBER, type(None)),
    "on_front": bool,
    "extra": dict,
}
_SPEEDUP_FIELDS = {"reference": dict, "best": dict, "speedup": _NUMBER, "tolerance": _NUMBER}


class _Invalid(Exception):
    """A schema violation inside ``report.json``; :func:`load_report` adds the file name."""


def _checked(data: object, spec: dict, where: str) -> dict:
    """``data`` if it is an object with every field of ``spec`` of the right type."""
    if not isinstance(data, dict):
        raise _Invalid(f"{where} is not a JSON object")
    for name, types in spec.items():
        if name not in data:
            raise _Invalid(f"{where} has no field {name!r}")
        value = data[name]
        # bool is an int to Python, but a boolean where a number belongs is a broken file.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise _Invalid(f"{where}.{name} has the wrong type ({type(value).__name__})")
    return data


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _key_from_json(data: object, where: str) -> PointKey:
    data = _checked(data, _KEY_FIELDS, where)
    return PointKey(data["size"], data["engine"], data["precision"])


def _point_from_json(data: object, where: str) -> Point:
    data = _checked(data, _POINT_FIELDS, where)
    if problem := point_problem(data, where):
        raise _Invalid(problem)
    relative = data["relative_latency"]
    return Point(
        size=data["size"],
        engine=data["engine"],
        precision=data["precision"],
        batch=data["batch"],
        top1=float(data["top1"]),
        latency_ms=float(data["latency_ms"]),
        relative_latency=float("nan") if relative is None else float(relative),
        on_front=data["on_front"],
        extra=data["extra"],
    )


def _report_from_json(data: object) -> Report:
    data = _checked(data, _REPORT_FIELDS, "report")
    if problem := report_problem(data):
        raise _Invalid(problem)
    points = [_point_from_json(p, f"points[{i}]") for i, p in enumerate(data["points"])]
    by_key = {p.key: p for p in points}

    def measured(key: PointKey, where: str) -> Point:
        if key not in by_key:
            raise _Invalid(f"{where} names {key.label}, which is not among the points")
        return by_key[key]

    reference = None if data.get("reference") is None else _key_from_json(data["reference"], "reference")
    speedup = None
    if data.get("speedup") is not None:
        raw = _checked(data["speedup"], _SPEEDUP_FIELDS, "speedup")
        speedup = IsoAccuracySpeedup(
            reference=measured(_key_from_json(raw["reference"], "speedup.reference"), "speedup.reference"),
            best=measured(_key_from_json(raw["best"], "speedup.best"), "speedup.best"),
            speedup=float(raw["speedup"]),
            tolerance=float(raw["tolerance"]),
        )
    return Report(
        batch=data["batch"],
        points=points,
        reference=reference,
        speedup=speedup,
        environment=data["environment"],
        bundle_path=data["bundle_path"],
        bundle_name=data["bundle_name"],
        created=data["created"],
        mmdeploy_version=data["mmdeploy_version"],
        schema_version=data["schema_version"],
    )


def load_report(path: str | os.PathLike) -> Report:
    """Read ``report.json`` (or the one inside a bundle directory), checking its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    regenerate = "regenerate it with `mmdeploy report BUNDLE`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MMDeployError(f"no report at {path}", "run `mmdeploy report BUNDLE` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MMDeployError(f"cannot read report {path}: {exc}", regenerate) from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise MMDeployError(
            f"{path} has report schema version {version!r}; this mmdeploy reads version {SCHEMA_VERSION}",
            f"{regenerate} using this version of mmdeploy",
        )
    try:
        return _report_from_json(data)
    except _Invalid as exc:
        raise MMDeployError(f"{path} is not a valid mmdeploy report: {exc}", regenerate) from None


# ---------------------------------------------------------------------------- human forms

_COLUMNS = ("size", "engine", "precision", "top-1 %", "before calib.", "p50 ms", "rel. latency", "settings", "front")


def _sorted_points(report: Report) -> list[Point]:
    return sorted(report.points, key=point_order)


def _row_cells(point: Point, reference: PointKey | None) -> list[str]:
    """One table row, shared by the markdown and the terminal tables."""
    relative = f"{point.relative_latency:.3f}" if math.isfinite(point.relative_latency) else "-"
    if point.key == reference:
        relative += " (ref)"
    return [
        str(point.size),
        point.engine,
        point.precision,
        f"{point.top1:.2f}",
        f"{point.extra['top1_uncalibrated']:.2f}" if "top1_uncalibrated" in point.extra else "-",
        latency_cell(point),
        relative,
        settings_label(point),
        FRONT_MARKER if point.on_front else "",
    ]


def _speedup_line(report: Report) -> str:
    speedup = report.speedup
    if speedup is None:
        return "Speed-up at iso-accuracy: n/a (no points measured)"
    ref, best = speedup.reference, speedup.best
    warning = speedup_warning(report)
    return (
        f"Speed-up at iso-accuracy: {warning + ': ' if warning else ''}{speedup.speedup:.2f}x with {best.key.label} "
        f"({best.top1:.2f}%, {best.latency_ms:.3f} ms) over {ref.key.label} "
        f"({ref.top1:.2f}%, {ref.latency_ms:.3f} ms), within {speedup.tolerance:g} pt top-1"
    )


def render_table(report: Report) -> Table:
    """The points as a rich table, the Pareto front marked and in bold."""
    table = Table(
        title=f"{report.bundle_name or 'mmdeploy'}: accuracy vs latency (batch {report.batch})",
        caption=_speedup_line(report),
    )
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("engine", "precision") else "right")
    for point in _sorted_points(report):
        table.add_row(*_row_cells(point, report.reference), style="bold" if point.on_front else None)
    return table


def _render_markdown(report: Report) -> str:
    lines = [
        f"## mmdeploy report: {report.bundle_name or 'bundle'}",
        "",
        (
            f"Batch {report.batch}, device {_device(report.environment)}, "
            f"created {report.created}, mmdeploy {report.mmdeploy_version}. "
            f"{FRONT_MARKER} marks the accuracy/latency Pareto front; 'before calib.' is the torch top-1 with the checkpoint's own BN statistics; "
            f"'{UNRELIABLE_MARK}' marks a latency timed while the machine was busy; 'settings' are each engine's intra-op threads and spinning."
        ),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---:" if c not in ("engine", "precision") else "---" for c in _COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_row_cells(p, report.reference)) + " |" for p in _sorted_points(report)]
    lines += ["", f"**{_speedup_line(report)}**", ""]
    return "\n".join(lines)


def _device(environment: dict) -> str:
    """What ran the points: ``mmdeploy bench`` records the GPU (if any) and the CPU, not a "device" key."""
    device = environment.get("device") or environment.get("gpu") or environment.get("cpu") or "?"
    threads = environment.get("torch_threads") or environment.get("threads")
    return f"{device} ({threads} threads)" if threads and not environment.get("gpu") else str(device)


_CSV_COLUMNS = ("size", "engine", "precision", "batch", "top1", "top1_uncalibrated", "latency_ms", "relative_latency", "on_front")


def _render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**p.to_dict(), "top1_uncalibrated": p.extra.get("top1_uncalibrated", "")} for p in _sorted_points(report))
    return buffer.getvalue()


_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "D"}


def _render_png(report: Report) -> bytes:
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = report.points
    # Colour says the engine, the marker says the precision.
    colours = {engine: f"C{i}" for i, engine in enumerate(sorted({p.engine for p in points}))}
    for engine, precision in sorted({(p.engine, p.precision) for p in points}):
        members = [p for p in points if (p.engine, p.precision) == (engine, precision)]
        axes.scatter(
            [p.latency_ms for p in members],
            [p.top1 for p in members],
            color=colours[engine],
            marker=_PRECISION_MARKERS.get(precision, "^"),
            s=40,
            zorder=3,
            label=f"{engine} {precision}",
        )
    front = sorted((p for p in points if p.on_front), key=lambda p: p.latency_ms)
    if front:
        # A step: at any latency, the best reachable accuracy is that of the last front point at
        # or below it. Carried on to the slowest point, so dominated points sit under the line.
        latencies = [p.latency_ms for p in front] + [max(p.latency_ms for p in points)]
        accuracies = [p.top1 for p in front] + [front[-1].top1]
        axes.step(
            latencies,
            accuracies,
            where="post",
            color="black",
            linewidth=1.2,
            zorder=2,
            label=f"Pareto front {FRONT_MARKER}",
        )
    if report.speedup is not None:
        speedup = report.speedup
        ref = speedup.reference
        axes.scatter(
            [ref.latency_ms], [ref.top1], s=180, facecolors="none", edgecolors="red", zorder=4, label="reference"
        )
        subtitle = (
            f"{speedup.speedup:.2f}x faster at iso-accuracy (within {speedup.tolerance:g} pt): "
            f"{speedup.best.key.label} vs {ref.key.label}"
        )
    else:
        subtitle = "no points measured"
        axes.text(0.5, 0.5, subtitle, transform=axes.transAxes, ha="center", va="center")
    for point in points:
        axes.annotate(
            point.key.label, (point.latency_ms, point.top1), xytext=(5, 4), textcoords="offset points", fontsize=7
        )
    if points:
        latencies = [p.latency_ms for p in points]
        if max(latencies) > 20 * min(latencies):
            axes.set_xscale("log")
        axes.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xlabel(f"p50 latency (ms), batch {report.batch}")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"{report.bundle_name or 'mmdeploy'}: accuracy vs latency\n{subtitle}", fontsize=10)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- files


def write_report(report: Report, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.csv, report.md and pareto.png into ``out_dir``.

    Returns the written paths by format (``json``, ``csv``, ``md``, ``png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Render everything first, so a rendering error leaves every old file in place.
    contents = {
        "json": ("report.json", (json.dumps(_report_to_json(report), indent=2, allow_nan=False) + "\n").encode()),
        "csv": ("report.csv", _render_csv(report).encode()),
        "md": ("report.md", _render_markdown(report).encode()),
        "png": ("pareto.png", _render_png(report)),
    }
    written = {}
    for kind, (name, data) in contents.items():
        atomic_write_bytes(out_dir / name, data)
        written[kind] = out_dir / name
    return written


# ---------------------------------------------------------------------------- CI gate

FindingKind = Literal["accuracy-drop", "latency-regression", "missing-point", "new-point", "not-served-here"]
_FAILING_KINDS = ("accuracy-drop", "latency-regression", "missing-point")
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

    @property
    def fails(self) -> bool:
        return self.kind in _FAILING_KINDS


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


def compare_reports(
    new: Report, baseline: Report, max_acc_drop: float, max_latency_regress: float
) -> GateResult:
    """Gate ``new`` on ``baseline``.

    A point fails when its top-1 dropped by more than ``max_acc_drop`` points, when its
    relative latency grew by more than the fraction ``max_latency_regress`` (0.15 = 15%), or
    when it is in the baseline but not in the new report. New points are noted, not failed.
    """
    if max_acc_drop < 0 or max_latency_regress < 0:
        raise MMDeployError("gate thresholds must not be negative", "e.g. --max-acc-drop 0.5 --max-latency-regress 15%")
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
        drop = old.top1 - current.top1
        if drop > max_acc_drop + _SLACK:
            findings.append(
                Finding(
                    key,
                    "accuracy-drop",
                    old.top1,
                    current.top1,
                    f"top-1 {old.top1:.2f}% -> {current.top1:.2f}% "
                    f"(-{drop:.2f} pt; limit {max_acc_drop:g} pt)",
                )
            )
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
    if result.latency_skipped:
        lines.append(f"skip  {result.latency_skipped}")
    failures = len(result.failures)
    if result.passed:
        lines.append(f"PASS: {result.compared} points compared, no regressions" + (" (accuracy only)" if result.latency_skipped else ""))
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


# ---------------------------------------------------------------------------- bundles


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
