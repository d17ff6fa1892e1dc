"""The command line starts without torch where a command does not need it, and prints full tables into pipes.

Each check runs the CLI in a fresh interpreter and asks which modules it imported: timing belongs to
benchmarks/bench_startup.py, not to tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import measured_bundle

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "matplotlib")


def _imported_by(*argv: str, cwd: Path = ROOT) -> dict:
    """Run ``mmdeploy ARGV`` (or, with no ARGV, import the CLI and build its click app) in a fresh interpreter and
    return its exit code and which heavy modules it imported."""
    code = f"""
import json, sys
argv = {list(argv)!r}
code = 0
from mmdeploy.cli import app
if argv:
    sys.argv = ["mmdeploy", *argv]
    try:
        app()
    except SystemExit as exc:
        code = exc.code or 0
else:
    import typer
    typer.main.get_command(app)
sys.stdout.flush()
print("\\n" + json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report_bundle(tmp_path_factory, image_dir, resnet8_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("startup") / "bundle"
    return measured_bundle(root, resnet8_checkpoint, image_dir,
                           [(16, "torch", 80.0, 1.0), (16, "ort", 80.0, 0.4), (32, "torch", 88.0, 2.0), (32, "ort", 88.0, 0.8)])


def test_importing_the_cli_and_building_the_app_imports_no_torch():
    assert _imported_by() == {"code": 0, "heavy": []}


@pytest.mark.parametrize("argv", [["--help"], ["archs"], ["report", "--help"], ["run", "--help"]])
def test_help_and_archs_import_no_torch(argv):
    assert _imported_by(*argv) == {"code": 0, "heavy": []}


def test_report_and_the_gate_import_no_torch(report_bundle, tmp_path):
    (tmp_path / "out").mkdir()
    first = _imported_by("report", str(report_bundle), "--out", str(tmp_path / "out"))
    assert first == {"code": 0, "heavy": ["matplotlib"]}  # the plot is drawn once...
    gate = _imported_by("report", str(report_bundle), "--out", str(tmp_path / "out"), "--baseline", str(tmp_path / "out/report.json"))
    assert gate == {"code": 0, "heavy": []}  # ...and kept while what it shows is unchanged


def test_an_unchanged_plot_is_kept_and_a_changed_one_drawn_again(report_bundle, tmp_path):
    from mmdeploy.report import report_bundle as make_report

    _, files = make_report(report_bundle, out_dir=tmp_path)
    png = files["png"].read_bytes()
    files["png"].write_bytes(png + b"")  # same bytes, new mtime: only the content key decides
    before = files["png"].stat().st_mtime_ns
    _, again = make_report(report_bundle, out_dir=tmp_path)
    assert again["png"].stat().st_mtime_ns == before and again["png"].read_bytes() == png
    _, other = make_report(report_bundle, out_dir=tmp_path, tolerance=0.0)  # another speed-up: another subtitle
    assert other["png"].read_bytes() != png
    files["png"].write_bytes(b"not a png")  # a damaged file is drawn again, not trusted
    _, repaired = make_report(report_bundle, out_dir=tmp_path)
    assert repaired["png"].read_bytes().startswith(b"\x89PNG")


def test_library_names_stay_reachable_through_the_lazy_packages():
    import mmdeploy.engines as engines
    import mmdeploy.models as models
    import mmdeploy.train as train

    assert train.train_model.__name__ == "train_model" and train.Regime.__name__ == "Regime"
    assert models.load_checkpoint.__name__ == "load_checkpoint" and engines.Engine.__name__ == "Engine"
    with pytest.raises(AttributeError):
        train.no_such_name  # noqa: B018


def test_the_builtin_table_matches_what_the_modules_register():
    from mmdeploy.models import arch_info, list_archs
    from mmdeploy.models.registry import BUILTIN

    for name in list_archs():
        info = arch_info(name)  # imports the module, which registers it
        assert BUILTIN[name] == (info.factory.__module__, info.dataset, info.min_size)


def test_tables_in_a_pipe_are_not_cut(report_bundle, tmp_path, monkeypatch):
    """CliRunner's output is not a terminal: a CI log. Cells keep their full text, one line per row."""
    from typer.testing import CliRunner

    from mmdeploy import cli as cli_module

    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(cli_module.app, ["report", str(report_bundle), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stdout + result.stderr
    header = next(line for line in result.stdout.splitlines() if "size" in line and "engine" in line)
    for column in ("precision", "before calib.", "rel. latency", "settings", "front"):
        assert column in header
    assert "…" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 4 and all("fp32" in row for row in rows)  # one line per point, none wrapped
