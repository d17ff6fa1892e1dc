"""mmdeploy train --precision auto: measured on CPUs with native bf16, remembered per machine, kept on resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from mmdeploy.errors import MMDeployError
from mmdeploy.train import precision as P
from mmdeploy.train.options import RegimeOptions, RunOptions, StopOptions, TrainOptions
from mmdeploy.train.trainer import train_model

CPU = torch.device("cpu")


class _FakeSteps:
    """A ``time_steps`` whose fp32 and bf16 probes take the given seconds; records the call order."""

    def __init__(self, fp32_s: float, bf16_s: float):
        self.seconds = {"fp32": fp32_s, "bf16": bf16_s}
        self.calls: list[str] = []

    def __call__(self, p: str) -> float:
        self.calls.append(p)
        return self.seconds[p]


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)


def test_explicit_precisions_pass_through_and_unknown_ones_fail():
    assert P.choose_precision("fp32", CPU).precision == "fp32"
    assert P.choose_precision("bf16", CPU).precision == "bf16"
    with pytest.raises(MMDeployError, match="unknown precision 'fp16'"):
        P.choose_precision("fp16", CPU)


def test_auto_is_fp32_without_native_bf16_and_nothing_is_timed(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    steps = _FakeSteps(0.1, 0.05)
    choice = P.choose_precision("auto", CPU, cache_key="k", time_steps=steps)
    assert choice.precision == "fp32" and "no native bf16" in choice.reason and steps.calls == []


def test_auto_on_cuda_is_bf16():
    assert P.choose_precision("auto", torch.device("cuda")).precision == "bf16"


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(0.177, 0.238, "fp32"), (0.30, 0.20, "bf16"), (0.100, 0.097, "fp32")])
def test_auto_takes_what_the_probe_measures_faster(native_bf16, fp32_s, bf16_s, expected):
    """bf16 must win by the margin: the Intel case (1.34x slower), the EPYC case (1.5x faster) and a tie (3%)."""
    steps = _FakeSteps(fp32_s, bf16_s)
    choice = P.choose_precision("auto", CPU, cache_key="", time_steps=steps, rounds=4)
    assert choice.precision == expected
    assert choice.fp32_ms == pytest.approx(1000 * fp32_s) and choice.bf16_ms == pytest.approx(1000 * bf16_s)
    # one untimed call each, then rounds that alternate which precision goes first (drift hits both)
    assert steps.calls == ["fp32", "bf16", "fp32", "bf16", "bf16", "fp32", "fp32", "bf16", "bf16", "fp32"]
    assert f"{choice.bf16_ms / choice.fp32_ms:.2f}" in choice.reason


def test_the_choice_is_remembered_per_key_and_a_bad_cache_is_ignored(native_bf16, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDEPLOY_CACHE_DIR", str(tmp_path))
    first = P.choose_precision("auto", CPU, cache_key="xeon|1 threads", time_steps=_FakeSteps(0.1, 0.2))
    assert first.precision == "fp32"
    again = _FakeSteps(0.2, 0.1)  # would now pick bf16, but the machine's answer is remembered
    second = P.choose_precision("auto", CPU, cache_key="xeon|1 threads", time_steps=again)
    assert second.precision == "fp32" and again.calls == [] and "remembered" in second.reason
    other = P.choose_precision("auto", CPU, cache_key="xeon|2 threads", time_steps=_FakeSteps(0.2, 0.1))
    assert other.precision == "bf16"  # another key is measured on its own
    cache = tmp_path / P.CACHE_NAME
    data = json.loads(cache.read_text())
    data["entries"]["xeon|1 threads"]["precision"] = "fp8"  # malformed: must be ignored and measured again
    cache.write_text(json.dumps(data))
    remeasured = _FakeSteps(0.2, 0.1)
    assert P.choose_precision("auto", CPU, cache_key="xeon|1 threads", time_steps=remeasured).precision == "bf16" and remeasured.calls
    cache.write_text("not json")
    assert P.choose_precision("auto", CPU, cache_key="xeon|1 threads", time_steps=_FakeSteps(0.1, 0.2)).precision == "fp32"


def test_a_resume_keeps_its_checkpoints_precision_on_the_same_device_type(native_bf16):
    steps = _FakeSteps(0.1, 0.2)
    kept = P.choose_precision("auto", CPU, resumed={"precision": "bf16", "device": "cpu"}, time_steps=steps)
    assert kept.precision == "bf16" and "resumed" in kept.reason and steps.calls == []
    moved = P.choose_precision("auto", CPU, resumed={"precision": "bf16", "device": "cuda:0"}, cache_key="", time_steps=steps)
    assert moved.precision == "fp32" and steps.calls  # a CUDA checkpoint resumed on a CPU is measured here
    garbled = P.choose_precision("auto", CPU, resumed={"precision": "bf16", "device": "not a device"}, cache_key="", time_steps=steps)
    assert garbled.precision == "fp32"  # an unparsable device in an (untrusted) checkpoint is measured, not trusted


def test_the_probe_leaves_the_run_untouched(image_dir, tmp_path, monkeypatch):
    """auto times real steps on a copy: the trained weights equal an explicit fp32 run's, bit for bit."""
    monkeypatch.setenv("MMDEPLOY_CACHE_DIR", str(tmp_path / "cache"))  # nothing remembered from other tests: the probe runs
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "BF16_MARGIN", 0.0)  # the probe runs, and fp32 is chosen whatever it measures
    common = TrainOptions(arch="cifar_resnet8", regime=RegimeOptions("D+", batch_size=4), stop=StopOptions(steps=5), run=RunOptions(seed=3))
    auto = train_model(image_dir, tmp_path / "auto.pth", replace(common, run=RunOptions(precision="auto", seed=3)))
    fp32 = train_model(image_dir, tmp_path / "fp32.pth", replace(common, run=RunOptions(precision="fp32", seed=3)))
    assert auto.precision == fp32.precision == "fp32"
    a, b = torch.load(tmp_path / "auto.pth", weights_only=True), torch.load(tmp_path / "fp32.pth", weights_only=True)
    choice = a["mmdeploy"]["precision_choice"]
    assert choice["precision"] == "fp32" and choice["fp32_ms"] > 0 and choice["bf16_ms"] > 0 and "measured" in choice["reason"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    resumed = train_model(image_dir, tmp_path / "auto.pth", replace(common, stop=StopOptions(steps=7), resume=tmp_path / "auto.pth"))
    ckpt = torch.load(tmp_path / "auto.pth", weights_only=True)
    assert resumed.steps == 7 and "resumed" in ckpt["mmdeploy"]["precision_choice"]["reason"]


def test_the_cli_prints_the_choice(cli, image_dir, tmp_path):
    result = cli("train", "--data", image_dir, "--arch", "cifar_resnet8", "--batch-size", "4", "--steps", "2", "--out", tmp_path / "m.pth")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "auto: " in result.stdout and ("fp32" in result.stdout or "bf16" in result.stdout)
