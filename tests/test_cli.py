"""The ``mmdeploy`` CLI through CliRunner: the happy path, and one clear line for each bad input.

Every bad input must exit 1 with exactly one ``error:`` line on stderr (no traceback) and
leave no partial output: the --out folder does not appear and no staging folder is left.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmdeploy.bundle import MANIFEST
from mmdeploy.models import create_model
from tests.conftest import write_images
from tests.test_checkpoint import NotAWeight

FAST = ("--batches", "2", "--batch-size", "4")


def _calibrate(cli, checkpoint, data, out, *extra):
    return cli("calibrate", checkpoint, "--size", "16", "--data", data, "--out", out, *FAST, *extra)


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    assert not [p.name for p in out.parent.iterdir() if ".staging-" in p.name or p.name.endswith(".tmp")]


# -- the happy path ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, image_dir, resnet8_checkpoint) -> Path:
    from typer.testing import CliRunner

    from mmdeploy import cli as cli_module

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    result = CliRunner().invoke(cli_module.app, ["calibrate", str(resnet8_checkpoint), "--size", "16", "--size", "24", "--size", "48",
                                                 "--data", str(image_dir), "--out", str(out), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_calibrate_writes_a_bundle_listing_the_sizes(cli, image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "b"
    result = cli("calibrate", resnet8_checkpoint, "--size", "16", "--size", "24", "--size", "48", "--data", image_dir, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "sizes 16, 24, 48" in result.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["sizes"], key=int) == ["16", "24", "48"]
    for size in (16, 24, 48):
        assert (out / f"sizes/{size}/weights.safetensors").is_file()
    assert manifest["source"]["arch"] == "cifar_resnet8"


def test_calibrate_json(bundle, cli, image_dir, resnet8_checkpoint, tmp_path):
    result = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", image_dir, "--out", tmp_path / "j", *FAST, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sizes"] == [16] and summary["images"] == 8 and summary["bn_layers"] == 9


def test_eval_prints_before_and_after_table(bundle, cli, image_dir):
    result = cli("eval", bundle, "--data", image_dir)
    assert result.exit_code == 0, result.output
    assert "before" in result.stdout and "top-1" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "torch" in line]
    assert [row.split()[1] for row in rows] == ["16", "24", "48"]


def test_eval_json(bundle, cli, image_dir):
    result = cli("eval", bundle, "--data", image_dir, "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert sorted((r["size"], r["calibrated"]) for r in results) == [(s, c) for s in (16, 24, 48) for c in (False, True)]
    assert all(r["images"] == 16 and 0 <= r["top1"] <= r["top5"] <= 100 for r in results)
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert "torch/fp32" in manifest["sizes"]["24"]["metrics"]["accuracy"]


def test_eval_of_a_checkpoint(cli, image_dir, resnet8_checkpoint):
    result = cli("eval", resnet8_checkpoint, "--data", image_dir, "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["size"], r["calibrated"]) for r in json.loads(result.stdout)] == [(32, False)]


def test_eval_of_a_checkpoint_takes_its_preprocessing_options(bundle, cli, image_dir, resnet8_checkpoint):
    args = ("--data", image_dir, "--size", "32", "--json")
    plain = json.loads(cli("eval", resnet8_checkpoint, *args).stdout)
    other = cli("eval", resnet8_checkpoint, *args, "--mean", "0.9,0.9,0.9", "--std", "0.01,0.01,0.01")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)[0]["top5"] != plain[0]["top5"] or json.loads(other.stdout)[0]["top1"] != plain[0]["top1"]
    assert_one_line_error(cli("eval", bundle, "--data", image_dir, "--preprocess", "imagenet"), "preprocessing it was calibrated with")


def test_archs(cli):
    result = cli("archs", "--json")
    assert result.exit_code == 0
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"cifar_resnet20", "resnet50", "mobilenet_v2"} <= names


def _command_names() -> list[str]:
    from mmdeploy.cli import app

    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)


@pytest.mark.parametrize("command", _command_names())
def test_every_command_help_shows_an_example(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and "mmdeploy " + command in result.stdout


# -- bad inputs: one line, exit 1, nothing written -----------------------------------------------


def test_missing_checkpoint(cli, image_dir, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "nope.pth", image_dir, out), "does not exist")
    assert_no_output(out)


@pytest.mark.parametrize("content", [os.urandom(4096), b"these are not weights\n" * 40], ids=["random-bytes", "text"])
def test_not_a_checkpoint(cli, image_dir, tmp_path, content):
    (tmp_path / "ckpt.pth").write_bytes(content)
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "ckpt.pth", image_dir, out), "not a checkpoint")
    assert_no_output(out)


def test_truncated_torch_file(cli, image_dir, resnet8_checkpoint, tmp_path):
    data = resnet8_checkpoint.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "half.pth", image_dir, out), "truncated or corrupt")
    assert_no_output(out)


def test_truncated_safetensors(cli, image_dir, tmp_path):
    save_file(create_model("cifar_resnet8").state_dict(), str(tmp_path / "w.safetensors"), metadata={"arch": "cifar_resnet8"})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "half.safetensors", image_dir, out), "truncated or corrupt")
    assert_no_output(out)


def test_checkpoint_needing_arbitrary_unpickling_is_refused(cli, image_dir, tmp_path):
    torch.save({"state_dict": create_model("cifar_resnet8").state_dict(), "extra": NotAWeight()}, tmp_path / "pickled.pth")
    out = tmp_path / "out"
    line = assert_one_line_error(_calibrate(cli, tmp_path / "pickled.pth", image_dir, out, "--arch", "cifar_resnet8"), "arbitrary unpickling")
    assert "--unsafe-allow-pickle" in line
    assert_no_output(out)


def test_unknown_arch(cli, image_dir, tmp_path):
    torch.save(create_model("cifar_resnet8").state_dict(), tmp_path / "plain.pth")
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "plain.pth", image_dir, out, "--arch", "resnet7"), "unknown architecture 'resnet7'", "cifar_resnet20")
    assert_no_output(out)


def test_mismatched_keys(cli, image_dir, tmp_path):
    state = create_model("cifar_resnet8").state_dict()
    state["head.weight"] = state.pop("fc.weight")
    torch.save(state, tmp_path / "renamed.pth")
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, tmp_path / "renamed.pth", image_dir, out, "--arch", "cifar_resnet8"),
                          "missing 1: fc.weight", "unexpected 1: head.weight")
    assert_no_output(out)


@pytest.mark.parametrize("size, fragment", [("0", "not a positive integer"), ("-3", "not a positive integer"),
                                            ("abc", "not an integer"), ("2", "the smallest size that works is 4")])
def test_bad_sizes(cli, image_dir, resnet8_checkpoint, tmp_path, size, fragment):
    out = tmp_path / "out"
    result = cli("calibrate", resnet8_checkpoint, "--size", "24", "--size", size, "--data", image_dir, "--out", out, *FAST)
    assert_one_line_error(result, fragment)
    assert_no_output(out)


def test_empty_image_folder(cli, resnet8_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, tmp_path / "empty", out), "no class subfolders")
    assert_no_output(out)


def test_class_folders_without_files(cli, resnet8_checkpoint, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, tmp_path / "data", out), "no files")
    assert_no_output(out)


def test_only_corrupt_or_non_image_files(cli, resnet8_checkpoint, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        (tmp_path / "data" / cls / "broken.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(200))
        (tmp_path / "data" / cls / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, tmp_path / "data", out), "no readable images", "4 files skipped")
    assert_no_output(out)


def test_some_corrupt_files_are_skipped_and_counted(cli, image_dir, resnet8_checkpoint, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_dir, data)
    (data / "cat" / "zz_truncated.png").write_bytes((data / "cat" / "000.png").read_bytes()[:60])
    (data / "dog" / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    result = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", data, "--out", out, "--batches", "10", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable files" in result.stdout
    assert "warning:" in result.stderr and "Traceback" not in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sizes"]["16"]["calibration"]["skipped_files"] == 2
    assert manifest["sizes"]["16"]["calibration"]["images"] == 16


def test_out_is_an_existing_file(cli, image_dir, resnet8_checkpoint, tmp_path):
    (tmp_path / "out").write_text("keep me")
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, image_dir, tmp_path / "out"), "is a file")
    assert (tmp_path / "out").read_text() == "keep me"


def test_out_is_a_non_empty_folder_that_is_not_a_bundle(cli, image_dir, resnet8_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("keep me")
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, image_dir, tmp_path / "out"), "not a bundle")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["thesis.tex"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_out_in_an_unwritable_folder(cli, image_dir, resnet8_checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(_calibrate(cli, resnet8_checkpoint, image_dir, locked / "out"), "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_eval_refuses_a_bundle_of_another_schema_version(bundle, cli, image_dir, tmp_path):
    other = tmp_path / "old"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (other / MANIFEST).write_text(json.dumps(manifest))
    assert_one_line_error(cli("eval", other, "--data", image_dir), "schema version 99")


def test_eval_of_a_size_not_in_the_bundle(bundle, cli, image_dir):
    assert_one_line_error(cli("eval", bundle, "--data", image_dir, "--size", "20"), "size 20 is not calibrated")


def test_debug_env_shows_the_traceback(cli, tmp_path, monkeypatch, image_dir):
    from mmdeploy.errors import MMDeployError

    monkeypatch.setenv("MMDEPLOY_DEBUG", "1")
    result = cli("calibrate", tmp_path / "nope.pth", "--size", "16", "--data", image_dir, "--out", tmp_path / "out")
    assert isinstance(result.exception, MMDeployError)


# -- a model without BatchNorm -----------------------------------------------------------------


def test_model_without_batchnorm_warns_and_copies_weights(cli, image_dir, tmp_path, monkeypatch):
    (tmp_path / "nobn_arch.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def plain_net(num_classes=2):
            return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from nobn_arch import plain_net

    torch.manual_seed(0)
    source = plain_net().state_dict()
    torch.save(source, tmp_path / "plain.pth")
    out = tmp_path / "out"
    result = cli("calibrate", tmp_path / "plain.pth", "--arch", "nobn_arch:plain_net", "--size", "16", "--data", image_dir, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "no BatchNorm" in result.stderr
    weights = load_file(str(out / "sizes/16/weights.safetensors"))
    assert weights.keys() == source.keys() and all(torch.equal(weights[k], source[k]) for k in source)

    # a size the user's network cannot take: the smallest that works is probed and named
    bad = cli("calibrate", tmp_path / "plain.pth", "--arch", "nobn_arch:plain_net", "--size", "4", "--data", image_dir,
              "--out", tmp_path / "out2", *FAST)
    assert_one_line_error(bad, "the smallest size that works is 7")
    assert_no_output(tmp_path / "out2")


def test_tiny_images_are_fine(cli, resnet8_checkpoint, tmp_path):
    data = write_images(tmp_path / "small", per_class=3, side=16)
    result = cli("calibrate", resnet8_checkpoint, "--size", "8", "--data", data, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["eval", "bench", "export"])
def test_a_size_that_is_not_an_integer_is_a_user_error(bundle, cli, image_dir, command):
    extra = ("--data", image_dir) if command != "bench" else ()
    assert_one_line_error(cli(command, bundle, "--size", "abc", *extra), "size 'abc' is not an integer")


def test_eval_refuses_what_it_would_silently_ignore_or_mislabel(bundle, cli, image_dir, resnet8_checkpoint):
    assert_one_line_error(cli("eval", resnet8_checkpoint, "--data", image_dir, "--size", "16", "--engine", "ort"), "torch engine in fp32 only")
    assert_one_line_error(cli("eval", bundle, "--data", image_dir, "--precision", "fp8"), "unknown precision 'fp8'")
    assert_one_line_error(cli("eval", bundle, "--data", image_dir, "--precision", "bf16"), "precision bf16 is served by none of the engines torch", "--engine ov")
    assert_one_line_error(cli("eval", image_dir, "--data", image_dir, "--size", "16"), "is not a bundle")
    metrics = json.loads((bundle / MANIFEST).read_text())["sizes"]["16"].get("metrics", {})
    assert not any("bf16" in k for kind in metrics.values() for k in kind)


def test_json_output_is_strict_json(capsys):
    from mmdeploy.cli import emit_json
    from mmdeploy.results import Point

    emit_json({"point": Point(16, "ort", "fp32", 1, 70.0, 1.0), "path": Path("a/b"), "inf": float("inf")})
    data = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert data["point"]["relative_latency"] is None and data["inf"] is None and data["path"] == "a/b"


@pytest.mark.parametrize("damage, fragment", [
    (lambda m: m["sizes"]["16"].pop("weights"), "size 16 needs weights and calibration"),
    (lambda m: m["sizes"].update({"x": {}}), "size 'x' is not a positive integer"),
    (lambda m: m["preprocess"].update({"kind": "coco"}), "preprocess needs kind"),
    (lambda m: m["source"].pop("arch"), "source needs arch"),
], ids=["size-entry", "size-key", "preprocess", "source"])
def test_a_damaged_manifest_is_one_line(bundle, cli, image_dir, tmp_path, damage, fragment):
    other = tmp_path / "damaged"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / MANIFEST).read_text())
    damage(manifest)
    (other / MANIFEST).write_text(json.dumps(manifest))
    assert_one_line_error(cli("eval", other, "--data", image_dir), "not a valid bundle manifest", fragment)


def test_a_missing_weights_file_is_one_line_and_calibrate_restores_it(cli, image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "b"
    assert _calibrate(cli, resnet8_checkpoint, image_dir, out).exit_code == 0
    (out / "source/weights.safetensors").unlink()
    assert_one_line_error(cli("eval", out, "--data", image_dir), "lacks source/weights.safetensors")
    assert _calibrate(cli, resnet8_checkpoint, image_dir, out).exit_code == 0
    assert cli("eval", out, "--data", image_dir).exit_code == 0
