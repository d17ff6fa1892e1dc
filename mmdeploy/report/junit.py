"""The CI gate's result as JUnit XML (``mmdeploy report --baseline OLD --junit FILE``), so CI pages list each point.

One test case per point of the baseline or the new report, named by its label (``24/ort/int8``): passed when the gate
compared it and found nothing, failed with the gate's reasons as the failure message, skipped with its note where the
gate does not judge it (a point new in this report, or one this machine cannot serve). Latency left ungated (a busy
machine, another CPU) is a suite property, since accuracy is still gated on every point.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mmdeploy.report.gate import GateResult
from mmdeploy.report.model import Report
from mmdeploy.report.pareto import point_order


def gate_junit(result: GateResult, new: Report, baseline: Report) -> bytes:
    """The JUnit XML document of one gate run (UTF-8 bytes)."""
    suite_name = f"mmdeploy gate: {new.bundle_name or 'report'}"
    by_point: dict = {}
    for finding in result.findings:
        by_point.setdefault(finding.key, []).append(finding)
    keys = sorted({p.key for p in new.points} | {p.key for p in baseline.points}, key=point_order)
    root = ET.Element("testsuites", name="mmdeploy gate")
    suite = ET.SubElement(root, "testsuite", name=suite_name, timestamp=new.created, errors="0")
    if result.latency_skipped:
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="latency not gated", value=result.latency_skipped)
    failed = skipped = 0
    for key in keys:
        case = ET.SubElement(suite, "testcase", classname=f"mmdeploy.gate.{new.bundle_name or 'report'}", name=key.label, time="0")
        findings = by_point.get(key, [])
        failures = [f for f in findings if f.fails]
        if failures:
            failed += 1
            failure = ET.SubElement(case, "failure", type=", ".join(f.kind for f in failures), message="; ".join(f.message for f in failures))
            failure.text = "\n".join(f"{f.kind}: {f.message}" for f in failures)
        elif findings:
            skipped += 1
            ET.SubElement(case, "skipped", message="; ".join(f.message for f in findings))
    for element in (root, suite):
        element.set("tests", str(len(keys)))
        element.set("failures", str(failed))
        element.set("skipped", str(skipped))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
