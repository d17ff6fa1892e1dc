"""mmdeploy train: MixSize tables, the epoch plan, gradient smoothing, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import mmdeploy.train.command  # noqa: F401  (registers `mmdeploy train` on the app)
from mmdeploy.data import Preprocess, augment_crop_flip
from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model, load_checkpoint
from mmdeploy.train.batches import make_batch
from mmdeploy.train.optim import GradSmoother, lr_at, param_groups
from mmdeploy.train.options import RegimeOptions, RunOptions, StopOptions, TrainOptions
from mmdeploy.train.regime import CIFAR_SIZES, make_regime, mixsize_config, parse_sizes
from mmdeploy.train.sampler import epoch_steps, part_sizes, steps_per_epoch
from mmdeploy.train.trainer import TrainMonitor, train_model

# -- regimes ---------------------------------------------------------------------------------


def test_dplus_table_matches_reference():
    r = make_regime("D+")
    assert {s.size: (s.batch, s.duplicates) for s in r.sizes} == {32: (64, 1), 48: (28, 1), 24: (64, 2), 16: (64, 4)}
    assert {s.size: s.prob for s in r.sizes} == pytest.approx(CIFAR_SIZES)
    assert r.reference_name == "sampled_D+"


def test_bplus_table_matches_reference():
    r = make_regime("B+")
    assert {s.size: (s.batch, s.duplicates) for s in r.sizes} == {32: (64, 1), 48: (28, 1), 24: (114, 1), 16: (256, 1)}
    assert r.reference_name == "sampled_B+"


def test_fixed_regime_and_rule():
    r = make_regime("fixed", size=24)
    assert [(s.size, s.prob, s.batch, s.duplicates) for s in r.sizes] == [(24, 1.0, 64, 1)]
    assert make_regime("fixed").sizes[0].size == 32
    assert mixsize_config(64, 32, 64, "D+") == (16, 1)  # scale 0.25 < 0.5: batch scaling
    assert make_regime("D+", dataset="imagenet").base_size == 224


def test_sizes_from_the_command_line():
    assert parse_sizes("32:0.5, 16:0.5") == {32: 0.5, 16: 0.5}
    r = make_regime("B+", "64:0.25,32:0.75")
    assert [(s.size, s.batch) for s in r.sizes] == [(64, 16), (32, 64)]
    for bad in ("32", "32:x", "32:0.5,32:0.5", "32:0.5,16:0.2", "32:0,16:1", ""):
        with pytest.raises(MMDeployError):
            make_regime("D+", bad)
    with pytest.raises(MMDeployError, match="regime"):
        make_regime("C+")


# -- the epoch plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["D+", "B+", "fixed"])
@pytest.mark.parametrize("n", [1000, 137])
def test_sampler_visits_each_image_once_with_the_size_mix(kind, n):
    regime = make_regime(kind)
    for epoch in (0, 1):
        steps = epoch_steps(n, regime, seed=3, epoch=epoch)
        seen = torch.cat([s.indices for s in steps])
        assert torch.equal(seen.sort().values, torch.arange(n))  # every image exactly once
        assert len(steps) == steps_per_epoch(n, regime)
        for cfg in regime.sizes:
            mine = [s for s in steps if s.size == cfg.size]
            count = sum(len(s.indices) for s in mine)
            assert abs(count - n * cfg.prob) < 1  # within the split's rounding
            assert all(s.duplicates == cfg.duplicates for s in mine)
            assert all(2 <= len(s.indices) <= cfg.batch + 1 for s in mine)
            assert sum(len(s.indices) == cfg.batch for s in mine) >= len(mine) - 1
        sizes_in_order = [s.size for s in steps]
        assert len(regime.sizes) == 1 or sizes_in_order != sorted(sizes_in_order, key=[c.size for c in regime.sizes].index)


def test_sampler_is_deterministic_per_seed_and_epoch():
    regime = make_regime("D+")

    def order(seed, epoch):
        return [(s.size, s.indices.tolist()) for s in epoch_steps(500, regime, seed, epoch)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_part_sizes_sum_exactly():
    assert part_sizes(10, [0.3, 0.2, 0.3, 0.2]) == [3, 2, 3, 2]
    assert sum(part_sizes(50_001, list(CIFAR_SIZES.values()))) == 50_001


# -- optimizer pieces ------------------------------------------------------------------------


def test_gradient_smoothing_math():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    smoother = GradSmoother(momentum=0.9, eps=1e-6)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])  # global norm 5
    assert smoother([a, b]).item() == pytest.approx(5.0)
    assert smoother.running.item() == pytest.approx(5.0)  # first step: r = |g|
    assert a.grad.item() == pytest.approx(3.0 * 5 / (5 + 1e-6))
    a.grad, b.grad = torch.tensor([6.0]), torch.tensor([8.0])  # norm 10
    smoother([a, b])
    r = 0.9 * 5 + 0.1 * 10
    assert smoother.running.item() == pytest.approx(r)
    assert (a.grad.item(), b.grad.item()) == pytest.approx((6 * r / (10 + 1e-6), 8 * r / (10 + 1e-6)))
    restored = GradSmoother()
    restored.load_state_dict(smoother.state_dict())
    assert restored.running.item() == pytest.approx(r)


def test_no_weight_decay_on_batchnorm_and_biases():
    model = create_model("cifar_resnet8")
    decay, no_decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and p.dim() > 1 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"fc.bias", "bn1.weight", "bn1.bias", "layer2.0.downsample.1.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_learning_rate_schedules():
    assert lr_at(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1) == pytest.approx(0.05)
    assert lr_at(99, 100, 0.1) < 1e-3
    assert [lr_at(s, 100, 0.1, "step") for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert [lr_at(s, 100, 0.1, "cosine", warmup=4) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_augmentation_matches_the_calibration_recipe_and_duplicates_differ():
    x = torch.rand(6, 3, 16, 16)
    assert torch.equal(augment_crop_flip(x, torch.Generator().manual_seed(5)), augment_crop_flip(x, torch.Generator().manual_seed(5)))
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    batch, labels = make_batch(images, torch.arange(4), torch.tensor([2, 0]), 16, 4, Preprocess("cifar"), torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 16, 16)
    assert labels.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    assert len({tuple(batch[i].flatten()[:64].tolist()) for i in range(4)}) > 1  # copies are augmented independently


# -- end to end ---------------------------------------------------------------------------------


def _train(cli, data, out, *extra):
    result = cli("train", "--data", data, "--arch", "cifar_resnet8", "--batch-size", "4", "--out", out, "--json", *extra)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_two_steps_change_weights_and_calibrate_reads_the_checkpoint(cli, image_dir, tmp_path):
    out = tmp_path / "m.pth"
    summary = _train(cli, image_dir, out, "--steps", "2", "--epochs", "50")  # --steps wins
    assert summary["steps"] == 2 and summary["regime"]["kind"] == "D+" and summary["images_per_s"] > 0

    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # plain types only
    assert ckpt["model"] == "resnet" and ckpt["config"] == "{'depth': 8, 'dataset': 'cifar10', 'regime': 'sampled_D+'}"
    assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["best_prec1"], float)
    mm = ckpt["mmdeploy"]
    assert mm["arch"] == "cifar_resnet8" and mm["arch_kwargs"] == {"num_classes": 2} and mm["training_size"] == 32
    assert mm["preprocess"]["kind"] == "cifar" and mm["steps"] == 2 and mm["command"].startswith("mmdeploy train --data")
    assert ckpt["optim_state_dict"]["state"]  # momentum buffers, for resuming

    torch.manual_seed(0)  # the trainer's initialization
    init = create_model("cifar_resnet8", num_classes=2).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in ckpt["state_dict"].items() if k.endswith("weight"))

    for path in (out, out.with_suffix(".safetensors")):
        loaded = load_checkpoint(path)
        assert loaded.arch == "cifar_resnet8" and loaded.config["regime"] == "sampled_D+"
        assert all(torch.equal(loaded.state_dict[k], v) for k, v in ckpt["state_dict"].items())

    bundle = tmp_path / "bundle"
    result = cli("calibrate", out, "--size", "16", "--size", "24", "--data", image_dir, "--out", bundle, "--batches", "2", "--batch-size", "4")
    assert result.exit_code == 0, result.stdout + result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training_size"] == 32


def test_resume_continues_the_step_count(cli, image_dir, tmp_path):
    out = tmp_path / "m.pth"
    assert _train(cli, image_dir, out, "--steps", "2")["steps"] == 2
    summary = _train(cli, image_dir, out, "--steps", "5", "--resume", out)
    assert summary["steps"] == 5
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["train_state"]["step"] == 5 and ckpt["mmdeploy"]["steps"] == 5
    assert len(ckpt["train_state"]["history"]) == 1  # the first segment's command
    assert "--resume" in ckpt["mmdeploy"]["command"]


class _InterruptAfterFirstEpoch(TrainMonitor):
    def end_epoch(self, record):
        raise KeyboardInterrupt


def test_an_interrupted_run_resumes_exactly(image_dir, tmp_path):
    """Ctrl-C saves; resuming replays the same plan, augmentation and schedule as a run never stopped."""
    common = TrainOptions(arch="cifar_resnet8", regime=RegimeOptions("B+", batch_size=4), stop=StopOptions(steps=7))
    train_model(image_dir, tmp_path / "straight.pth", common)
    with pytest.raises(KeyboardInterrupt):
        train_model(image_dir, tmp_path / "resumed.pth", common, monitor=_InterruptAfterFirstEpoch())
    stopped = torch.load(tmp_path / "resumed.pth", weights_only=True)
    assert stopped["mmdeploy"]["stopped_early"] == "interrupted" and 0 < stopped["train_state"]["step"] < 7
    train_model(image_dir, tmp_path / "resumed.pth", dataclasses.replace(common, resume=tmp_path / "resumed.pth"))
    a = torch.load(tmp_path / "straight.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed.pth", weights_only=True)
    assert b["train_state"]["step"] == 7 and b["epoch"] == a["epoch"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6)


def test_max_minutes_stops_early_and_records_it(image_dir, tmp_path):
    summary = train_model(image_dir, tmp_path / "m.pth", TrainOptions(arch="cifar_resnet8", regime=RegimeOptions("fixed", size=16, batch_size=4),
                                                                      stop=StopOptions(epochs=100, max_minutes=1e-9)))
    assert summary.stopped_early == "max-minutes" and summary.steps == 1
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    assert ckpt["mmdeploy"]["stopped_early"] == "max-minutes" and ckpt["mmdeploy"]["regime"]["kind"] == "fixed"
    assert ckpt["config"] == "{'depth': 8, 'dataset': 'cifar10', 'regime': 'normal'}"
    assert not ckpt["mmdeploy"]["optimizer"]["grad_smoothing"]  # the reference's fixed regime has none


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--epochs"),
        (("--steps", "1", "--sizes", "32:0.5"), "sum"),
        (("--steps", "1", "--regime", "fixed", "--size", "2"), "too small"),
        (("--steps", "1", "--schedule", "linear"), "schedule"),
        (("--steps", "1", "--device", "tpu"), "device"),
    ],
)
def test_user_errors_are_one_line(cli, image_dir, tmp_path, args, message):
    result = cli("train", "--data", image_dir, "--arch", "cifar_resnet8", "--out", tmp_path / "m.pth", *args)
    assert result.exit_code == 1
    assert message in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.pth").exists()


def test_existing_output_is_not_overwritten_by_accident(cli, image_dir, tmp_path):
    out = tmp_path / "m.pth"
    out.write_bytes(b"precious")
    result = cli("train", "--data", image_dir, "--arch", "cifar_resnet8", "--out", out, "--steps", "1")
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"precious"


def test_plain_output_prints_a_line_per_epoch(cli, image_dir, tmp_path):
    result = cli("train", "--data", image_dir, "--arch", "cifar_resnet8", "--batch-size", "4", "--out", tmp_path / "m.pth", "--epochs", "1")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "epoch 0:" in result.stdout and "images/s" in result.stdout and "m.pth" in result.stdout
    assert not math.isnan(float(result.stdout.split("loss ")[1].split(",")[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_is_device_safe(image_dir, tmp_path):
    """Batches made on the GPU match the CPU's (same CPU-drawn augmentation); a CUDA run saves a CPU checkpoint."""
    images = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    labels, rows, pre = torch.arange(8), torch.tensor([5, 1, 2]), Preprocess("cifar")
    cpu = make_batch(images, labels, rows, 24, 2, pre, torch.Generator().manual_seed(1))
    gpu = make_batch(images.cuda(), labels.cuda(), rows, 24, 2, pre, torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu[1].cpu(), cpu[1])
    options = TrainOptions(arch="cifar_resnet8", regime=RegimeOptions(batch_size=4), stop=StopOptions(steps=6), run=RunOptions(device="cuda"))
    summary = train_model(image_dir, tmp_path / "m.pth", options)
    assert summary.precision == "bf16" and math.isfinite(summary.loss)
    loaded = load_checkpoint(tmp_path / "m.pth")
    assert all(v.device.type == "cpu" for v in loaded.state_dict.values())
    resumed = train_model(image_dir, tmp_path / "m.pth", dataclasses.replace(options, stop=StopOptions(steps=8), run=RunOptions(device="cpu"),
                                                                          resume=tmp_path / "m.pth"))
    assert resumed.steps == 8  # a CUDA checkpoint resumes on the CPU


# -- --arch-kwargs: a factory's keyword arguments from the user's command -----------------------------

WIDE_NET = """
import torch.nn as nn

CALLS = []


def build(num_classes=10, width=4):
    CALLS.append({"num_classes": num_classes, "width": width})
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


build.mmdeploy_dataset = "cifar"
"""


@pytest.fixture
def wide_net(tmp_path, monkeypatch):
    """A user module ``widenet_<test>:build(num_classes, width)`` (a fresh name per test: imported modules are cached)."""
    name = f"widenet_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(WIDE_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:build"


def _train_args(image_dir, spec, out, *extra):
    return ("train", "--data", image_dir, "--arch", spec, "--regime", "fixed", "--size", "16", "--batch-size", "4", "--steps", "1",
            "--out", out, *extra)


def test_arch_kwargs_reach_the_factory_and_the_checkpoint_records_the_call(cli, image_dir, tmp_path, wide_net):
    import importlib

    out = tmp_path / "wide.pth"
    result = cli(*_train_args(image_dir, wide_net, out, "--arch-kwargs", '{"width": 6}', "--json"))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert importlib.import_module(wide_net.split(":")[0]).CALLS[0] == {"num_classes": 2, "width": 6}  # num_classes from --data
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["mmdeploy"]["arch_kwargs"] == {"num_classes": 2, "width": 6}
    assert ckpt["state_dict"]["0.weight"].shape[0] == 6 and ckpt["mmdeploy"]["command"].count("--arch-kwargs") == 1

    # Later commands rebuild the recorded call only when the user names it again (the checkpoint is data).
    common = ("--size", "16", "--data", image_dir, "--batches", "1", "--batch-size", "4")
    alone = cli("calibrate", out, "--arch", wide_net, "--out", tmp_path / "b1", *common)
    assert alone.exit_code == 1 and "width=6" in alone.stderr and "--arch-kwargs" in alone.stderr
    again = cli("calibrate", out, "--arch", wide_net, "--arch-kwargs", '{"num_classes": 2, "width": 6}', "--out", tmp_path / "b2", *common)
    assert again.exit_code == 0, again.stdout + again.stderr

    # A resume must make the same call (its weights fit only that model).
    other = cli(*_train_args(image_dir, wide_net, out, "--arch-kwargs", '{"width": 8}', "--resume", out))
    assert other.exit_code == 1 and "--resume" in other.stderr and "--arch-kwargs '{\"width\": 6}'" in other.stderr
    same = cli(*_train_args(image_dir, wide_net, out, "--arch-kwargs", '{"width": 6}', "--resume", out, "--steps", "2"))
    assert same.exit_code == 0, same.stdout + same.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{width: 6}", "is not JSON"),
        ("[6]", "is a JSON list, not an object"),
        ('{"num_classes": 5}', "num_classes 5, but --data has 2 class folders"),
        ('{"depth": 3}', "does not take"),
    ],
)
def test_bad_arch_kwargs_are_one_line_and_write_nothing(cli, image_dir, tmp_path, wide_net, text, message):
    out = tmp_path / "m.pth"
    result = cli(*_train_args(image_dir, wide_net, out, "--arch-kwargs", text))
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not out.exists() and not out.with_suffix(".safetensors").exists()


def test_a_registered_architecture_takes_kwargs_too(image_dir, tmp_path):
    options = TrainOptions(arch="cifar_resnet8", arch_kwargs={"num_classes": 2}, regime=RegimeOptions("fixed", size=16, batch_size=4),
                           stop=StopOptions(steps=1))
    train_model(image_dir, tmp_path / "m.pth", options)
    assert load_checkpoint(tmp_path / "m.pth").arch_kwargs == {"num_classes": 2}
