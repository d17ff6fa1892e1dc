"""``report.json``: a :class:`~mmdeploy.report.model.Report` to JSON and back, the schema checked on read (:func:`load_report`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from mmdeploy.errors import MMDeployError
from mmdeploy.report.model import SCHEMA_VERSION, Report
from mmdeploy.report.pareto import IsoAccuracySpeedup
from mmdeploy.report.values import point_problem, report_problem
from mmdeploy.results import Point, PointKey
from mmdeploy.stats import Comparison


def _key_to_json(key: PointKey) -> dict:
    return asdict(key)


# Per-image results are kept out of the points (a 1,250-byte bitset per 10,000 images) and written last, by point label.
_PER_IMAGE_KEYS = ("image_set", "correct")


def _point_to_json(point: Point) -> dict:
    data = point.to_dict()
    data["extra"] = {k: v for k, v in data["extra"].items() if k not in _PER_IMAGE_KEYS}
    # JSON has no NaN; an unset relative latency is written as null.
    if not math.isfinite(data["relative_latency"]):
        data["relative_latency"] = None
    return data


def _per_image_to_json(points: list[Point]) -> dict:
    return {p.key.label: {k: p.extra[k] for k in _PER_IMAGE_KEYS} for p in points if p.extra.get("correct")}


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
            "speedup_ci": speedup.speedup_ci,
            "comparison": speedup.comparison.to_dict() if speedup.comparison else None,
            "undecided": _key_to_json(speedup.undecided.key) if speedup.undecided else None,
            "undecided_comparison": speedup.undecided_comparison.to_dict() if speedup.undecided_comparison else None,
        },
        "environment": report.environment,
        "points": [_point_to_json(p) for p in report.points],
        "per_image": _per_image_to_json(report.points),
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
_COMPARISON_FIELDS = {"difference": _NUMBER, "low": _NUMBER, "high": _NUMBER, "tolerance": _NUMBER, "verdict": str,
                      "paired": bool, "images": int, "images_needed": (int, type(None)), "discordant": (list, type(None))}
READABLE_VERSIONS = (1, SCHEMA_VERSION)  # version 1: no intervals, no image counts (compared on the bare numbers)


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


def _comparison_from_json(data: object, where: str) -> Comparison | None:
    if data is None:
        return None
    data = _checked(data, _COMPARISON_FIELDS, where)
    if data["verdict"] not in ("within", "worse", "undecided"):
        raise _Invalid(f"{where}.verdict is {data['verdict']!r}")
    discordant = data["discordant"]
    if discordant is not None and (len(discordant) != 2 or not all(isinstance(v, int) for v in discordant)):
        raise _Invalid(f"{where}.discordant is not two counts")
    return Comparison(float(data["difference"]), float(data["low"]), float(data["high"]), float(data["tolerance"]), data["verdict"],
                      data["paired"], data["images"], data["images_needed"], tuple(discordant) if discordant else None)


def _interval(value: object, where: str) -> list[float] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value)
            or not all(math.isfinite(v) for v in value)):
        raise _Invalid(f"{where} is not an interval [low, high]")
    return [float(v) for v in value]


def _attach_per_image(points: list[Point], per_image: object) -> None:
    if per_image is None:
        return
    if not isinstance(per_image, dict):
        raise _Invalid("per_image is not a JSON object")
    by_label = {p.key.label: p for p in points}
    for label, entry in per_image.items():
        if label not in by_label:
            raise _Invalid(f"per_image names {label}, which is not among the points")
        entry = _checked(entry, {"image_set": str, "correct": str}, f"per_image[{label!r}]")
        by_label[label].extra.update({k: entry[k] for k in _PER_IMAGE_KEYS})


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
    _attach_per_image(points, data.get("per_image"))
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
            comparison=_comparison_from_json(raw.get("comparison"), "speedup.comparison"),
            speedup_ci=_interval(raw.get("speedup_ci"), "speedup.speedup_ci"),
            undecided=None if raw.get("undecided") is None else measured(_key_from_json(raw["undecided"], "speedup.undecided"), "speedup.undecided"),
            undecided_comparison=_comparison_from_json(raw.get("undecided_comparison"), "speedup.undecided_comparison"),
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
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise MMDeployError(
            f"{path} has report schema version {version!r}; this mmdeploy reads versions {', '.join(map(str, READABLE_VERSIONS))}",
            f"{regenerate} using this version of mmdeploy",
        )
    try:
        return _report_from_json(data)
    except _Invalid as exc:
        raise MMDeployError(f"{path} is not a valid mmdeploy report: {exc}", regenerate) from None
