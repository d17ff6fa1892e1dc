"""Issue 24's hostile and careless inputs: each is refused in one line (exit 1, no traceback, no "internal error")
before anything is written: non-finite normalization and BN statistics, NaN/inf gate thresholds, duplicate or
pathological baselines, code named by files, blocked pickles, a batch larger than memory, absurd file metadata."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

from mmdeploy.bundle import MANIFEST
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model, load_checkpoint
from mmdeploy.report import build_report, compare_reports, write_report
from mmdeploy.results import Point
from tests.conftest import randomize_bn, reference_dict
from tests.test_checkpoint import NotAWeight
from tests.test_cli import _calibrate, assert_no_output, assert_one_line_error


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, resnet8_checkpoint, image_dir):
    out = tmp_path_factory.mktemp("hostile") / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=2, batch_size=4)
    return out


def _copy(bundle, tmp_path):
    other = tmp_path / "bundle"
    shutil.copytree(bundle, other)
    return other


def _checkpoint(tmp_path, name="ckpt.pth", **entries):
    torch.manual_seed(0)
    path = tmp_path / name
    torch.save({**reference_dict(randomize_bn(create_model("cifar_resnet8")), 8), **entries}, path)
    return path


# -- item 3: normalization, wherever it enters, and BN statistics ----------------------------------------------------


@pytest.mark.parametrize("flag, value, fragment", [
    ("--std", "0,0,0", "--std: std[0] must be > 0"),
    ("--std", "1,-0.5,1", "--std: std[1] must be > 0"),
    ("--mean", "nan,0,0", "--mean: mean[0] must be a finite number"),
    ("--std", "1,1,inf", "--std: std[2] must be a finite number"),
    ("--mean", "0.5,0.5", "mean has 2 values"),
])
def test_cli_normalization_is_refused_before_any_work(cli, image_dir, resnet8_checkpoint, tmp_path, flag, value, fragment):
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, resnet8_checkpoint, image_dir, out, flag, value), fragment, "--std 0.229,0.224,0.225")
    assert_no_output(out)
    assert_one_line_error(cli("eval", resnet8_checkpoint, "--size", "16", "--data", image_dir, flag, value), fragment)


def test_run_config_and_cli_share_one_normalization_check(cli, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[[model]]\nname = "m"\ncheckpoint = "m.pth"\nstd = [0.0, 0.2, 0.2]\n')
    result = cli("run", config)
    assert result.exit_code == 1 and "model[0].std[0] must be > 0 (got 0.0)" in result.stderr, result.output


def test_checkpoint_metadata_normalization_is_refused(cli, image_dir, tmp_path):
    path = _checkpoint(tmp_path, mmdeploy={"preprocess": {"kind": "cifar", "mean": [0.5, 0.5, 0.5], "std": [0.0, 0.0, 0.0]}})
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, path, image_dir, out), "'mmdeploy' preprocess entry of", "std[0] must be > 0")
    assert_no_output(out)
    # The user's own flag replaces the file's value: then the checkpoint is usable.
    assert _calibrate(cli, path, image_dir, out, "--std", "0.25,0.25,0.25").exit_code == 0


@pytest.mark.parametrize("field, value, fragment", [
    ("std", [0.0, 0.2, 0.2], "std[0] must be > 0"),
    ("mean", [float("nan"), 0.5, 0.5], "mean[0] must be a finite number"),
    ("std", ["0.2", 0.2, 0.2], "std[0] must be a finite number"),
])
def test_an_edited_manifest_normalization_is_refused(cli, image_dir, small_bundle, tmp_path, field, value, fragment):
    bundle = _copy(small_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["preprocess"][field] = value
    (bundle / MANIFEST).write_text(json.dumps(manifest))  # Python writes NaN as the token NaN, which it also reads
    assert_one_line_error(cli("eval", bundle, "--data", image_dir), "not a valid bundle manifest", fragment)


def test_non_finite_bn_statistics_are_never_written(cli, image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "out"
    # A valid but tiny std: inputs of ~1e38 overflow float32 in the first convolution.
    line = assert_one_line_error(_calibrate(cli, resnet8_checkpoint, image_dir, out, "--std", "1e-38,1e-38,1e-38"),
                                 "calibration at size 16 gave NaN/Inf BatchNorm statistics in", "nothing was written", "--std")
    assert re.search(r"in [1-9] of 9 layers \(first: bn1\)", line)  # cifar_resnet8: bn1 + 3 stages x (bn1, bn2) + 2 projections
    assert not (out / MANIFEST).exists() and not list(out.rglob("*.safetensors"))


# -- item 4: the gate's thresholds and baselines ----------------------------------------------------------------------


def _points() -> list[Point]:
    return [Point(32, "torch", "fp32", 1, 80.0, 10.0), Point(24, "torch", "fp32", 1, 78.0, 6.0), Point(16, "ort", "fp32", 1, 70.0, 3.0)]


def _baseline(tmp_path) -> os.PathLike:
    return write_report(build_report(_points(), batch=1, environment={}, training_size=32), tmp_path / "base")["json"]


@pytest.mark.parametrize("flag, value", [("--max-acc-drop", "nan"), ("--max-acc-drop", "inf"), ("--max-acc-drop", "-1"),
                                         ("--max-latency-regress", "nan%")])
def test_gate_thresholds_must_be_finite_and_non_negative(cli, small_bundle, tmp_path, flag, value):
    bundle = _copy(small_bundle, tmp_path)
    before = sorted(p.name for p in bundle.iterdir())
    line = assert_one_line_error(cli("report", bundle, "--baseline", _baseline(tmp_path), flag, value))
    assert flag in line or "fraction" in line
    assert sorted(p.name for p in bundle.iterdir()) == before  # refused before the report is written
    new = build_report(_points(), batch=1, environment={}, training_size=32)
    with pytest.raises(MMDeployError, match="must be a finite number >= 0"):
        compare_reports(new, new, float("nan"), 0.15)


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5"])
def test_tolerance_must_be_finite_and_non_negative(cli, small_bundle, tmp_path, value):
    assert_one_line_error(cli("report", _copy(small_bundle, tmp_path), "--tolerance", value), "--tolerance must be a finite number >= 0")


@pytest.mark.parametrize("order", ["good-first", "bad-first"])
def test_a_baseline_listing_one_point_twice_is_refused(cli, tmp_path, order):
    path = _baseline(tmp_path)
    data = json.loads(path.read_text())
    twin = dict(data["points"][0], top1=0.0)
    data["points"] = data["points"] + [twin] if order == "good-first" else [twin] + data["points"]
    path.write_text(json.dumps(data))
    assert_one_line_error(cli("report", tmp_path / "no-bundle", "--baseline", path), "repeats 32/torch/fp32")


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000, "nested too deeply"),
    ('{"schema_version": ' + "9" * 5001 + "}", "Exceeds the limit (4300 digits)"),
])
def test_a_pathological_baseline_is_one_line(cli, tmp_path, text, fragment):
    path = tmp_path / "report.json"
    path.write_text(text)
    line = assert_one_line_error(cli("report", tmp_path / "no-bundle", "--baseline", path), "cannot read report", fragment)
    assert len(line) < 400


# -- item 5: what files may name, and how refusals and opt-ins are worded ----------------------------------------------


def test_a_refusal_never_offers_the_files_code_as_advice(cli, image_dir, tmp_path):
    path = _checkpoint(tmp_path, mmdeploy={"arch": "os:system", "arch_kwargs": {"command": "true"}})
    line = assert_one_line_error(cli("eval", path, "--size", "16", "--data", image_dir), "names code to import and call: os:system(")
    hint = line.split("(hint: ", 1)[1]
    assert "os:system" not in hint and "--arch os" not in line
    assert "--trust-code-from-files" in hint and "imported and run" in hint


def test_trust_from_a_run_config_says_so(cli, image_dir, tmp_path):
    path = _checkpoint(tmp_path, "m.pth", mmdeploy={"arch": "os:getpid"})  # harmless: returns an int, not a model
    config = tmp_path / "run.toml"
    config.write_text(f'trust_code_from_files = true\n[data]\ncalibration = "{image_dir}"\nvalidation = "{image_dir}"\n'
                      '[[model]]\nname = "m"\ncheckpoint = "m.pth"\n')
    result = cli("run", config)
    assert result.exit_code == 1
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning: importing and calling os:getpid()"))
    assert f"trust_code_from_files = true in {config}" in warning and "was given" not in warning
    assert "returned int, not an nn.Module" in result.stderr
    assert path.exists()


def test_unsafe_allow_pickle_warns_in_one_line(cli, image_dir, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": create_model("cifar_resnet8").state_dict(), "extra": NotAWeight()}, path)
    result = _calibrate(cli, path, image_dir, tmp_path / "out", "--arch", "cifar_resnet8", "--unsafe-allow-pickle")
    assert result.exit_code == 0, result.output
    warnings_ = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "arbitrary code allowed" in warnings_[0] and "NotAWeight" in warnings_[0]
    # A file that loads without it is not unpickled unsafely, so there is nothing to warn about.
    plain = tmp_path / "plain.pth"
    torch.save(create_model("cifar_resnet8").state_dict(), plain)
    result = _calibrate(cli, plain, image_dir, tmp_path / "out2", "--arch", "cifar_resnet8", "--unsafe-allow-pickle")
    assert result.exit_code == 0 and "warning:" not in result.stderr, result.output


class _Payload:
    """Pickles as a call of posix.system (the blocked module's callable); pickling never calls it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import posix

        return posix.system, (f"touch {self.marker}",)


def test_a_pickle_naming_a_blocked_global_is_refused_as_unsafe(cli, image_dir, tmp_path):
    marker, path, out = tmp_path / "MARKER", tmp_path / "evil.pth", tmp_path / "out"
    torch.save({"state_dict": create_model("cifar_resnet8").state_dict(), "x": _Payload(marker)}, path)
    line = assert_one_line_error(_calibrate(cli, path, image_dir, out, "--arch", "cifar_resnet8"), "refused as unsafe", "posix.system")
    assert "truncated" not in line and "corrupt" not in line
    assert "do not use this file" in line  # no hint that reads as "load it anyway"
    assert not marker.exists()
    assert_no_output(out)


# -- item 7: batch sizes against memory -------------------------------------------------------------------------------


def test_bench_refuses_a_batch_that_cannot_fit_in_memory(cli, small_bundle, tmp_path, monkeypatch):
    from mmdeploy.models import fit

    monkeypatch.setattr(fit, "available_memory", lambda device="cpu": 4 << 30)  # the same numbers on any machine
    bundle = _copy(small_bundle, tmp_path)
    manifest = (bundle / MANIFEST).read_text()
    line = assert_one_line_error(cli("bench", bundle, "--engine", "torch", "--batch", "1", "--batch", "1000000", "--iters", "1"),
                                 "size 16 needs at least", "at batch 1000000", "GiB of input batches", "4.0 GiB free",
                                 "a batch of at most about")
    assert (bundle / MANIFEST).read_text() == manifest  # no timing ran, nothing recorded
    largest = int(line.split("a batch of at most about ")[1].split(" ")[0].replace(",", ""))
    assert 1_000 < largest < 1_000_000


# -- item 8: absurd metadata in a checkpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("value, fragment", [
    (-1, "num_classes = -1 is not a class count"),
    (10**13, "num_classes = 10000000000000 is not a class count"),
    (5, "num_classes = 5, but the checkpoint's classifier has 10 outputs"),
    ("10", "num_classes = 10 is not a class count"),
])
def test_num_classes_in_checkpoint_metadata_is_checked_before_building(cli, image_dir, tmp_path, value, fragment):
    path = _checkpoint(tmp_path, mmdeploy={"arch_kwargs": {"num_classes": value}})
    out = tmp_path / "out"
    assert_one_line_error(_calibrate(cli, path, image_dir, out), "'mmdeploy' entry of", fragment)
    assert_no_output(out)


@pytest.mark.parametrize("entry", ["config", "mmdeploy"])
def test_a_huge_config_string_is_refused_before_parsing(cli, image_dir, tmp_path, entry):
    path = _checkpoint(tmp_path, **{entry: "[" * 200_000})
    assert_one_line_error(_calibrate(cli, path, image_dir, tmp_path / "out"), f"the {entry} string has 200,000 characters")


def test_a_config_string_too_deep_or_too_long_a_number_is_not_a_dict(tmp_path):
    for text in ["[" * 5_000, "{'depth': " + "9" * 5_001 + "}"]:
        path = _checkpoint(tmp_path, config=text)
        with pytest.raises(MMDeployError, match="is not a literal dict"):
            load_checkpoint(path)


def test_a_sidecar_of_deep_json_is_one_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(create_model("cifar_resnet8").state_dict(), str(path), metadata={"arch": "cifar_resnet8"})
    path.with_suffix(".json").write_text("[" * 100_000)
    with pytest.raises(MMDeployError, match="sidecar .* is not valid JSON"):
        load_checkpoint(path)

