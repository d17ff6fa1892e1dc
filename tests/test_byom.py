"""Bring your own model (an architecture outside the registry, from the user's own code): factory kwargs from the flag and the run config, the trust rule for
kwargs, the preprocessing and training size in force, and patch models through the dynamic export's check.

The user code is a module written to tmp_path: ``timmlike.create_model(model_name, **kw)`` mimics timm's factory (timm is
not installed here, and nothing may be downloaded). Each call is logged, so a test can tell whether a factory ran and
with which kwargs.
"""

from __future__ import annotations

import datetime
import json
import sys
import textwrap

import pytest
import torch

import mmdeploy
from mmdeploy.bundle import MANIFEST, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.config import config_problems
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import check_size_candidates
from mmdeploy.export.workflow import export_bundle

SPEC = "timmlike:create_model"
CNN = {"model_name": "tiny_cnn", "num_classes": 2}
CNN_FLAG = json.dumps(CNN)

MODULE = """
import json
import torch
import torch.nn as nn

LOG = {log!r}


class PatchNet(nn.Module):
    \"\"\"A ViT-style stem: a conv with kernel = stride = patch, which (like timm's PatchEmbed) refuses other sizes.\"\"\"

    def __init__(self, patch_size, num_classes):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, 8, patch_size, stride=patch_size)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        torch._assert(x.shape[2] % self.patch_size == 0, f"Input height ({{x.shape[2]}}) should be divisible by patch size ({{self.patch_size}})")
        torch._assert(x.shape[3] % self.patch_size == 0, f"Input width ({{x.shape[3]}}) should be divisible by patch size ({{self.patch_size}})")
        return self.head(torch.relu(self.norm(self.proj(x))).mean((2, 3)))


def create_model(model_name, pretrained=False, num_classes=1000, **kwargs):
    with open(LOG, "a") as f:
        f.write(json.dumps({{"model_name": model_name, "pretrained": pretrained, "num_classes": num_classes, **kwargs}}) + "\\n")
    if pretrained:
        raise RuntimeError("no network here")
    if model_name == "tiny_cnn":
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
    if model_name == "tiny_patch":
        return PatchNet(kwargs.get("patch_size", 16), num_classes)
    raise RuntimeError(f"Unknown model ({{model_name}})")
"""


class UserModule:
    def __init__(self, tmp_path):
        self.log = tmp_path / "calls.jsonl"
        self.root = tmp_path

    def calls(self) -> list[dict]:
        """The kwargs of every factory call so far (without the defaults the test did not set), then forget them."""
        if not self.log.exists():
            return []
        out = [json.loads(line) for line in self.log.read_text().splitlines()]
        self.log.unlink()
        return out

    def checkpoint(self, name: str = "tiny.pth", entry: dict | None = None, **kwargs) -> str:
        import timmlike

        torch.manual_seed(0)
        state = timmlike.create_model(**kwargs).state_dict()
        self.calls()
        path = self.root / name
        torch.save({"state_dict": state, "mmdeploy": entry} if entry else state, path)
        return path


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "timmlike.py").write_text(MODULE.format(log=str(tmp_path / "calls.jsonl")))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("timmlike", None)
    yield UserModule(tmp_path)
    sys.modules.pop("timmlike", None)


@pytest.fixture(autouse=True)
def _no_calls_named_earlier(monkeypatch):
    from mmdeploy.models import trust

    monkeypatch.setattr(trust, "_NAMED_BY_CALLER", set())


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "internal error" not in result.stderr, result.stderr
    return lines[0]


def _made_with(call: dict, **defaults) -> dict:
    return {"pretrained": False, **call, **defaults}


# -- item 3: kwargs from the flag and the config, never from a file --------------------------------


def test_flag_kwargs_reach_the_factory_are_recorded_and_needed_again(tmp_path, cli, image_dir, user):
    ckpt = user.checkpoint(**CNN)
    bundle = tmp_path / "bundle"
    made = cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", CNN_FLAG, "--size", "16", "--data", image_dir, "--out", bundle,
               "--batches", "2", "--batch-size", "4", "--preprocess", "cifar", "--train-size", "16")
    assert made.exit_code == 0, made.output
    calls = user.calls()
    assert calls and all(c == _made_with(CNN) for c in calls)
    assert json.loads((bundle / MANIFEST).read_text())["source"]["arch_kwargs"] == CNN

    # Reopening the bundle rebuilds the recorded call only when the user names it again, kwargs included.
    line = _one_error_line(cli("eval", bundle, "--data", image_dir, "--arch", SPEC))
    assert "you named timmlike:create_model with kwargs {}" in line and f"--arch-kwargs '{json.dumps(CNN, sort_keys=True)}'" in line
    line = _one_error_line(cli("eval", bundle, "--data", image_dir, "--arch", SPEC, "--arch-kwargs", '{"model_name": "tiny_cnn", "num_classes": 3}'))
    assert "'num_classes': 3" in line
    assert user.calls() == []
    again = cli("eval", bundle, "--data", image_dir, "--arch", SPEC, "--arch-kwargs", '{"num_classes": 2, "model_name": "tiny_cnn"}')
    assert again.exit_code == 0, again.output  # the same kwargs in another order
    assert all(c == _made_with(CNN) for c in user.calls())
    with pytest.raises(MMDeployError, match="kwargs"):
        mmdeploy.load(bundle, arch=SPEC)
    assert mmdeploy.load(bundle, arch=SPEC, arch_kwargs=CNN).build_model(16) is not None


def test_config_kwargs_reach_the_factory(tmp_path, cli, image_dir, user, monkeypatch):
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_OTHERS_CPU", 1.0)
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_SPREAD", float("inf"))
    user.checkpoint(**CNN)
    config = tmp_path / "run.toml"
    config.write_text(textwrap.dedent(f"""
        out = "out"
        [data]
        calibration = "{image_dir}"
        validation = "{image_dir}"
        [[model]]
        name = "mine"
        checkpoint = "tiny.pth"
        arch = "{SPEC}"
        arch_kwargs = {{model_name = "tiny_cnn", num_classes = 2}}
        preprocess = "cifar"
        train_size = 16
        [calibrate]
        sizes = [16]
        batches = 2
        batch_size = 4
        [export]
        engines = ["ort"]
        precisions = ["fp32"]
        dynamic = false
        [bench]
        batches = [1]
        warmup = 0
        iters = 2
        tune = false
        noise_budget_s = 0
    """))
    result = cli("run", config)
    assert result.exit_code == 0, result.output
    calls = user.calls()
    assert calls and all(c == _made_with(CNN) for c in calls)
    assert json.loads((tmp_path / "out" / "mine" / MANIFEST).read_text())["source"]["arch_kwargs"] == CNN


def test_a_checkpoint_cannot_inject_kwargs_into_user_code(tmp_path, cli, image_dir, user):
    injected = {**CNN, "pretrained": True}  # what a file might add: a download, or a path to unpickle
    ckpt = user.checkpoint(entry={"arch": SPEC, "arch_kwargs": injected}, **CNN)
    args = ("--size", "16", "--data", image_dir, "--batches", "2", "--batch-size", "4", "--preprocess", "cifar", "--train-size", "16")
    line = _one_error_line(cli("calibrate", ckpt, "--arch", SPEC, "--out", tmp_path / "a", *args))
    assert "pretrained=True" in line and "kwargs reach your code only as you give them" in line
    assert user.calls() == [] and not (tmp_path / "a").exists()
    # Given kwargs replace the file's entirely: nothing of the file's reaches the factory.
    made = cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", CNN_FLAG, "--out", tmp_path / "b", *args)
    assert made.exit_code == 0, made.output
    assert all(c == _made_with(CNN) for c in user.calls())
    # A manifest edited to add kwargs is refused even with the original call named again.
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    manifest["source"]["arch_kwargs"] = injected
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    line = _one_error_line(cli("export", tmp_path / "b", "--engine", "onnx", "--arch", SPEC, "--arch-kwargs", CNN_FLAG))
    assert "manifest.json calls timmlike:create_model(" in line and "pretrained=True" in line
    assert user.calls() == []
    # ... unless the user trusts the file, which says what it imports.
    trusted = cli("report", tmp_path / "b", "--trust-code-from-files")
    assert "importing and calling timmlike:create_model(" in trusted.stderr


def test_a_registered_architecture_takes_flag_kwargs_over_the_files(tmp_path, image_dir):
    from mmdeploy.models import create_model, load_checkpoint

    path = tmp_path / "r8.pth"
    torch.save({"state_dict": create_model("cifar_resnet8", num_classes=3).state_dict(),
                "mmdeploy": {"arch": "cifar_resnet8", "arch_kwargs": {"num_classes": 7}}}, path)
    assert load_checkpoint(path, arch_kwargs={"num_classes": 3}).arch_kwargs == {"num_classes": 3}
    with pytest.raises(MMDeployError, match="keys do not match|num_classes = 7, but the checkpoint.s classifier has 3"):
        load_checkpoint(path)  # the file's 7 classes do not fit its own weights


@pytest.mark.parametrize("text, fragment", [
    ("{model_name: 'x'}", "is not JSON"),
    ('["tiny_cnn"]', "is a JSON list, not an object of keyword arguments"),
    ('{"model_name": "no_such_model"}', "--arch timmlike:create_model raised RuntimeError when called with"),
])
def test_bad_kwargs_are_one_line(tmp_path, cli, image_dir, user, text, fragment):
    ckpt = user.checkpoint(**CNN)
    line = _one_error_line(cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", text, "--size", "16", "--data", image_dir,
                               "--out", tmp_path / "b"))
    assert fragment in line


def test_config_arch_kwargs_must_be_a_table_of_plain_values():
    entry = {"name": "m", "checkpoint": "m.pth"}
    assert config_problems({"model": [{**entry, "arch_kwargs": {"model_name": "resnet18", "depths": [2, 2]}}]}) == []
    assert "model[0].arch_kwargs must be a table" in config_problems({"model": [{**entry, "arch_kwargs": "resnet18"}]})[0]
    when = {"model": [{**entry, "arch_kwargs": {"at": datetime.date(2024, 1, 1)}}]}
    assert "model[0].arch_kwargs.at must be plain data" in config_problems(when)[0]


# -- item 4: the preprocessing and training size in force ---------------------------------------------


def test_user_architecture_without_preprocessing_flags_is_warned(tmp_path, cli, image_dir, user, resnet8_checkpoint):
    ckpt = user.checkpoint(**CNN)
    common = ("--size", "16", "--data", image_dir, "--batches", "2", "--batch-size", "4")
    plain = cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", CNN_FLAG, "--out", tmp_path / "a", *common)
    assert plain.exit_code == 0, plain.output
    warned = [ln for ln in plain.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "timmlike:create_model is your own architecture" in warned[0]
    assert "imagenet preprocessing (mean 0.485,0.456,0.406, std 0.229,0.224,0.225) and training size 224 by default" in warned[0]
    assert "--preprocess/--mean/--std and --train-size" in warned[0]
    assert "preprocessing imagenet (mean 0.485,0.456,0.406; std 0.229,0.224,0.225), training size 224" in plain.stdout

    half = cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", CNN_FLAG, "--out", tmp_path / "b", "--preprocess", "cifar", *common)
    warned = [ln for ln in half.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "using training size 224 by default; pass --train-size" in warned[0]
    assert "preprocessing cifar (mean 0.485,0.456,0.406; std 0.229,0.224,0.225), training size 224" in half.stdout

    told = cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", CNN_FLAG, "--out", tmp_path / "c", "--preprocess", "cifar",
               "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--train-size", "32", *common)
    assert told.exit_code == 0 and "warning:" not in told.stderr, told.stderr
    assert "preprocessing cifar (mean 0.5,0.5,0.5; std 0.25,0.25,0.25), training size 32" in told.stdout

    registered = cli("calibrate", resnet8_checkpoint, "--out", tmp_path / "d", *common)  # its registry entry says cifar, 32
    assert registered.exit_code == 0 and "warning:" not in registered.stderr, registered.stderr
    assert "preprocessing cifar" in registered.stdout and "training size 32" in registered.stdout


# -- items 5 and 6: patch models and the dynamic export's unseen-size check ------------------------


def _patch_bundle(tmp_path, user, image_dir, sizes=(32, 48), patch=16, train_size=32):
    kwargs = {"model_name": "tiny_patch", "num_classes": 2, "patch_size": patch}
    ckpt = user.checkpoint(name=f"patch{patch}.pth", **kwargs)
    out = tmp_path / f"bundle{patch}"
    calibrate_to_bundle(ckpt, list(sizes), image_dir, out, batches=2, batch_size=4, arch=SPEC, arch_kwargs=kwargs, preprocess="cifar",
                        training_size=train_size)
    return out, kwargs


def test_patch_model_is_checked_at_a_size_it_accepts(tmp_path, user, image_dir):
    bundle, _ = _patch_bundle(tmp_path, user, image_dir)
    assert check_size_candidates([32, 48], 32)[:2] == [40, 64]  # 32+8, then the next multiple of 16 that is not deployed
    summary = export_bundle(bundle, "ort", ["fp32"], parity_count=4)
    assert {c.size for c in summary.checks if c.artifact == "dynamic"} == {32, 48, 64}
    assert all(c.passed for c in summary.checks)
    assert Bundle.open(bundle).artifact(None, "onnx", "fp32") is not None


def test_check_size_from_the_user_and_one_line_when_none_works(tmp_path, cli, user, image_dir):
    bundle, kwargs = _patch_bundle(tmp_path, user, image_dir, sizes=(34, 51), patch=17, train_size=34)
    arch = ("--arch", SPEC, "--arch-kwargs", json.dumps(kwargs))
    line = _one_error_line(cli("export", bundle, "--engine", "ort", *arch))
    assert "no size to check the dynamic ONNX at: the PyTorch model refused 42, 48, 64" in line
    assert "Input height (42) should be divisible by patch size (17)" in line and "--check-size N" in line and "--no-dynamic" in line
    line = _one_error_line(cli("export", bundle, "--engine", "ort", "--check-size", "60", *arch))
    assert "--check-size 60: the PyTorch model does not run at that size" in line
    assert "--check-size 51 is a deployment size" in _one_error_line(cli("export", bundle, "--engine", "ort", "--check-size", "51", *arch))
    assert not list(bundle.rglob("*.onnx"))
    done = cli("export", bundle, "--engine", "ort", "--check-size", "68", "--json", *arch)
    assert done.exit_code == 0, done.output
    assert {c["size"] for c in json.loads(done.stdout)["checks"] if c["artifact"] == "dynamic"} == {34, 51, 68}


def test_calibrating_a_patch_model_at_a_size_it_refuses_is_one_line(tmp_path, cli, user, image_dir):
    kwargs = {"model_name": "tiny_patch", "num_classes": 2}
    ckpt = user.checkpoint(**kwargs)
    line = _one_error_line(cli("calibrate", ckpt, "--arch", SPEC, "--arch-kwargs", json.dumps(kwargs), "--size", "32", "--size", "40",
                               "--data", image_dir, "--out", tmp_path / "b", "--preprocess", "cifar"))
    assert "size 40 does not work with timmlike:create_model: AssertionError: Input height (40) should be divisible by patch size (16)" in line


# -- the README's "Bring your own model" block, run as written ---------------------------------------

TIMM_STANDIN = """
# A stand-in for timm (not installed here, and nothing may be downloaded): create_model(model_name, **kwargs) as timm has it.
import torch
import torch.nn as nn


class _Vit(nn.Module):
    def __init__(self, num_classes, patch=16):
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, 16, patch, stride=patch)
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        torch._assert(x.shape[2] % self.patch == 0, f"Input height ({x.shape[2]}) should be divisible by patch size ({self.patch})")
        torch._assert(x.shape[3] % self.patch == 0, f"Input width ({x.shape[3]}) should be divisible by patch size ({self.patch})")
        return self.head(torch.relu(self.norm(self.patch_embed(x))).mean((2, 3)))


def create_model(model_name, pretrained=False, num_classes=1000, dynamic_img_size=False, **kwargs):
    if model_name != "vit_tiny_patch16_224" or pretrained:
        raise RuntimeError(f"Unknown model ({model_name})")
    return _Vit(num_classes)
"""

MYNET = """
import torch.nn as nn


def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


def _readme_block() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Bring your own model", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_bring_your_own_model_commands_run_as_written(tmp_path, cli, monkeypatch):
    import shlex

    from conftest import write_images

    from mmdeploy.models import create_model

    site = tmp_path / "site"  # where an installed timm would be
    site.mkdir()
    (site / "timm.py").write_text(TIMM_STANDIN)
    work = tmp_path / "work"
    work.mkdir()
    (work / "mynet.py").write_text(MYNET)
    write_images(work / "calib" / "train")  # 16 images stand in for the shipped 1,000
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(site))
    for name in ("timm", "mynet"):
        sys.modules.pop(name, None)
    import timm

    torch.manual_seed(0)
    torch.save(create_model("cifar_resnet8").state_dict(), work / "r8.pth")
    vit_kwargs = {"model_name": "vit_tiny_patch16_224", "num_classes": 10, "dynamic_img_size": True}
    torch.save(timm.create_model(**vit_kwargs).state_dict(), work / "vit.pth")
    exec(MYNET, namespace := {})
    torch.save(namespace["build"]().state_dict(), work / "mynet.pth")

    commands = _readme_block()
    assert len(commands) == 6 and sum("--arch-kwargs" in c for c in commands) == 2
    try:
        for line in commands:
            words = shlex.split(line)
            while "=" in words[0]:  # VAR=value before the command
                var, value = words.pop(0).split("=", 1)
                assert var == "PYTHONPATH"
                monkeypatch.syspath_prepend(str(work / value))
            assert words[0] == "mmdeploy"
            result = cli(*words[1:])
            assert result.exit_code == 0, f"{line}\n{result.output}"
            assert "warning:" not in result.stderr, f"{line}\n{result.stderr}"
    finally:
        for name in ("timm", "mynet"):
            sys.modules.pop(name, None)
    vit = json.loads((work / "byom/vit" / MANIFEST).read_text())
    assert vit["source"]["arch_kwargs"] == vit_kwargs
    assert [sorted({c["size"] for c in art["parity"]}) for art in vit["dynamic"].values()] == [[32, 48, 64]]
    for name in ("r8", "mynet", "vit"):
        assert len(list((work / "byom" / name).rglob("*.onnx"))) == 3


def test_a_policy_holds_each_models_own_call():
    """A run config may name one factory twice with other kwargs (two timm models): each call is allowed, no other."""
    from mmdeploy.models.trust import authorize_arch, user_code_policy

    with user_code_policy([(SPEC, {"model_name": "a"}), (SPEC, {"model_name": "b"}), ("cifar_resnet8", None)]):
        authorize_arch(SPEC, {"model_name": "b"}, source="manifest.json")
        with pytest.raises(MMDeployError, match=r"you named timmlike:create_model with kwargs \{'model_name': 'a'\}, \{'model_name': 'b'\}"):
            authorize_arch(SPEC, {"model_name": "c"}, source="manifest.json")
