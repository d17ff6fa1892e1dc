"""Report files (JSON round trip, CSV, markdown, PNG), schema checks, and the CI gate."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from mmdeploy.errors import MMDeployError
from mmdeploy.report import (
    FRONT_MARKER,
    SCHEMA_VERSION,
    Report,
    build_report,
    compare_reports,
    format_gate,
    load_report,
    parse_fraction,
    render_table,
    write_report,
)
from mmdeploy.results import Point, PointKey

ENVIRONMENT = {"device": "cpu", "threads": 4, "versions": {"torch": "2.13", "onnxruntime": "1.22"}}
REFERENCE = PointKey(224, "torch", "fp32")


def _points(scale: float = 1.0, **changes: tuple[float, float]) -> list[Point]:
    """A small plane; every latency times ``scale`` (another machine); ``changes`` replaces
    (top1, latency) of points by label with dots, e.g. ``**{"160/ort/fp16": (75.0, 3.0)}``."""
    measured = {
        "224/torch/fp32": (76.0, 10.0),
        "224/ort/fp32": (76.0, 6.0),
        "160/torch/fp32": (75.6, 5.0),
        "160/ort/fp16": (75.7, 3.0),
        "128/ort/fp16": (73.0, 2.0),
    }
    measured.update(changes)
    points = []
    for label, (top1, latency) in measured.items():
        size, engine, precision = label.split("/")
        points.append(Point(int(size), engine, precision, batch=1, top1=top1, latency_ms=latency * scale))
    return points


def _report(points: list[Point] | None = None, tmp_path=None) -> Report:
    return build_report(
        _points() if points is None else points,
        batch=1,
        environment=ENVIRONMENT,
        bundle=tmp_path / "bundle" if tmp_path else None,
        training_size=224,
    )


@pytest.fixture
def report(tmp_path) -> Report:
    return _report(tmp_path=tmp_path)


def test_build_report_sets_reference_front_and_speedup(report):
    assert report.schema_version == SCHEMA_VERSION
    assert report.reference == REFERENCE
    assert report.bundle_name == "bundle"
    assert report.speedup.best.key == PointKey(160, "ort", "fp16")
    assert report.speedup.speedup == pytest.approx(10 / 3)
    by_label = {p.key.label: p for p in report.points}
    assert by_label["224/torch/fp32"].relative_latency == 1.0
    assert by_label["128/ort/fp16"].relative_latency == pytest.approx(0.2)
    assert {label for label, p in by_label.items() if p.on_front} == {"224/ort/fp32", "160/ort/fp16", "128/ort/fp16"}


def test_write_then_load_round_trips(report, tmp_path):
    written = write_report(report, tmp_path / "out")
    assert {path.name for path in written.values()} == {"report.json", "report.csv", "report.md", "pareto.png"}
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.values())
    loaded = load_report(written["json"])
    assert loaded == report
    assert load_report(tmp_path / "out") == report  # a directory means its report.json


def test_empty_report_round_trips(tmp_path):
    empty = _report(points=[])
    assert empty.reference is None and empty.speedup is None
    written = write_report(empty, tmp_path)
    assert load_report(written["json"]) == empty
    assert "n/a" in written["md"].read_text(encoding="utf-8")


def test_unset_relative_latency_is_written_as_null(report, tmp_path):
    report.points[0].relative_latency = float("nan")
    data = json.loads(write_report(report, tmp_path)["json"].read_text())
    assert data["points"][0]["relative_latency"] is None


def _write_json(path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def test_load_rejects_another_schema_version(report, tmp_path):
    path = write_report(report, tmp_path)["json"]
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    _write_json(path, data)
    with pytest.raises(MMDeployError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        load_report(path)
    assert "regenerate" in info.value.hint


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d.pop("points"), "no field 'points'"),
        (lambda d: d.__setitem__("batch", "1"), "batch has the wrong type"),
        (lambda d: d["points"][1].pop("top1"), r"points\[1\] has no field 'top1'"),
        (lambda d: d["points"][0].__setitem__("latency_ms", True), "latency_ms has the wrong type"),
        (lambda d: d["speedup"]["best"].__setitem__("size", 999), "not among the points"),
    ],
)
def test_load_rejects_broken_fields(report, tmp_path, damage, expected):
    path = write_report(report, tmp_path)["json"]
    data = json.loads(path.read_text())
    damage(data)
    _write_json(path, data)
    with pytest.raises(MMDeployError, match=expected):
        load_report(path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d["points"][0].__setitem__("top1", float("nan")), r"points\[0\]\.top1 is nan"),
        (lambda d: d["points"][0].__setitem__("top1", float("inf")), r"points\[0\]\.top1 is inf"),
        (lambda d: d["points"][1].__setitem__("top1", 100.5), r"points\[1\]\.top1 is 100.5 \(must be <= 100\)"),
        (lambda d: d["points"][1].__setitem__("top1", -3), r"points\[1\]\.top1 is -3 \(must be >= 0\)"),
        (lambda d: d["points"][0].__setitem__("relative_latency", 0), r"points\[0\]\.relative_latency is 0 \(must be > 0\)"),
        (lambda d: d["points"][0].__setitem__("relative_latency", float("-inf")), r"points\[0\]\.relative_latency is -inf"),
        (lambda d: d["points"][0].__setitem__("latency_ms", -1.0), r"points\[0\]\.latency_ms is -1"),
        (lambda d: d["points"][0].__setitem__("batch", 0), r"points\[0\]\.batch is 0"),
        (lambda d: d["speedup"].__setitem__("speedup", float("nan")), r"speedup\.speedup is nan"),
    ],
)
def test_load_refuses_baselines_with_impossible_numbers(report, tmp_path, damage, expected):
    path = write_report(report, tmp_path)["json"]
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data), encoding="utf-8")  # json writes NaN/Infinity, as a hand-edited file may hold
    with pytest.raises(MMDeployError, match=expected) as info:
        load_report(path)
    assert "\n" not in info.value.one_line()


def test_load_rejects_missing_and_non_json_files(tmp_path):
    with pytest.raises(MMDeployError, match="no report"):
        load_report(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MMDeployError, match="cannot read"):
        load_report(bad)
    _write_json(bad, [1, 2])
    with pytest.raises(MMDeployError, match="schema version None"):
        load_report(bad)


def test_png_is_written_and_has_content(report, tmp_path):
    png = write_report(report, tmp_path)["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    rgb = pixels[..., :3]
    background = rgb[0, 0]
    drawn = np.any(np.abs(rgb - background) > 0.1, axis=-1)
    assert drawn.mean() > 0.01  # axes, points, labels
    # Coloured pixels (the scattered points), not only black text and grey grid.
    colourful = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3
    assert colourful.sum() > 50


def test_markdown_and_csv(report, tmp_path):
    written = write_report(report, tmp_path)
    markdown = written["md"].read_text(encoding="utf-8")
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(report.points)  # header + one per point
    front_rows = [row for row in rows if FRONT_MARKER in row]
    assert len(front_rows) == 3 and all("ort" in row for row in front_rows)
    assert "1.000 (ref)" in next(row for row in rows if "| 224 | torch | fp32 |" in row)
    assert "Speed-up at iso-accuracy: 3.33x with 160/ort/fp16" in markdown
    csv_lines = written["csv"].read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == ("size,engine,precision,batch,top1,top1_low,top1_high,images,top1_uncalibrated,latency_ms,latency_low_ms,"
                            "latency_high_ms,relative_latency,on_front")
    # no before-calibration result, no image counts and no timing intervals in this report's points
    assert csv_lines[1].startswith("128,ort,fp16,1,73.0,,,,,2.0,,,0.2,True")


def test_render_table_marks_the_front(report):
    table = render_table(report)
    assert table.row_count == len(report.points)
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    text = console.export_text()
    assert text.count(FRONT_MARKER) == 3
    assert "3.33x" in text


# ---------------------------------------------------------------------------- gate


def _gate(new: Report, baseline: Report, max_acc_drop: float = 0.5, max_latency_regress: float = 0.15):
    return compare_reports(new, baseline, max_acc_drop=max_acc_drop, max_latency_regress=max_latency_regress)


def test_gate_passes_on_another_machine(report):
    # Twice as slow everywhere: relative latencies are unchanged, so nothing regressed.
    result = _gate(_report(_points(scale=2.0)), report)
    assert result.passed and result.findings == [] and result.compared == 5
    assert format_gate(result).splitlines()[-1].startswith("PASS")


def test_gate_fails_on_accuracy_drop():
    # A drop of exactly 0.5 pt is allowed, although 64.01 - 63.51 = 0.5000000000000071; 0.7 pt is not.
    baseline = _report(_points(**{"160/torch/fp32": (64.01, 5.0)}))
    result = _gate(_report(_points(**{"160/ort/fp16": (75.0, 3.0), "160/torch/fp32": (63.51, 5.0)})), baseline)
    assert not result.passed
    (finding,) = result.failures
    assert finding.key == PointKey(160, "ort", "fp16") and finding.kind == "accuracy-drop"
    assert (finding.old, finding.new) == (75.7, 75.0)
    text = format_gate(result)
    assert "FAIL  accuracy-drop" in text and "160/ort/fp16" in text and text.splitlines()[-1].startswith("FAIL")


def test_gate_fails_on_relative_latency_regression(report):
    # 3 ms -> 3.6 ms is +20% relative to the same reference: over 15%.
    result = _gate(_report(_points(**{"160/ort/fp16": (75.7, 3.6)})), report)
    (finding,) = result.failures
    assert finding.kind == "latency-regression"
    assert finding.old == pytest.approx(0.3) and finding.new == pytest.approx(0.36)
    assert "+20.0%" in finding.message
    assert _gate(_report(_points(**{"160/ort/fp16": (75.7, 3.6)})), report, max_latency_regress=0.25).passed


def test_gate_fails_on_missing_point_and_notes_new_points(report):
    points = [p for p in _points() if p.key.label != "128/ort/fp16"]
    points.append(Point(96, "trt", "fp16", batch=1, top1=70.0, latency_ms=1.0))
    result = _gate(_report(points), report)
    assert not result.passed
    kinds = {f.key.label: (f.kind, f.fails) for f in result.findings}
    assert kinds == {"128/ort/fp16": ("missing-point", True), "96/trt/fp16": ("new-point", False)}
    text = format_gate(result)
    assert "note  new-point" in text and "FAIL  missing-point" in text


def test_gate_only_new_points_passes(report):
    result = _gate(_report(_points() + [Point(96, "trt", "fp16", batch=1, top1=70.0, latency_ms=1.0)]), report)
    assert result.passed and [f.kind for f in result.findings] == ["new-point"]


def test_gate_refuses_incomparable_reports(report):
    other_reference = copy.deepcopy(report)
    other_reference.reference = PointKey(160, "torch", "fp32")
    with pytest.raises(MMDeployError, match="not comparable"):
        _gate(other_reference, report)
    other_batch = copy.deepcopy(report)
    other_batch.batch = 8
    with pytest.raises(MMDeployError, match="batch"):
        _gate(other_batch, report)


@pytest.mark.parametrize(("text", "value"), [("15%", 0.15), ("0.15", 0.15), (" 2.5 % ", 0.025), (0.2, 0.2), ("0", 0.0)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "-5%", "15", "nan"])
def test_parse_fraction_rejects(text):
    with pytest.raises(MMDeployError):
        parse_fraction(text)


def test_markdown_names_the_device_bench_recorded(tmp_path):
    env = {"cpu": "Example CPU @ 2GHz", "torch_threads": 2, "torch": "2.13"}  # what mmdeploy.latency.bench.environment() writes
    report = build_report(_points(), batch=1, environment=env, training_size=224)
    markdown = write_report(report, tmp_path)["md"].read_text(encoding="utf-8")
    assert "device Example CPU @ 2GHz (2 threads)" in markdown
