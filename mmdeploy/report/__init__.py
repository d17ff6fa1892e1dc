"""The latency/accuracy report of a bundle, its files, and the CI gate that compares two reports.

A :class:`Report` holds the measured points, the reference they are relative to and the
speed-up at iso-accuracy. :func:`write_report` writes it as ``report.json`` (the versioned,
machine-readable form that :func:`load_report` reads back), ``report.csv``, ``report.md``
(for CI job summaries) and ``pareto.png``. :func:`compare_reports` is the CI gate: it checks
absolute top-1 and *relative* latency, so a baseline from another machine still applies.

Modules: :mod:`~mmdeploy.report.model` (the report and how it is built), :mod:`~mmdeploy.report.serialize`
(``report.json`` and its schema), :mod:`~mmdeploy.report.render` (table, markdown, CSV, plot; writing the files),
:mod:`~mmdeploy.report.gate` (the CI gate), :mod:`~mmdeploy.report.junit` (the gate as JUnit XML), :mod:`~mmdeploy.report.from_bundle` (a bundle's report).
Everything public is re-exported here: ``from mmdeploy.report import X``.
"""

from __future__ import annotations

from mmdeploy.report.from_bundle import report_bundle, results_from_bundle
from mmdeploy.report.gate import Finding, FindingKind, GateResult, compare_reports, format_gate, parse_fraction
from mmdeploy.report.junit import gate_junit
from mmdeploy.report.model import FRONT_MARKER, SCHEMA_VERSION, Report, build_report
from mmdeploy.report.render import render_table, write_report
from mmdeploy.report.serialize import load_report

__all__ = [
    "FRONT_MARKER", "SCHEMA_VERSION", "Finding", "FindingKind", "GateResult", "Report", "build_report", "compare_reports",
    "format_gate", "gate_junit", "load_report", "parse_fraction", "render_table", "report_bundle", "results_from_bundle", "write_report",
]
