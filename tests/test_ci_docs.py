"""The CI recipes (docs/ci.md, docs/ci/*.yml) call only commands and options that exist, and ``report --junit``
writes a JUnit file with one test case per gated point."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
import yaml
from conftest import measured_bundle

from mmdeploy.cli import app
from mmdeploy.config import config_problems
from mmdeploy.report import build_report, compare_reports, gate_junit
from mmdeploy.results import Point

ROOT = Path(__file__).resolve().parents[1]
GITHUB = yaml.safe_load((ROOT / "docs/ci/github-actions.yml").read_text())
GITLAB = yaml.safe_load((ROOT / "docs/ci/gitlab-ci.yml").read_text())


def _github_steps() -> list[dict]:
    (job,) = GITHUB["jobs"].values()
    return job["steps"]


def _shell_lines() -> dict[str, list[str]]:
    """Each recipe's shell commands, one per line (a folded ``>-`` block is already one line)."""
    github = [line for step in _github_steps() if "run" in step for line in step["run"].splitlines()]
    (job,) = GITLAB.values()
    return {"github": github, "gitlab": list(job["script"])}


def _mmdeploy_calls() -> list[list[str]]:
    calls = [shlex.split(line) for lines in _shell_lines().values() for line in lines if line.strip().startswith("mmdeploy ")]
    assert len(calls) == 4, calls  # run and report in each recipe
    return calls


@pytest.mark.parametrize("argv", _mmdeploy_calls(), ids=lambda argv: " ".join(argv[:2]))
def test_every_command_and_option_the_recipes_call_exists(argv):
    group = typer.main.get_command(app)
    command = group.commands.get(argv[1])
    assert command is not None, f"no command mmdeploy {argv[1]}"
    options = {opt: param for param in command.params for opt in param.opts}
    words = iter(argv[2:])
    for word in words:
        if word.startswith("-"):
            assert word in options, f"mmdeploy {argv[1]} has no option {word}"
            if not options[word].is_flag:
                next(words)  # its value


def test_the_recipes_gate_keep_the_reports_and_cache_the_bundle():
    steps = _github_steps()
    report = next(a for a in _mmdeploy_calls() if a[1] == "report")
    junit, bundle = report[report.index("--junit") + 1], report[2]
    out = next(a for a in _mmdeploy_calls() if a[1] == "run")
    out_dir = out[out.index("--out") + 1]
    assert bundle.startswith(out_dir + "/") and "--baseline" in report
    # GitHub: report.md into the job summary, report files kept, the bundle cached by content.
    summary = [s["run"].strip() for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    assert summary == [f'cat {bundle}/report.md >> "$GITHUB_STEP_SUMMARY"']
    assert all(s.get("if") == "always()" for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    for name in ("report.md", "report.json", "pareto.png"):
        assert f"{bundle}/{name}" in upload["with"]["path"]
    assert junit in upload["with"]["path"] and upload["if"] == "always()"
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert out_dir in cache["with"]["path"].split()
    assert re.search(r"hashFiles\('models/my_model\.pth', 'data/calib/\*\*', 'data/val/\*\*'", cache["with"]["key"])
    # GitLab: the JUnit file is the job's test report, the same files are artifacts, the cache is keyed by the checkpoint.
    (job,) = GITLAB.values()
    assert job["artifacts"]["reports"]["junit"] == junit and job["artifacts"]["when"] == "always"
    assert f"{bundle}/report.md" in job["artifacts"]["paths"] and junit in job["artifacts"]["paths"]
    assert "models/my_model.pth" in job["cache"]["key"]["files"] and len(job["cache"]["key"]["files"]) <= 2
    assert f"{out_dir}/" in job["cache"]["paths"]


def test_the_run_config_in_docs_ci_is_valid():
    text = (ROOT / "docs/ci.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    config = tomllib.loads(block)
    assert config_problems(config) == []
    assert config["out"] == next(a for a in _mmdeploy_calls() if a[1] == "run")[-1]
    assert config["model"][0]["name"] == "my_model"


def _gated(new_changes: dict, old_changes: dict | None = None):
    def report(changes):
        measured = {"32/torch/fp32": (88.0, 2.0), "32/ort/fp32": (88.0, 0.8), "16/ort/fp32": (80.0, 0.4), "16/torch/fp32": (80.0, 1.0)}
        measured.update(changes)
        points = [Point(int(s), e, p, batch=1, top1=v[0], latency_ms=v[1])
                  for label, v in measured.items() if v is not None for s, e, p in [label.split("/")]]
        return build_report(points, batch=1, environment={"cpu": "same"}, training_size=32)

    new, old = report(new_changes), report(old_changes or {})
    return compare_reports(new, old, 0.3, 0.15), new, old


def test_junit_has_one_case_per_point_with_the_gates_reasons():
    # 16/ort lost accuracy, 16/torch is missing, 48/ort is new; 32/* passed.
    result, new, old = _gated({"16/ort/fp32": (79.0, 0.4), "16/torch/fp32": None, "48/ort/fp32": (85.0, 1.5)})
    root = ET.fromstring(gate_junit(result, new, old))
    (suite,) = root.iter("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert sorted(cases) == ["16/ort/fp32", "16/torch/fp32", "32/ort/fp32", "32/torch/fp32", "48/ort/fp32"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("5", "2", "1", "0")
    assert root.get("tests") == "5" and root.get("failures") == "2"
    drop = cases["16/ort/fp32"].find("failure")
    assert drop.get("type") == "accuracy-drop" and "80.00% -> 79.00%" in drop.get("message")
    assert cases["16/torch/fp32"].find("failure").get("type") == "missing-point"
    assert "not gated" in cases["48/ort/fp32"].find("skipped").get("message")
    assert list(cases["32/ort/fp32"]) == []  # passed: no child element


def test_junit_of_a_passing_gate_and_a_latency_skip(monkeypatch):
    monkeypatch.setattr("mmdeploy.report.gate.latency_skip_reason", lambda new, old: "latency comparison skipped: a busy machine")
    result, new, old = _gated({"32/ort/fp32": (88.0, 5.0)})  # slower, but latency is not gated here
    root = ET.fromstring(gate_junit(result, new, old))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "0", "0")
    prop = root.find("testsuite/properties/property")
    assert prop.get("name") == "latency not gated" and "busy" in prop.get("value")


def test_report_junit_cli(cli, tmp_path, image_dir, resnet8_checkpoint):
    bundle = measured_bundle(tmp_path / "bundle", resnet8_checkpoint, image_dir,
                             [(16, "torch", 80.0, 1.0), (16, "ort", 80.0, 0.4), (32, "torch", 88.0, 2.0), (32, "ort", 88.0, 0.8)],
                             evaluated=10_000)  # enough images that a 2-point drop is decided, not inside the noise
    assert cli("report", bundle).exit_code == 0
    baseline = json.loads((bundle / "report.json").read_text())
    for point in baseline["points"]:
        if point["engine"] == "ort" and point["size"] == 16:
            point["top1"] += 2.0  # the baseline was better there
    (tmp_path / "old.json").write_text(json.dumps(baseline))
    junit = tmp_path / "ci" / "gate.xml"
    result = cli("report", bundle, "--baseline", tmp_path / "old.json", "--max-latency-regress", "1000%", "--junit", junit)
    assert result.exit_code == 1 and "accuracy-drop" in result.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "1")
    assert [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None] == ["16/ort/fp32"]
    refused = cli("report", bundle, "--junit", tmp_path / "alone.xml")
    assert refused.exit_code == 1 and "--baseline" in refused.stderr and not (tmp_path / "alone.xml").exists()
