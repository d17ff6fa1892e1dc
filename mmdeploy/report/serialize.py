"""``report.json``: a :class:`~mmdeploy.report.model.Report` to JSON and back, the schema checked on read (:func:`load_report`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from mmdeploy.errors import MMDeployError
from mmdeploy.pareto import IsoAccuracySpeedup
from mmdeploy.report.model import SCHEMA_VERSION, Report
from mmdeploy.report_values import point_problem, report_problem
from mmdeploy.results import Point, PointKey


def _key_to_json(key: PointKey) -> dict:
    return asdict(key)


def _point_to_json(point: Point) -> dict:
    data = point.to_dict()
    # JSON has no NaN; an unset relative latency is written as null.
    if not math.isfinite(data["relative_latency"]):
        data["relative_latency"] = None
    return data


def report_to_json(report: Report) -> dict:
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
    first: dict[PointKey, int] = {}
    for i, point in enumerate(points):  # two entries for one point would gate PASS or FAIL by their order
        if point.key in first:
            raise _Invalid(f"points[{i}] repeats {point.key.label} (as points[{first[point.key]}])")
        first[point.key] = i
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
    except RecursionError:
        raise MMDeployError(f"cannot read report {path}: its JSON is nested too deeply", regenerate) from None
    except ValueError as exc:  # Python's limit on digits in an integer (4300 by default)
        raise MMDeployError(f"cannot read report {path}: {str(exc).split(':')[0]}", regenerate) from None
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
