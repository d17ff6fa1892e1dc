"""The human forms of a report (rich table, markdown, CSV, Pareto plot) and :func:`write_report`, which writes them all with ``report.json``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import struct
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from mmdeploy.bundle import atomic_write_bytes
from mmdeploy.latency.trust import UNRELIABLE_MARK, latency_cell, settings_label, speedup_warning
from mmdeploy.report.model import FRONT_MARKER, Report
from mmdeploy.report.pareto import point_order
from mmdeploy.report.serialize import report_to_json
from mmdeploy.results import Point, PointKey

_COLUMNS = ("size", "engine", "precision", "top-1 % [95% CI]", "before calib.", "p50 ms [95% CI]", "rel. latency", "settings", "front")


def _ci(interval, digits: int) -> str:
    """`` [low, high]`` of an interval, "" where none was recorded (reports from before intervals were kept)."""
    return f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""


def _images(report: Report) -> str:
    """How many images each top-1 stands on: one count for all, or the range."""
    counts = sorted({p.extra.get("images") for p in report.points if p.extra.get("images")})
    if not counts:
        return "top-1 image counts not recorded (report from before they were kept)"
    return f"top-1 on {counts[0]} images" if len(counts) == 1 else f"top-1 on {counts[0]}-{counts[-1]} images"


def _sorted_points(report: Report) -> list[Point]:
    return sorted(report.points, key=point_order)


def _row_cells(point: Point, reference: PointKey | None) -> list[str]:
    """One table row, shared by the markdown and the terminal tables."""
    relative = f"{point.relative_latency:.3f}" if math.isfinite(point.relative_latency) else "-"
    if point.key == reference:
        relative += " (ref)"
    else:
        relative += _ci(point.extra.get("relative_latency_ci"), 3)
    return [
        str(point.size),
        point.engine,
        point.precision,
        f"{point.top1:.2f}{_ci(point.extra.get('top1_ci'), 1)}",
        f"{point.extra['top1_uncalibrated']:.2f}" if "top1_uncalibrated" in point.extra else "-",
        latency_cell(point) + _ci(point.extra.get("p50_ci_ms"), 3),
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
    speed_ci = f" [{speedup.speedup_ci[0]:.2f}, {speedup.speedup_ci[1]:.2f}]" if speedup.speedup_ci else ""
    line = (
        f"Speed-up at iso-accuracy: {warning + ': ' if warning else ''}{speedup.speedup:.2f}x{speed_ci} with {best.key.label} "
        f"({best.top1:.2f}%{_ci(best.extra.get('top1_ci'), 1)}, {best.latency_ms:.3f} ms) over {ref.key.label} "
        f"({ref.top1:.2f}%{_ci(ref.extra.get('top1_ci'), 1)}, {ref.latency_ms:.3f} ms), "
        + (speedup.comparison.phrase() if speedup.comparison else f"within {speedup.tolerance:g} pt top-1")
    )
    if speedup.undecided is not None:
        fast, cmp = speedup.undecided, speedup.undecided_comparison
        line += (f". Faster but undecided: {fast.key.label} ({ref.latency_ms / fast.latency_ms:.2f}x, {fast.top1:.2f}%): "
                 + (cmp.phrase() if cmp else "no image counts"))
    return line


def render_table(report: Report) -> Table:
    """The points as a rich table, the Pareto front marked and in bold."""
    table = Table(
        title=f"{report.bundle_name or 'mmdeploy'}: accuracy vs latency (batch {report.batch}; {_images(report)})",
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
            f"created {report.created}, mmdeploy {report.mmdeploy_version}; {_images(report)}. "
            "Brackets are 95% intervals: Wilson for top-1, order statistics of the timing samples for p50, the two p50 intervals "
            "crosswise for ratios. "
            f"{FRONT_MARKER} marks the accuracy/latency Pareto front (a slower point is on it only if decidedly more accurate, "
            "paired on the same images, than every faster one); 'before calib.' is the torch top-1 with the checkpoint's own BN statistics; "
            f"'{UNRELIABLE_MARK}' marks a latency timed while the machine was busy; 'settings' are each engine's intra-op threads and spinning (OpenVINO: threads and streams)."
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


_CSV_COLUMNS = ("size", "engine", "precision", "batch", "top1", "top1_low", "top1_high", "images", "top1_uncalibrated", "latency_ms",
                "latency_low_ms", "latency_high_ms", "relative_latency", "on_front")


def _csv_row(p: Point) -> dict:
    top1_ci, p50_ci = p.extra.get("top1_ci") or ("", ""), p.extra.get("p50_ci_ms") or ("", "")
    return {**p.to_dict(), "top1_uncalibrated": p.extra.get("top1_uncalibrated", ""), "images": p.extra.get("images", ""),
            "top1_low": top1_ci[0], "top1_high": top1_ci[1], "latency_low_ms": p50_ci[0], "latency_high_ms": p50_ci[1]}


def _render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_row(p) for p in _sorted_points(report))
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
        _error_bars(axes, members, colours[engine])
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
        speed_ci = f" [{speedup.speedup_ci[0]:.2f}, {speedup.speedup_ci[1]:.2f}]" if speedup.speedup_ci else ""
        subtitle = (
            f"{speedup.speedup:.2f}x{speed_ci} faster at iso-accuracy (within {speedup.tolerance:g} pt"
            f"{', paired' if speedup.comparison and speedup.comparison.paired else ''}): "
            f"{speedup.best.key.label} vs {ref.key.label}; bars: 95% intervals"
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
    figure.savefig(buffer, format="png", metadata={_PLOT_KEY: _plot_key(report)})
    return buffer.getvalue()


_PLOT_KEY = "mmdeploy-plot-key"  # a tEXt entry of pareto.png: what it was drawn from


def _plot_key(report: Report) -> str:
    """A key of what the plot shows (every point, the speed-up, batch and name), the code that draws it and matplotlib's
    version. Drawing is most of a report's time (importing matplotlib alone takes longer than the rest), so an unchanged
    pareto.png is kept instead of drawn again."""
    from importlib.metadata import version

    shown = [[p.to_dict() for p in report.points], report.speedup and asdict(report.speedup), report.batch, report.bundle_name,
             version("matplotlib")]
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode())
    digest.update(Path(__file__).read_bytes())  # this module: the drawing code
    return digest.hexdigest()


def _png_text(path: Path, keyword: str) -> str | None:
    """The tEXt entry ``keyword`` of a PNG file, or None (no file, not a PNG, no such entry before the image data).
    Reads chunk headers and small text chunks only: the file is the user's, not trusted to be well formed."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind == b"tEXt" and length <= 4096:
                    name, _, text = f.read(length).partition(b"\0")
                    if name.decode("latin-1") == keyword:
                        return text.decode("latin-1")
                    f.seek(4, os.SEEK_CUR)  # the CRC
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None
    return None


def _error_bars(axes, points: list[Point], colour: str) -> None:
    """95% intervals: top-1 (Wilson) vertically, p50 (order statistics) horizontally, where recorded."""
    def spans(values, intervals):
        return [[v - (i[0] if i else v) for v, i in zip(values, intervals)], [(i[1] if i else v) - v for v, i in zip(values, intervals)]]

    top1_ci = [p.extra.get("top1_ci") for p in points]
    p50_ci = [p.extra.get("p50_ci_ms") for p in points]
    if not any(top1_ci) and not any(p50_ci):
        return
    x, y = [p.latency_ms for p in points], [p.top1 for p in points]
    axes.errorbar(x, y, yerr=spans(y, top1_ci), xerr=spans(x, p50_ci), fmt="none", ecolor=colour, alpha=0.45, elinewidth=0.8,
                  capsize=2, zorder=2.5)


def write_report(report: Report, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.csv, report.md and pareto.png into ``out_dir``.

    Returns the written paths by format (``json``, ``csv``, ``md``, ``png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Render everything first, so a rendering error leaves every old file in place.
    contents = {
        "json": ("report.json", (json.dumps(report_to_json(report), indent=2, allow_nan=False) + "\n").encode()),
        "csv": ("report.csv", _render_csv(report).encode()),
        "md": ("report.md", _render_markdown(report).encode()),
    }
    png = out_dir / "pareto.png"
    if _png_text(png, _PLOT_KEY) != _plot_key(report):  # drawn from other inputs (or not by this code): draw it again
        contents["png"] = (png.name, _render_png(report))
    written = {}
    for kind, (name, data) in contents.items():
        atomic_write_bytes(out_dir / name, data)
        written[kind] = out_dir / name
    written["png"] = png
    return written
