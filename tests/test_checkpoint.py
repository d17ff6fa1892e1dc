"""Every accepted checkpoint format loads strictly; the registry matches the reference key layouts."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from mmdeploy.errors import MMDeployError
from mmdeploy.models import arch_info, create_model, list_archs, load_checkpoint
from mmdeploy.models.checkpoint import load_state_strict
from tests.conftest import randomize_bn, reference_dict


class NotAWeight:
    """A custom class: a checkpoint holding one can only be read by arbitrary unpickling."""

    def __init__(self):
        self.note = "pickled object"


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_resnet50_keys() -> list[str]:
    """torchvision's ResNet-50 state_dict keys, spelled out from its naming rule (v1.5 layout)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{b}" for b in bn)]
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            prefix = f"layer{stage}.{i}"
            for j in (1, 2, 3):
                keys += [f"{prefix}.conv{j}.weight", *(f"{prefix}.bn{j}.{b}" for b in bn)]
            if i == 0:
                keys += [f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{b}" for b in bn)]
    return keys + ["fc.weight", "fc.bias"]


# -- the registry ---------------------------------------------------------------------------


def test_resnet50_has_torchvision_layout():
    model = create_model("resnet50")
    state = model.state_dict()
    assert sorted(state) == sorted(torchvision_resnet50_keys())
    assert len(state) == 320
    assert _params(model) == 25_557_032
    for key in ("layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.weight"):
        assert key in state
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["fc.weight"].shape == (1000, 2048)
    # v1.5: the stride sits on the 3x3 conv2, not on conv1
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)


def test_cifar_resnet44_keys_and_params():
    model = create_model("cifar_resnet44")
    state = model.state_dict()
    assert len(state) == 272
    assert _params(model) == 661_338
    downsample = sorted({k.split(".downsample")[0] for k in state if ".downsample." in k})
    assert downsample == ["layer2.0", "layer3.0"]
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["fc.weight"].shape == (10, 64)


@pytest.mark.parametrize("name", [n for n in list_archs() if n.startswith("cifar_")] + ["mobilenet_v2"])
def test_registry_models_run_at_their_smallest_size(name):
    info = arch_info(name)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, info.min_size, info.min_size))
    assert out.shape[0] == 2


# -- each format -----------------------------------------------------------------------------


def test_reference_dict_with_config_string_loads_strictly(tmp_path):
    model = randomize_bn(create_model("cifar_resnet20"))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(reference_dict(model, 20), path)
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "cifar_resnet20"
    assert ckpt.format == "reference-dict"
    assert ckpt.config["depth"] == 20 and ckpt.config["regime"] == "sampled_D+"
    assert ckpt.meta["epoch"] == 200 and ckpt.meta["best_prec1"] == pytest.approx(93.1)
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_reference_config_is_never_evaluated(tmp_path):
    state = create_model("cifar_resnet8").state_dict()
    torch.save({"model": "resnet", "config": "__import__('os').getcwd()", "state_dict": state}, tmp_path / "evil.pth")
    with pytest.raises(MMDeployError, match="not a literal dict"):
        load_checkpoint(tmp_path / "evil.pth")


def test_torchvision_resnet50_state_dict_loads_strictly(tmp_path):
    model = create_model("resnet50")
    path = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), path)
    ckpt = load_checkpoint(path, arch="resnet50")
    assert ckpt.arch == "resnet50" and ckpt.format == "state-dict"
    assert sorted(ckpt.state_dict) == sorted(torchvision_resnet50_keys())
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_data_parallel_prefix_is_stripped(tmp_path):
    model = create_model("cifar_resnet8")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pth")
    ckpt = load_checkpoint(tmp_path / "dp.pth", arch="cifar_resnet8")
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_state_dict_wrapper_with_arch(tmp_path):
    model = create_model("cifar_resnet8")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    ckpt = load_checkpoint(tmp_path / "wrapped.pth", arch="cifar_resnet8")
    assert ckpt.format == "state-dict"
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_plain_state_dict_without_arch_asks_for_it(tmp_path):
    torch.save(create_model("cifar_resnet8").state_dict(), tmp_path / "plain.pth")
    with pytest.raises(MMDeployError, match="does not say its architecture") as info:
        load_checkpoint(tmp_path / "plain.pth")
    assert "--arch" in info.value.hint


def test_safetensors_with_metadata(tmp_path):
    model = randomize_bn(create_model("cifar_resnet8"))
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path), metadata={"arch": "cifar_resnet8"})
    ckpt = load_checkpoint(path)
    assert ckpt.format == "safetensors" and ckpt.arch == "cifar_resnet8"
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_safetensors_with_json_sidecar(tmp_path):
    model = create_model("cifar_resnet20")
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    (tmp_path / "w.json").write_text(json.dumps({"model": "resnet", "config": "{'depth': 20, 'dataset': 'cifar10'}"}))
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "cifar_resnet20"
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


def test_user_architecture_factory(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def tiny(num_classes=3):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from userpkg.nets import tiny

    model = tiny()
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    ckpt = load_checkpoint(tmp_path / "tiny.pth", arch="userpkg.nets:tiny")
    assert ckpt.arch == "userpkg.nets:tiny"
    assert _same_state(ckpt.build().state_dict(), model.state_dict())


# -- refusals --------------------------------------------------------------------------------


def test_arbitrary_unpickling_is_refused_unless_opted_in(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": create_model("cifar_resnet8").state_dict(), "extra": NotAWeight()}, path)
    with pytest.raises(MMDeployError, match="arbitrary unpickling") as info:
        load_checkpoint(path, arch="cifar_resnet8")
    assert "NotAWeight" in info.value.message and "--unsafe-allow-pickle" in info.value.hint
    assert load_checkpoint(path, arch="cifar_resnet8", allow_pickle=True).arch == "cifar_resnet8"


def test_mismatched_keys_are_named(tmp_path):
    state = create_model("cifar_resnet8").state_dict()
    state["fc.extra"] = torch.zeros(1)
    del state["layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(MMDeployError) as info:
        load_checkpoint(tmp_path / "bad.pth", arch="cifar_resnet8")
    assert "missing 1: layer1.0.bn1.running_var" in info.value.message
    assert "unexpected 1: fc.extra" in info.value.message


def test_wrong_arch_names_keys():
    with pytest.raises(MMDeployError, match=r"missing 72: layer1\.1\.conv1\.weight, .*\(\+67 more\)"):
        load_state_strict(create_model("cifar_resnet20"), create_model("cifar_resnet8").state_dict(), "test")
