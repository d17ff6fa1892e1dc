"""The Python API (mmdeploy.api): the README's example runs as written, and each function returns its typed result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import mmdeploy
from mmdeploy import api
from mmdeploy.bundle import Bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.tune import BenchSummary
from mmdeploy.report import Report, load_report
from mmdeploy.results import AccuracyResult, LatencyResult

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert blocks, "the README's Python API section has no ```python block"
    return blocks[0]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's mmdeploy; MMDEPLOY_CACHE_DIR from conftest
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # about 30 s: the ONNX export of two sizes and the dynamic graph dominates
def test_readme_example_runs_as_written(tmp_path):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 14  # "a ~10-line example"
    for shipped in ("models", "calib"):  # the demo's files, where the example (run from a checkout) expects them
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    top1 = {tuple(m.group(1, 2, 3)): float(m.group(4)) for line in lines
            if (m := re.fullmatch(r"(\d+)px (\w+) (calibrated|own BN): top-1 ([\d.]+)%", line))}
    assert set(top1) == {(s, e, c) for s in ("16", "24") for e, c in (("torch", "own BN"), ("torch", "calibrated"), ("ort", "calibrated"))}
    for size in ("16", "24"):  # the exported graph decides like the model it passed the parity gate against
        assert abs(top1[size, "ort", "calibrated"] - top1[size, "torch", "calibrated"]) <= 1.0
    assert top1["24", "torch", "calibrated"] > 50  # a trained CIFAR-10 model (chance is 10%), on the shipped images
    cats = re.fullmatch(r"8 cats at 16 px: \[(.*)\]", lines[-1])
    assert cats and len(cats.group(1).split(", ")) == 8
    bundle = mmdeploy.load(tmp_path / "bundle")  # the example's bundle, on disk: both sizes, each with its ONNX
    assert bundle.sizes == [16, 24] and all(bundle.size(s).artifacts for s in bundle.sizes)


def test_import_mmdeploy_does_not_import_torch():
    done = _python("import sys, mmdeploy; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))", ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_step_functions_live_in_api_because_submodules_share_their_names():
    """A top-level ``mmdeploy.export`` function would be replaced by the submodule ``mmdeploy.export`` when it is imported."""
    import importlib

    for name in ("export", "evaluate", "report"):
        importlib.import_module(f"mmdeploy.{name}")
        assert isinstance(getattr(mmdeploy, name), types.ModuleType)
        assert isinstance(getattr(api, name), types.FunctionType)
    assert mmdeploy.load is api.load and mmdeploy.api is api


def test_every_api_function_is_typed_and_documented():
    import inspect

    for name in api.__all__:
        fn = getattr(api, name)
        sig = inspect.signature(fn)
        assert fn.__doc__ and len(fn.__doc__) > 80, name
        assert sig.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name


# -- each function on a tiny bundle ---------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory, resnet8_checkpoint, image_dir):
    """A tiny bundle made through the API: calibrated at 16 and 24 px, exported for ONNX Runtime."""
    out = tmp_path_factory.mktemp("api") / "bundle"
    calibrated = api.calibrate(resnet8_checkpoint, sizes=[16, 24], data=image_dir, out=out, batches=2, batch_size=4)
    exported = api.export(calibrated, engine="ort", dynamic=False)
    return calibrated, exported


def test_calibrate_returns_the_bundle(made, image_dir):
    calibrated, _ = made
    assert isinstance(calibrated, Bundle)
    assert calibrated.sizes == [16, 24] and calibrated.arch == "cifar_resnet8"
    assert calibrated.size(16).calibration.images == 8  # 2 batches of 4
    assert calibrated.size(16).artifacts == {}  # opened before the export


def test_export_returns_the_bundle_with_its_artifacts(made):
    calibrated, exported = made
    assert isinstance(exported, Bundle) and exported.root == calibrated.root
    for size in (16, 24):
        art = exported.artifact(size, "onnx", "fp32")
        assert art is not None and exported.artifact_usable(art)
    assert exported.dynamic_artifacts() == []  # dynamic=False was passed through


def test_export_from_a_checkpoint_needs_sizes_data_and_out(resnet8_checkpoint, tmp_path):
    with pytest.raises(MMDeployError, match="exporting a checkpoint needs"):
        api.export(resnet8_checkpoint, engine="ort", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_evaluate_returns_accuracy_results(made, image_dir):
    _, bundle = made
    results = api.evaluate(bundle.root, image_dir, engines=["torch", "ort"])  # a folder works as well as a Bundle
    assert results and all(isinstance(r, AccuracyResult) for r in results)
    keys = {(r.size, r.engine, r.calibrated) for r in results}
    assert {(16, "torch", True), (16, "ort", True), (24, "ort", True), (16, "torch", False)} <= keys
    assert all(r.images == 16 and 0 <= r.top1 <= 100 for r in results)
    ort = {r.size: r.top1 for r in results if r.engine == "ort"}
    torch_ = {r.size: r.top1 for r in results if r.engine == "torch" and r.calibrated}
    assert ort == torch_  # 16 images: the gated ONNX decides every one like the model


def test_engine_on_inputs_from_files_matches_the_model(made, image_dir):
    _, bundle = made
    files = sorted((image_dir / "cat").iterdir())[:3]
    x = bundle.preprocess().inputs(files, size=24)
    assert x.shape == (3, 3, 24, 24) and x.dtype == torch.float32
    with mmdeploy.load_engine(bundle, "ort", size=24) as run:
        logits = run(x)
    with torch.no_grad():
        expected = bundle.build_model(24)(x)
    assert logits.shape == (3, 10) and torch.allclose(logits, expected, atol=1e-3)


def test_inputs_refuse_a_file_that_is_not_an_image(made, image_dir, tmp_path):
    _, bundle = made
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    good = sorted((image_dir / "dog").iterdir())[0]
    with pytest.raises(MMDeployError, match=r"not an image: .*notes\.png"):  # not a batch one row short
        bundle.preprocess().inputs([good, bad], size=16)
    with pytest.raises(MMDeployError, match="does not exist"):
        bundle.preprocess().inputs([tmp_path / "missing.jpg"], size=16)


def test_bench_and_report_return_typed_results(made):
    _, bundle = made
    summary = api.bench(bundle, engines=["torch", "ort"], sizes=[16], batches=[1], warmup=1, iters=3, noise_budget_s=0)
    assert isinstance(summary, BenchSummary) and summary.tuned is None
    assert {(r.engine, r.batch) for r in summary.results} == {("torch", 1), ("ort", 1)}
    assert all(isinstance(r, LatencyResult) and r.p50_ms > 0 and r.iters == 3 for r in summary.results)
    assert "cpu" in summary.environment
    api.evaluate(bundle, bundle.calibration_data(), engines=["torch", "ort"], sizes=[16])
    rep = api.report(bundle, reference="16/torch/fp32")
    assert isinstance(rep, Report)
    assert {(p.size, p.engine) for p in rep.points} == {(16, "torch"), (16, "ort")}
    stored = load_report(bundle.root / "report.json")  # written where the CLI writes it
    assert [(p.size, p.engine, p.top1) for p in stored.points] == [(p.size, p.engine, p.top1) for p in rep.points]


def test_bench_command_json_keeps_its_shape(made, cli):
    """`mmdeploy bench --json` now prints a BenchSummary: the same four keys as before, tuning included."""
    import json

    _, bundle = made
    result = cli("bench", bundle.root, "--tune", "--engine", "ort", "--size", "24", "--batch", "1", "--iters", "2", "--warmup", "0",
                 "--noise-budget", "0", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert list(out) == ["results", "environment", "skipped", "tuned"]
    assert [(r["size"], r["engine"], r["batch"]) for r in out["results"]] == [(24, "ort", 1)]
    assert "ort/fp32/24/b1" in out["tuned"]["chosen"] and out["results"][0]["policy"]["source"] == "tuned"
