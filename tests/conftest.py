"""Shared fixtures: tiny image folders written as PNG/JPEG, tiny checkpoints, and a CLI runner.

Everything is small on purpose (cifar_resnet8, 32x32 images, a few batches) so the whole
suite runs in seconds on two CPU cores.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdeploy.models import create_model

CLASSES = ("cat", "dog")
IMAGES_PER_CLASS = 8
IMAGE_SIDE = 32


def write_images(root: Path, per_class: int = IMAGES_PER_CLASS, side: int = IMAGE_SIDE, seed: int = 0) -> Path:
    """An ImageFolder of noise images tinted per class; half PNG, half JPEG."""
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            pixels[..., label] = pixels[..., label] // 2 + 128  # a class signal a network could learn
            suffix = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(pixels).save(root / cls / f"{i:03d}.{suffix}")
    return root


def reference_dict(model: torch.nn.Module, depth: int) -> dict:
    """A checkpoint as the paper's reference code (convNet.pytorch) saves it."""
    return {
        "model": "resnet",
        "config": f"{{'depth': {depth}, 'dataset': 'cifar10', 'regime': 'sampled_D+'}}",
        "state_dict": model.state_dict(),
        "epoch": 200,
        "best_prec1": 93.1,
    }


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial affine parameters and running stats (a 'trained' look)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model


@pytest.fixture(autouse=True)
def _file_hash_cache(tmp_path_factory, monkeypatch):
    """Tests keep mmdeploy's file-hash cache in their own temp folder, never in ~/.cache."""
    monkeypatch.setenv("MMDEPLOY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mmdeploy-cache"))


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Two classes x 8 images, 32x32 (read-only for tests: copy before changing it)."""
    return write_images(tmp_path_factory.mktemp("images") / "train")


@pytest.fixture(scope="session")
def resnet8_checkpoint(tmp_path_factory) -> Path:
    """A reference-code-style dict holding a cifar_resnet8 with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("cifar_resnet8"))
    path = tmp_path_factory.mktemp("ckpt") / "resnet8.pth"
    torch.save(reference_dict(model, 8), path)
    return path


@pytest.fixture
def cli(monkeypatch):
    """Invoke ``mmdeploy`` in-process with a fixed terminal width; returns the Result.

    stdout and stderr are captured separately (``result.stdout`` / ``result.stderr``).
    """
    from typer.testing import CliRunner

    from mmdeploy import cli as cli_module

    monkeypatch.delenv("MMDEPLOY_DEBUG", raising=False)
    for console in (cli_module.console, cli_module.err_console):
        monkeypatch.setattr(console, "width", 120)
    runner = CliRunner()

    def invoke(*args: str | Path):
        return runner.invoke(cli_module.app, [str(a) for a in args], env={"COLUMNS": "120", "TERMINAL_WIDTH": "120"})

    return invoke


# The library function each command (and each run step) calls with the keywords its flags and config fields map to
# (mmdeploy/flagmap.py): tests/test_flagmap.py and tests/test_pipeline.py check every mapped keyword reaches it.
STEP_FUNCTIONS = {
    "calibrate": "mmdeploy.calib.workflow:calibrate_to_bundle",
    "export": "mmdeploy.export.workflow:export_bundle",
    "eval": "mmdeploy.evaluate:evaluate_target",
    "bench": "mmdeploy.latency.bench:bench_bundle",
    "report": "mmdeploy.report:report_bundle",
}


def step_function(command: str):
    module, name = STEP_FUNCTIONS[command].split(":")
    return getattr(importlib.import_module(module), name)


def measured_bundle(root: Path, checkpoint: Path, images: Path, points: list[tuple[int, str, float, float]], evaluated: int = 16) -> Path:
    """A bundle calibrated at 16 and 32 px with made-up (size, engine, top-1 %, p50 ms) fp32 figures at batch 1 in place
    of eval and bench: what ``report`` and the gate read, without measuring anything. ``evaluated``: the image count
    each top-1 claims (its interval's width)."""
    from mmdeploy import api
    from mmdeploy.bundle import Bundle
    from mmdeploy.results import AccuracyResult, LatencyResult

    api.calibrate(checkpoint, sizes=[16, 32], data=images, out=root, batches=1, batch_size=4)
    with Bundle.update(root) as bundle:
        for size, engine, top1, ms in points:
            bundle.record_accuracy(AccuracyResult(size, engine, "fp32", top1, 100.0, evaluated), str(images), "made-up")
            bundle.record_latency(LatencyResult(size, engine, "fp32", 1, ms, ms * 1.1, ms * 1.2, ms, 1000 / ms, 10, threads=1))
    return root


def calibrate_small(image_dir, ckpt, out, sizes=(16,), seed=0):
    """A quick calibration (2 batches of 4 images) into ``out``: the bundle tests' starting point."""
    from mmdeploy.calib.workflow import calibrate_to_bundle

    return calibrate_to_bundle(ckpt, list(sizes), image_dir, out, batches=2, batch_size=4, seed=seed)


def assert_lifecycle_checked(engine, x: torch.Tensor) -> None:
    """The base class's state checks on ``engine`` (a runner, not yet active): infer before activate, activate twice and
    infer after deactivate are errors; deactivate twice is a no-op; the engine activates again after."""
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        engine(x)
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        engine.infer(x)
    with engine as run:
        assert run.active and run(x).shape[0] == x.shape[0]
        with pytest.raises(RuntimeError, match="activated twice"):
            run.activate()
        assert run.active, "a refused second activate leaves the engine running"
    assert not engine.active
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        engine(x)
    engine.deactivate()  # cleanup may run twice
    with engine as run:  # and the engine can be activated again
        assert run(x).shape[0] == x.shape[0]
