"""Calibration at ImageNet sizes: the channels-last path stays exact, --batches auto stops on a recorded rule, progress in a pipe."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

import mmdeploy.calib.batching as batching
import mmdeploy.calib.bn as bn
import mmdeploy.calib.workflow as workflow
from mmdeploy.calib import calibrate_bn
from mmdeploy.calib.convergence import Convergence, StoppingRule
from mmdeploy.calib.workflow import calibrate_to_bundle, parse_batches
from mmdeploy.config import SCHEMA
from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model
from mmdeploy.progress import LineProgress, Progress
from tests.conftest import randomize_bn
from tests.test_calibrate import CIFAR, _batches, _images, test_statistics_equal_direct_computation_over_all_activations


@pytest.fixture
def channels_last_everywhere(monkeypatch):
    """Every size takes the channels-last path; counts the BN calls it computed itself."""
    calls = []
    original = bn._batch_norm_channels_last
    monkeypatch.setattr(bn, "CHANNELS_LAST_MIN_SIZE", 1)
    monkeypatch.setattr(bn, "_batch_norm_channels_last", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("arch", ["cifar_resnet8", "out_of_order"])
def test_channels_last_statistics_equal_direct_computation(channels_last_everywhere, arch):
    test_statistics_equal_direct_computation_over_all_activations(arch, 10, 4)
    assert channels_last_everywhere, "the channels-last path did not run"


def test_channels_last_batch_norm_is_as_precise_as_the_contiguous_kernel():
    # A large offset is where float32 sums of x and x^2 lose digits (PyTorch's channels-last kernel: ~1e-4 here).
    x = (torch.randn(8, 16, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.5 + 50).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(16) + 0.5, torch.randn(16)
    mean, var = torch.zeros(16), torch.ones(16)
    out = bn._batch_norm_channels_last(x, mean, var, weight, bias, 1.0, 1e-5)
    x64 = x.double()
    exact_mean, exact_var = x64.mean((0, 2, 3)), x64.var((0, 2, 3))
    assert ((mean.double() - exact_mean).abs() / exact_var.sqrt()).max() < 1e-4  # float32 storage of ~50: ulp 4e-6
    assert ((var.double() - exact_var).abs() / exact_var).max() < 1e-6
    assert out.is_contiguous(memory_format=torch.channels_last)
    reference = F.batch_norm(x.contiguous(), None, None, weight, bias, True, 0.0, 1e-5)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_channels_last_leaves_the_model_as_it_was(channels_last_everywhere):
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate_bn(model, _images(8), _batches(8, 4), [16], CIFAR)
    assert all(v.is_contiguous() for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _NeedsContiguous(nn.Module):
    """``.view`` on a conv output: fails on channels-last activations, so calibration must fall back."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(self.bn(y).view(y.shape[0], -1))


def test_a_model_that_needs_contiguous_activations_falls_back(channels_last_everywhere):
    model = _NeedsContiguous().eval()
    sums = calibrate_bn(model, _images(8), _batches(8, 4), [16], CIFAR, augment=False)
    with torch.no_grad():
        from mmdeploy.data import to_input

        acts = model.conv(to_input(_images(8), 16, CIFAR)).double()
    mean, var = sums[16]["bn"].mean_var()
    torch.testing.assert_close(mean, acts.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, acts.var((0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_small_sizes_keep_the_contiguous_path_bit_for_bit(monkeypatch):
    """The shipped demo calibrates 16-48 px: its statistics must stay those of the CI baseline."""
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    images, batches = _images(12), _batches(12, 4)
    default = calibrate_bn(model, images, batches, [16, 48], CIFAR, seed=2)
    monkeypatch.setattr(bn, "CHANNELS_LAST_MIN_SIZE", 10**6)
    contiguous = calibrate_bn(model, images, batches, [16, 48], CIFAR, seed=2)
    for size in (16, 48):
        for name, s in default[size].items():
            assert torch.equal(s.sum, contiguous[size][name].sum) and torch.equal(s.sumsq, contiguous[size][name].sumsq)


def test_line_progress_prints_every_interval_with_rate_and_eta():
    now = [100.0]
    lines = []
    progress = LineProgress(lines.append, interval=10, clock=lambda: now[0])
    with progress.task("calibrating BN at sizes 160", 1000, unit="images") as advance:
        for _ in range(25):  # 40 images every 2 s: 20 images/s
            now[0] += 2
            advance(40)
    assert len(lines) == 6  # at 10, 20, 30, 40, 50 s, then the closing line
    assert lines[0] == "calibrating BN at sizes 160: 200/1000 images (20%), 20.0 images/s, elapsed 0:10, ETA 0:40"
    assert lines[-1] == "calibrating BN at sizes 160: 1000/1000 images (100%), 20.0 images/s, elapsed 0:50, done"


def test_line_progress_is_quiet_for_short_tasks():
    now = [0.0]
    lines = []
    with LineProgress(lines.append, interval=10, clock=lambda: now[0]).task("decoding", 5) as advance:
        now[0] += 9
        advance(5)
    assert lines == []


def test_the_cli_prints_lines_in_a_pipe_and_nothing_with_json():
    from mmdeploy.cli.app import make_progress

    assert isinstance(make_progress(json_out=False), LineProgress)  # pytest's stderr is not a terminal
    assert type(make_progress(json_out=True)) is Progress


def _feed(conv: Convergence, batch_index: int, mean: float, var: float):
    conv.add_batch(batch_index, {16: ([1000, 1000], 4, torch.full((3,), mean), torch.full((3,), var))})


def test_convergence_stops_when_every_layer_is_stable_and_not_before_the_minimum():
    rule = StoppingRule(tolerance=0.01, window=2, min_batches=5, max_batches=50)
    conv = Convergence(["a", "b"], [1, 2], [16], rule)
    for i in range(4):
        _feed(conv, i, 0.0, 1.0)  # nothing moves, but the minimum is 5 batches
        assert not conv.stopped
    _feed(conv, 4, 0.0, 1.0)
    assert conv.stopped and conv.summary()["stopping"]["batches_used"] == 5
    moving = Convergence(["a", "b"], [1, 2], [16], rule)
    for i in range(20):
        _feed(moving, i, float(i), 1.0)  # the mean keeps drifting by a std per batch
    assert not moving.stopped and moving.summary()["final_change"] > 0.01


def test_auto_on_a_small_folder_uses_every_image_like_a_fixed_count(image_dir, resnet8_checkpoint, tmp_path):
    """At most min_batches x batch size images (the shipped demo's 1,000): auto is the fixed calibration, bit for bit."""
    fixed = calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, tmp_path / "fixed", batches=200, batch_size=4)
    auto = calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, tmp_path / "auto", batches="auto", batch_size=4)
    assert auto.images == fixed.images == 16
    a, b = load_file(str(tmp_path / "fixed/sizes/16/weights.safetensors")), load_file(str(tmp_path / "auto/sizes/16/weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    fixed_rec, auto_rec = (json.loads((tmp_path / f"{n}/manifest.json").read_text())["sizes"]["16"]["calibration"] for n in ("fixed", "auto"))
    assert "stopping" not in fixed_rec and "convergence" in fixed_rec
    assert auto_rec["stopping"]["tolerance"] == 0.01 and auto_rec["convergence"]["stopping"]["batches_used"] == 4
    assert auto_rec["key"] != fixed_rec["key"]


def test_auto_stops_early_and_records_what_it_used(image_dir, resnet8_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "StoppingRule", lambda: StoppingRule(tolerance=10.0, window=1, min_batches=2))
    summary = calibrate_to_bundle(resnet8_checkpoint, [16, 24], image_dir, tmp_path / "auto", batches="auto", batch_size=2)
    assert summary.images == 4 and summary.convergence["stopping"]["stopped_early"]
    record = json.loads((tmp_path / "auto/manifest.json").read_text())["sizes"]["16"]["calibration"]
    assert record["batches"] == record["batches_used"] == 2 and record["images"] == 4
    # The batch plan is a prefix of the same seeded order: stopping at 2 equals asking for 2.
    calibrate_to_bundle(resnet8_checkpoint, [16, 24], image_dir, tmp_path / "two", batches=2, batch_size=2)
    for s in (16, 24):
        a, b = load_file(str(tmp_path / f"auto/sizes/{s}/weights.safetensors")), load_file(str(tmp_path / f"two/sizes/{s}/weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", ["0", "-3", "some", 0, 2.5])
def test_bad_batches_are_one_user_error(value):
    with pytest.raises(MMDeployError, match="neither a positive integer nor auto"):
        parse_batches(value)


def test_batches_parse_counts_and_auto():
    assert parse_batches(7) == (7, None) and parse_batches("12") == (12, None)
    count, rule = parse_batches("AUTO")
    assert count == 200 and rule == StoppingRule()


def test_auto_is_refused_under_torch_distributed(image_dir, resnet8_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(workflow.dist, "active", lambda: True)
    monkeypatch.setattr(workflow.dist, "agreed", contextlib.nullcontext)  # no process group here: the rank-agreement steps pass through
    monkeypatch.setattr(workflow.dist, "is_main", lambda: True)
    with pytest.raises(MMDeployError, match="one process"):
        calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, tmp_path / "b", batches="auto")


def test_cli_batches_auto_and_a_bad_value(cli, image_dir, resnet8_checkpoint, tmp_path):
    ok = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", image_dir, "--out", tmp_path / "b", "--batches", "auto", "-b", "4")
    assert ok.exit_code == 0, ok.output
    assert "--batches auto: 4 batches (16 images)" in ok.stdout
    bad = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", image_dir, "--out", tmp_path / "c", "--batches", "many")
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "neither a positive integer nor auto" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_the_run_config_takes_auto_or_a_count():
    field = SCHEMA["calibrate"]["batches"]
    assert field.problems("auto", "calibrate.batches") == [] and field.problems(50, "calibrate.batches") == []
    assert field.problems("sometimes", "calibrate.batches") and field.problems(0, "calibrate.batches")


def test_default_batches_are_the_fixed_200_and_auto_is_opt_in(image_dir, resnet8_checkpoint, tmp_path):
    """No --batches: the reference code's 200 (here: every image), no rule in the manifest; auto records its rule."""
    assert parse_batches(None) == (200, None) and parse_batches("auto")[1] == StoppingRule()
    default = calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, tmp_path / "default", batch_size=2)
    assert default.images == 16 and "stopping" not in default.convergence
    record = json.loads((tmp_path / "default/manifest.json").read_text())["sizes"]["16"]["calibration"]
    assert "stopping" not in record and record["batches"] == 200


def test_calibrate_help_says_200_is_the_default():
    import typer

    from mmdeploy.cli import app

    option = next(p for p in typer.main.get_command(app).commands["calibrate"].params if p.name == "batches")
    assert option.default is None and option.show_default == "200" and "default 200" in option.help and "auto" in option.help
