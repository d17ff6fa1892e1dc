"""Checkpoints users really have (PyTorch < 0.4.1, training-script dicts) load; broken weights,
data with more classes than the model and sizes that cannot fit in memory are refused in one
line before any work."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model, load_checkpoint
from mmdeploy.models.fit import check_model_fits, probe_model
from tests.conftest import randomize_bn, reference_dict, write_images


def _old_bn_state(model: torch.nn.Module) -> dict:
    """A state dict as PyTorch < 0.4.1 saved it: BatchNorm without num_batches_tracked."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_checkpoint_without_num_batches_tracked_loads_with_one_note(tmp_path, cli, image_dir):
    model = randomize_bn(create_model("cifar_resnet8"))
    ckpt = reference_dict(model, 8)
    ckpt["state_dict"] = _old_bn_state(model)
    torch.save(ckpt, tmp_path / "old.pth")
    loaded = load_checkpoint(tmp_path / "old.pth")
    assert torch.equal(loaded.build().state_dict()["bn1.running_var"], model.state_dict()["bn1.running_var"])
    assert int(loaded.state_dict["layer1.0.bn1.num_batches_tracked"]) == 0
    result = cli("eval", tmp_path / "old.pth", "--size", "16", "--size", "32", "--data", image_dir)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("saved by PyTorch < 0.4.1") == 1 and "9 BatchNorm layers" in result.stderr


def test_other_missing_keys_are_still_refused(tmp_path):
    state = _old_bn_state(create_model("cifar_resnet8"))
    del state["layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(MMDeployError, match=r"missing 2: layer1\.0\.bn1\.running_var, layer1\.0\.bn1\.num_batches_tracked"):
        load_checkpoint(tmp_path / "bad.pth", arch="cifar_resnet8")


@pytest.fixture
def user_net(tmp_path, monkeypatch):
    (tmp_path / "oldnets.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def net():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("oldnets", None)
    yield "oldnets:net"
    sys.modules.pop("oldnets", None)


@pytest.mark.parametrize("best", [93.1, torch.tensor(93.1), np.float64(93.1)], ids=["float", "tensor", "numpy"])
def test_training_script_dict_with_module_prefix_loads_under_user_arch(tmp_path, cli, image_dir, user_net, best):
    import oldnets

    model = randomize_bn(oldnets.net())
    state = {f"module.{k}": v for k, v in _old_bn_state(model).items()}  # DataParallel, PyTorch < 0.4.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"state_dict": state, "best_prec1": best, "epoch": 90, "optimizer": opt.state_dict()}, tmp_path / "ckpt.pth.tar",
               _use_new_zipfile_serialization=False)  # the legacy (pre-1.6) pickle format
    loaded = load_checkpoint(tmp_path / "ckpt.pth.tar", arch=user_net)
    assert loaded.arch == user_net and loaded.meta["epoch"] == 90
    assert torch.equal(loaded.build().state_dict()["1.running_mean"], model.state_dict()["1.running_mean"])
    result = cli("eval", tmp_path / "ckpt.pth.tar", "--arch", user_net, "--size", "16", "--data", image_dir)
    assert result.exit_code == 0, result.output


def test_numpy_arrays_still_need_unpickling(tmp_path):
    torch.save({"state_dict": create_model("cifar_resnet8").state_dict(), "hist": np.zeros(3)}, tmp_path / "arr.pth")
    with pytest.raises(MMDeployError, match="arbitrary unpickling"):
        load_checkpoint(tmp_path / "arr.pth", arch="cifar_resnet8")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(tmp_path, cli, image_dir, bad):
    state = create_model("cifar_resnet8").state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = bad
    torch.save(state, tmp_path / "broken.pth")
    line = _one_line_error(cli("calibrate", tmp_path / "broken.pth", "--arch", "cifar_resnet8", "--size", "16", "--data", image_dir,
                               "--out", tmp_path / "b"))
    assert "1 NaN/Inf values in layer2.0.conv1.weight" in line
    assert not (tmp_path / "b").exists()


def test_data_with_more_classes_than_the_model_is_refused_before_work(tmp_path, cli):
    data = write_images(tmp_path / "three", per_class=2)
    (data / "bird").mkdir()
    (data / "cat" / "000.png").rename(data / "bird" / "000.png")
    model = create_model("cifar_resnet8", num_classes=2)
    torch.save(model.state_dict(), tmp_path / "two.pth")
    for command in (["calibrate", tmp_path / "two.pth", "--size", "16", "--data", data, "--out", tmp_path / "b", "--arch", "cifar_resnet8"],
                    ["eval", tmp_path / "two.pth", "--size", "16", "--data", data, "--arch", "cifar_resnet8"],
                    ["export", tmp_path / "two.pth", "--size", "16", "--data", data, "--out", tmp_path / "b", "--arch", "cifar_resnet8"]):
        line = _one_line_error(cli(*command))
        assert "has 3 class folders but the model has 2 outputs" in line, line
    assert not (tmp_path / "b").exists()
    check_model_fits(model, [16], 4, "cpu", data_classes=2)  # as many classes: fine


def test_huge_size_is_refused_up_front_and_export_leaves_nothing(tmp_path, cli, resnet8_checkpoint, image_dir):
    out = tmp_path / "bundle"
    line = _one_line_error(cli("export", resnet8_checkpoint, "--size", "100000", "--data", image_dir, "--out", out))
    assert "size 100000 needs at least" in line and "GiB of activation memory" in line and "use sizes up to about" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no bundle, no staging folder
    line = _one_line_error(cli("calibrate", resnet8_checkpoint, "--size", "16", "--size", "100000", "--data", image_dir, "--out", out))
    assert "size 100000" in line and not out.exists()
    line = _one_line_error(cli("eval", resnet8_checkpoint, "--size", "100000", "--data", image_dir))
    assert "size 100000" in line


def test_memory_estimate_scales_with_area_and_batch():
    model = create_model("cifar_resnet8")
    probe = probe_model(model, 32)
    assert probe.num_classes == 10
    # The largest layer of a CIFAR ResNet: 16 channels at full resolution, its input and output alive together.
    assert probe.peak_bytes >= 2 * 16 * 32 * 32 * 4
    assert probe.bytes_at(64, 8) == 4 * 8 * probe.peak_bytes
    with pytest.raises(MMDeployError, match="size 65536 needs at least"):
        check_model_fits(model, [32, 65536], 64, "cpu")
    check_model_fits(model, [32, 48], 64, "cpu")  # the sizes users calibrate fit easily
