"""Files are data: a checkpoint, its metadata, a sidecar or a manifest may name only a registered
architecture. Each carrier gets a payload that would run ``touch MARKER`` through ``os:system``;
the marker must never appear and the error must be one line naming the spec."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import mmdeploy
from mmdeploy.bundle import MANIFEST, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model, load_checkpoint
from mmdeploy.models.trust import authorize_arch, user_code_policy


@pytest.fixture(autouse=True)
def _no_specs_named_earlier(monkeypatch):
    """Specs other tests passed as arch= in this process must not allow anything here."""
    from mmdeploy.models import trust

    monkeypatch.setattr(trust, "_NAMED_BY_CALLER", set())


def _payload(marker) -> dict:
    return {"arch": "os:system", "arch_kwargs": {"command": f"touch {marker}"}}


def _assert_refused_one_line(result, marker):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "os:system(command='touch" in lines[0] and "--trust-code-from-files" in lines[0]
    assert not marker.exists()


def _state() -> dict:
    return create_model("cifar_resnet8").state_dict()


def test_safetensors_metadata_cannot_name_code(tmp_path, cli, image_dir):
    marker, path = tmp_path / "MARKER", tmp_path / "w.safetensors"
    save_file(_state(), str(path), metadata={"mmdeploy": json.dumps(_payload(marker))})
    _assert_refused_one_line(cli("eval", path, "--size", "16", "--data", image_dir), marker)
    save_file(_state(), str(path), metadata={"arch": "os:system"})  # the plain `arch` key too
    with pytest.raises(MMDeployError, match="safetensors metadata of .* names code to import and call: os:system"):
        load_checkpoint(path)


def test_pth_dict_entries_cannot_name_code(tmp_path, cli, image_dir):
    marker, path = tmp_path / "MARKER", tmp_path / "ckpt.pth"
    torch.save({"state_dict": _state(), "mmdeploy": _payload(marker)}, path)  # loads with weights_only=True
    _assert_refused_one_line(cli("calibrate", path, "--size", "16", "--data", image_dir, "--out", tmp_path / "b", "--batches", "2"), marker)
    assert not (tmp_path / "b").exists()
    torch.save({"model": "os:system", "state_dict": _state()}, path)
    with pytest.raises(MMDeployError, match="'model' entry of .* names code to import and call: os:system"):
        load_checkpoint(path)


def test_sidecar_cannot_name_code(tmp_path, cli, image_dir):
    marker, path = tmp_path / "MARKER", tmp_path / "w.safetensors"
    save_file(_state(), str(path), metadata={"arch": "cifar_resnet8"})
    (tmp_path / "w.json").write_text(json.dumps({"mmdeploy": _payload(marker)}))
    result = cli("eval", path, "--size", "16", "--data", image_dir)
    _assert_refused_one_line(result, marker)
    assert "sidecar" in result.stderr and "w.json" in result.stderr


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, resnet8_checkpoint, image_dir):
    out = tmp_path_factory.mktemp("trust") / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=2, batch_size=4)
    return out


def test_manifest_cannot_name_code(tmp_path, cli, small_bundle):
    import shutil

    bundle, marker = tmp_path / "bundle", tmp_path / "MARKER"
    shutil.copytree(small_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["source"].update(_payload(marker))
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    for command in (["bench", bundle, "--iters", "1", "--warmup", "0"], ["report", bundle], ["export", bundle, "--engine", "onnx"]):
        _assert_refused_one_line(cli(*command), marker)
    with pytest.raises(MMDeployError, match="manifest.json names code to import and call: os:system"):
        mmdeploy.load(bundle)
    # The trust flag would import exactly that; --arch with another spec does not allow it.
    with pytest.raises(MMDeployError, match="os:system"), user_code_policy("userpkg.nets:tiny"):
        Bundle.open(bundle)
    assert not marker.exists()


def test_file_kwargs_must_be_plain_data(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _state(), "mmdeploy": {"arch": "cifar_resnet8", "arch_kwargs": {"num_classes": torch.tensor(10)}}}, path)
    with pytest.raises(MMDeployError, match=r"arch_kwargs.num_classes is a Tensor, not plain data"):
        load_checkpoint(path)
    with pytest.raises(MMDeployError, match="not plain data"):
        authorize_arch("cifar_resnet8", {"layers": [object()]}, source="somefile")
    authorize_arch("cifar_resnet8", {"num_classes": 10, "widths": [16, 32]}, source="somefile")  # registered + plain: fine


# -- the user's own code: --arch on the command line, the trust flag ----------------------------


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """``userpkg.nets:tiny``, a user architecture that leaves a marker each time it is built."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(f"""
        import torch.nn as nn
        from pathlib import Path

        def tiny(num_classes=2):
            Path({str(tmp_path / "BUILT")!r}).touch()
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("userpkg.nets", "userpkg"):  # each test's package writes its own marker
        sys.modules.pop(name, None)
    yield tmp_path / "BUILT"
    for name in ("userpkg.nets", "userpkg"):
        sys.modules.pop(name, None)


def test_cli_arch_spec_works_and_the_bundle_needs_it_again(tmp_path, cli, image_dir, user_package):
    from userpkg.nets import tiny

    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny().state_dict().items()}}, tmp_path / "tiny.pth")
    user_package.unlink()
    bundle = tmp_path / "bundle"
    result = cli("calibrate", tmp_path / "tiny.pth", "--arch", "userpkg.nets:tiny", "--size", "16", "--data", image_dir,
                 "--out", bundle, "--batches", "2", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert user_package.exists() and json.loads((bundle / MANIFEST).read_text())["source"]["arch"] == "userpkg.nets:tiny"
    user_package.unlink()
    refused = cli("eval", bundle, "--data", image_dir)  # the manifest records the spec: it is not taken from there
    assert refused.exit_code == 1 and "userpkg.nets:tiny()" in refused.stderr and "pass those same flags again" in refused.stderr
    assert "--arch userpkg.nets:tiny" not in refused.stderr  # the file's spec is never offered as advice
    assert not user_package.exists()
    assert cli("eval", bundle, "--data", image_dir, "--arch", "userpkg.nets:tiny").exit_code == 0
    assert user_package.exists()
    trusted = cli("eval", bundle, "--data", image_dir, "--trust-code-from-files")
    assert trusted.exit_code == 0, trusted.output
    assert "importing and calling userpkg.nets:tiny()" in trusted.stderr  # says what it imports, even when trusted
    with pytest.raises(MMDeployError, match="userpkg.nets:tiny"):
        mmdeploy.load(bundle)
    assert mmdeploy.load(bundle, arch="userpkg.nets:tiny").arch == "userpkg.nets:tiny"
    assert mmdeploy.load(bundle, trust_code_from_files=True).build_model(16) is not None


def test_trust_flag_lets_a_checkpoint_name_user_code(tmp_path, cli, image_dir, user_package):
    from userpkg.nets import tiny

    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": tiny().state_dict(), "mmdeploy": {"arch": "userpkg.nets:tiny", "arch_kwargs": {"num_classes": 2}}}, path)
    user_package.unlink()
    assert cli("eval", path, "--size", "16", "--data", image_dir).exit_code == 1
    assert not user_package.exists()
    result = cli("eval", path, "--size", "16", "--data", image_dir, "--trust-code-from-files")
    assert result.exit_code == 0, result.output
    assert user_package.exists()


def test_run_config_trust_key_must_be_a_bool(tmp_path, cli):
    config = tmp_path / "run.toml"
    config.write_text('trust_code_from_files = "yes"\n[[model]]\nname = "m"\ncheckpoint = "m.pth"\n')
    result = cli("run", config)
    assert result.exit_code == 1 and "trust_code_from_files must be true or false" in result.stderr


def test_python_caller_arch_holds_for_the_process(tmp_path, image_dir, user_package):
    from userpkg.nets import tiny

    torch.save(tiny().state_dict(), tmp_path / "tiny.pth")
    out = tmp_path / "bundle"
    calibrate_to_bundle(tmp_path / "tiny.pth", [16], image_dir, out, batches=2, batch_size=4, arch="userpkg.nets:tiny")
    assert Bundle.open(out).build_model(16) is not None  # the caller named this spec: like --arch on the command line
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["source"]["arch"] = "userpkg.nets:other"  # a spec the caller never named is still refused
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(MMDeployError, match="userpkg.nets:other"):
        Bundle.open(out)
