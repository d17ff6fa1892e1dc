"""Installed like a package: the wheel carries the demo's inputs, the demo runs from it in an empty folder and writes
only there, and OpenVINO missing disables only its own engine.

The wheel test builds the wheel from a copy of the source tree, installs it with the local CPU torch wheel into a fresh
venv (no system site-packages) and runs ``mmdeploy run --quick`` there: minutes, so it is marked ``install`` and left
out of the default run; ``.ci/run`` runs it (``python -m pytest -m install``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mmdeploy.errors import MMDeployError
from mmdeploy.pipeline import DEMO_CONFIG, PROJECT_ROOT, demo_root, load_config, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "runs", "out", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".ruff_cache", ".whl", ".devcarry", "tmp")


def test_the_demo_reads_its_files_from_the_checkout_and_writes_under_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, base = load_config(None)
    assert base == demo_root() == PROJECT_ROOT  # a checkout (or an editable install of one)
    assert Path(config["out"]) == tmp_path / "runs" / "demo"  # not the checkout's runs/
    for spec in config["model"]:
        assert (base / spec["checkpoint"]).is_file() and (base / spec["baseline"]).is_file()
    assert (base / config["data"]["calibration"]).is_dir() and (base / config["data"]["validation"]).is_dir()


def test_an_installed_package_reads_the_demo_from_its_own_copies(tmp_path, monkeypatch):
    import mmdeploy.pipeline as pipeline

    package = tmp_path / "site-packages" / "mmdeploy"
    (package / "_demo" / "calib").mkdir(parents=True)
    monkeypatch.setattr("importlib.resources.files", lambda name: package)
    monkeypatch.setattr(pipeline, "PROJECT_ROOT", tmp_path / "site-packages")
    assert demo_root() == package / "_demo"
    shutil.rmtree(package / "_demo")
    with pytest.raises(MMDeployError, match="not installed"):  # neither copies nor a checkout: one line, not a missing folder
        demo_root()


def test_quick_shrinks_only_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick, _ = load_config(None, quick=True)
    assert quick["calibrate"]["sizes"] == [16, 32] and quick["export"]["engines"] == ["ort"] and not quick["bench"]["tune"]
    assert quick["data"] == DEMO_CONFIG["data"] and quick["model"] == DEMO_CONFIG["model"]
    config = tmp_path / "my.toml"
    config.write_text('[[model]]\nname = "m"\ncheckpoint = "m.pth"\n')
    with pytest.raises(MMDeployError, match="--quick"):
        load_config(config, quick=True)
    with pytest.raises(MMDeployError, match="gate"):
        run_pipeline(None, gate=True, quick=True)


def test_run_out_replaces_the_configs_out(tmp_path, monkeypatch, cli):
    import mmdeploy.pipeline as pipeline

    seen = {}

    def record(config, base, *args):
        seen["out"], seen["base"] = config["out"], base
        return pipeline.RunSummary(config, [], [], {})

    monkeypatch.setattr(pipeline, "_run_models", record)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cfg" / "my.toml"
    config.parent.mkdir()
    config.write_text('out = "elsewhere"\n[[model]]\nname = "m"\ncheckpoint = "m.pth"\n')
    assert cli("run", config).exit_code == 0
    assert (tmp_path / "cfg" / seen["out"]).resolve() == tmp_path / "cfg" / "elsewhere"  # the config's out: beside the config
    assert cli("run", config, "--out", "mine").exit_code == 0
    assert Path(seen["out"]) == tmp_path / "mine" and seen["base"] == tmp_path / "cfg"  # --out: under the current folder
    assert cli("run", "--quick", "--out", "q").exit_code == 0
    assert Path(seen["out"]) == tmp_path / "q" and seen["base"] == demo_root()


def test_openvino_missing_disables_only_the_ov_engine(monkeypatch):
    """The default dependency may be absent (a platform without its wheels, or uninstalled): one line for ov, the rest works."""
    import builtins

    from mmdeploy.engines import available_engines
    from mmdeploy.engines import openvino as ov_engine

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for cached in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, cached)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    if hasattr(ov_engine, "_ov_probe") and hasattr(ov_engine._ov_probe, "cache_clear"):
        ov_engine._ov_probe.cache_clear()
    reasons = available_engines()
    assert "openvino" in reasons["ov"].lower() and "\n" not in reasons["ov"]
    assert reasons["torch"] == "" and reasons["ort"] == ""


def _setuptools_builds_here() -> bool:
    """Whether this environment's setuptools meets pyproject's build requirement (else pip builds in an isolated one)."""
    import setuptools

    return int(setuptools.__version__.split(".")[0]) >= 68


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.install
def test_the_wheel_runs_the_demo_in_an_empty_folder_and_writes_only_there(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    wheels = tmp_path / "wheels"
    isolation = [] if not _setuptools_builds_here() else ["--no-build-isolation"]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "-q", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    assert wheel.stat().st_size < 25e6, f"the wheel should hold only the demo's files beside the code: {wheel.stat().st_size / 1e6:.1f} MB"
    names = zipfile.ZipFile(wheel).namelist()
    demo = [n for n in names if n.startswith("mmdeploy/_demo/")]
    assert "mmdeploy/_demo/models/cifar_resnet20_mixsize_dplus.pth" in demo and "mmdeploy/_demo/ci/baseline/fixed32/report.json" in demo
    assert sum(n.startswith("mmdeploy/_demo/calib/val/") for n in names) == sum(1 for p in (ROOT / "calib/val").rglob("*") if p.is_file())
    assert not [n for n in names if n.startswith(("tests/", "models/", "calib/", "benchmarks/")) or n.endswith(".safetensors")]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    import torch

    torch_version = torch.__version__.split("+")[0]  # the local CPU wheel (a plain `torch` would be a 5 GB CUDA build)
    for requirement in ([f"torch=={torch_version}"], [str(wheel)]):
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirement], capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]

    work = tmp_path / "empty"
    work.mkdir()
    before = _files(venv)
    run_env = {**env, "MMDEPLOY_CACHE_DIR": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl"), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    run = subprocess.run([str(venv / "bin" / "mmdeploy"), "run", "--quick"], cwd=work, capture_output=True, text=True, env=run_env, timeout=1800)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    for model in ("mixsize", "fixed32"):
        assert (work / "runs/demo" / model / "report.md").is_file() and (work / "runs/demo" / model / "manifest.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert _files(venv) == before, "the run wrote into the environment"
