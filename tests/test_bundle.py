"""The bundle's guarantees: paths stay inside, files match their sha256, one writer at a time,
a crash at any os.replace leaves the old or the new bundle, and leftovers are swept."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import calibrate_small as _calibrate

import mmdeploy
from mmdeploy.bundle import MANIFEST, Bundle, bundle_lock, content_key, lock_policy
from mmdeploy.errors import MMDeployError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory, image_dir, resnet8_checkpoint):
    """A calibrated bundle (sizes 16 and 20) to copy per test."""
    out = tmp_path_factory.mktemp("made") / "bundle"
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 20))
    return out


def _copy(made, tmp_path, name="bundle") -> Path:
    out = tmp_path / name
    shutil.copytree(made, out)
    return out


def _edit(out: Path, change) -> None:
    manifest = json.loads((out / MANIFEST).read_text())
    change(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*.tmp")) + sorted(p.name for p in out.parent.glob(f".{out.name}.staging-*"))


# -- paths read from a manifest stay inside the bundle ---------------------------------------


@pytest.mark.parametrize("where", ["source", "size", "absolute", "symlink"])
def test_manifest_paths_outside_the_bundle_are_refused_and_never_touched(made, tmp_path, image_dir, resnet8_checkpoint, where):
    out = _copy(made, tmp_path / "deep")
    escaped = tmp_path / "escaped"
    marker = escaped / "pwn.safetensors"
    if where == "source":
        _edit(out, lambda m: m["source"].update(weights="../../escaped/pwn.safetensors"))
    elif where == "size":
        _edit(out, lambda m: m["sizes"]["16"].update(weights="sizes/16/../../../../escaped/pwn.safetensors"))
    elif where == "absolute":
        _edit(out, lambda m: m["sizes"]["16"].update(weights=str(marker)))
    else:  # a symlink inside the bundle that points out of it
        escaped.mkdir()
        marker.write_bytes((out / "sizes/16/weights.safetensors").read_bytes())
        (out / "sizes/16/link.safetensors").symlink_to(marker)
        _edit(out, lambda m: m["sizes"]["16"].update(weights="sizes/16/link.safetensors"))
    before = marker.read_bytes() if marker.exists() else None
    with pytest.raises(MMDeployError, match="points outside the bundle"):
        Bundle.open(out)
    with pytest.raises(MMDeployError, match="points outside the bundle"):
        _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24), seed=5)
    assert (marker.read_bytes() if marker.exists() else None) == before, "nothing written outside the bundle"
    assert where == "symlink" or not escaped.exists()


def test_weights_of_another_bundle_copied_in_are_refused_by_sha256(made, tmp_path, image_dir, resnet8_checkpoint):
    out = _copy(made, tmp_path, "mine")
    other = tmp_path / "other"
    _calibrate(image_dir, resnet8_checkpoint, other, sizes=(16,), seed=3)  # other statistics
    shutil.copyfile(other / "sizes/16/weights.safetensors", out / "sizes/16/weights.safetensors")
    with pytest.raises(MMDeployError, match="does not match the sha256"):
        Bundle.open(out).build_model(16)
    # calibrate redoes the size instead of reusing it
    summary = _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16,))
    assert summary.reused == [] and Bundle.open(out).build_model(16) is not None


def test_a_newer_schema_is_refused_in_one_line(made, tmp_path):
    out = _copy(made, tmp_path)
    _edit(out, lambda m: m.update(schema_version=99))
    with pytest.raises(MMDeployError, match="schema version 99") as info:
        Bundle.open(out)
    assert "upgrade mmdeploy" in info.value.hint


def test_a_bundle_without_recorded_weight_hashes_still_reads(made, tmp_path):
    """schema 1 bundles written before weights_sha256 existed: read, not verified, then recorded on the next calibrate."""
    out = _copy(made, tmp_path)
    _edit(out, lambda m: [m["source"].pop("weights_sha256"), *(e.pop("weights_sha256") for e in m["sizes"].values())])
    assert Bundle.open(out).build_model(16) is not None


# -- artifacts are used only when their sha256 matches ----------------------------------------


@pytest.fixture(scope="module")
def exported(made, tmp_path_factory):
    from mmdeploy.export.workflow import export_bundle

    out = _copy(made, tmp_path_factory.mktemp("exported"))
    export_bundle(out, "ort", ["fp32"], data=ROOT / "calib/val", parity_count=4, dynamic=False)
    return out


def test_a_garbage_onnx_is_refused_by_eval_and_redone_by_export(exported, tmp_path):
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.export.workflow import export_bundle

    out = _copy(exported, tmp_path)
    rel = Bundle.open(out).size(16).artifact("onnx", "fp32").file
    (out / rel).write_bytes(b"garbage")
    with pytest.raises(MMDeployError, match="does not match the sha256"):
        evaluate_target(out, ROOT / "calib/val", engines=["ort"], sizes=[16], limit=4)
    summary = export_bundle(out, "ort", ["fp32"], data=ROOT / "calib/val", parity_count=4, dynamic=False)
    new = Bundle.open(out).size(16).artifact("onnx", "fp32")
    assert new.file in summary.written and new.file not in summary.reused
    assert Bundle.open(out).artifact_usable(new) and _temp_files(out) == []


def test_a_failed_export_leaves_no_temp_files(made, tmp_path, monkeypatch):
    from mmdeploy.export import workflow

    out = _copy(made, tmp_path)
    before = (out / MANIFEST).read_bytes()

    def broken(*args, **kwargs):
        raise MMDeployError("parity check blew up (simulated)", "none")

    monkeypatch.setattr(workflow, "check_parity", broken)
    with pytest.raises(MMDeployError, match="simulated"):
        workflow.export_bundle(out, "ort", ["fp32"], data=ROOT / "calib/val", parity_count=4, dynamic=False)
    assert _temp_files(out) == [] and (out / MANIFEST).read_bytes() == before
    assert not list(out.rglob("*.onnx"))


# -- a crash at any os.replace leaves the old or the new bundle ------------------------------


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler in mmdeploy catches it."""


def _kill_at(monkeypatch, n: int) -> None:
    real, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == n:
            raise _Killed(f"killed before os.replace #{n} ({Path(dst).name})")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _consistent(out: Path) -> dict:
    """The bundle opens and every file it lists matches its sha256; returns its weights by size."""
    bundle = Bundle.open(out)
    assert bundle.file_ok(bundle.source.weights, bundle.source.weights_sha256)
    return {s: bundle.load_weights(s) for s in bundle.sizes}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_calibrate_killed_at_each_rename_leaves_the_old_bundle_and_the_rerun_matches(made, tmp_path, image_dir, resnet8_checkpoint,
                                                                                     monkeypatch, n):
    out = _copy(made, tmp_path)
    old = (out / MANIFEST).read_bytes()
    _kill_at(monkeypatch, n)  # renames: new 16 weights, new 24 weights, manifest, ...
    try:
        _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24), seed=7)
        killed = False
    except _Killed:
        killed = True
    monkeypatch.undo()
    if killed:
        assert (out / MANIFEST).read_bytes() == old, "the manifest is the commit point"
    _consistent(out)
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24), seed=7)
    assert _temp_files(out) == []
    clean = _copy(made, tmp_path, "clean")
    _calibrate(image_dir, resnet8_checkpoint, clean, sizes=(16, 24), seed=7)
    got, want = _consistent(out), _consistent(clean)
    assert got.keys() == want.keys()
    for s in got:
        assert all(torch.equal(got[s][k], want[s][k]) for k in want[s])
    listed = {Bundle.open(out).size(s).weights for s in got} | {Bundle.open(out).source.weights}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")}
    assert on_disk == listed, "files no manifest lists were swept"


# -- one writer at a time ------------------------------------------------------------------


def _calibrate_in_child(args):
    image_dir, ckpt, out, size = args
    _calibrate(image_dir, ckpt, out, sizes=(size,))
    return size


def test_two_calibrates_into_one_bundle_both_land(made, tmp_path, image_dir, resnet8_checkpoint):
    out = _copy(made, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.map(_calibrate_in_child, [(image_dir, resnet8_checkpoint, out, 24), (image_dir, resnet8_checkpoint, out, 40)])
    assert done == [24, 40]
    bundle = Bundle.open(out)
    assert bundle.sizes == [16, 20, 24, 40]
    _consistent(out)
    assert _temp_files(out) == []


def _hold_lock(out, ready, release):
    with bundle_lock(out):
        ready.set()
        release.wait(30)


def test_a_second_writer_fails_at_once_with_no_wait_and_waits_by_default(made, tmp_path, capfd):
    out = _copy(made, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(out, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with lock_policy(wait=False), pytest.raises(MMDeployError, match="being written by another mmdeploy") as info:
            with Bundle.update(out) as bundle:
                bundle.set_step_key("eval", "x")
        assert "--no-wait" in info.value.hint and "\n" not in str(info.value)
        release.set()
        with Bundle.update(out) as bundle:  # waits for the holder, then writes
            bundle.set_step_key("eval", "y")
    finally:
        release.set()
        holder.join(30)
    assert Bundle.open(out).step_key("eval") == "y"


def test_eval_and_bench_at_once_keep_both_results(exported, tmp_path, monkeypatch):
    """bench measures from a stale view while eval commits; bench's read-modify-write keeps eval's figures."""
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.latency import bench

    out = _copy(exported, tmp_path)
    real = bench.measure_with_interference

    def measure_while_eval_writes(*args, **kwargs):
        evaluate_target(out, ROOT / "calib/val", engines=["torch"], sizes=[16], limit=4)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_with_interference", measure_while_eval_writes)
    bench.bench_bundle(out, ["torch"], sizes=[16], batches=[1], warmup=0, iters=1)
    bundle = Bundle.open(out)
    assert {(a.size, a.engine) for a in bundle.accuracies()} == {(16, "torch")}
    assert [(t.size, t.engine, t.batch) for t in bundle.latencies()] == [(16, "torch", 1)]


def test_sweep_removes_stale_temp_files_and_staging_folders(made, tmp_path, image_dir, resnet8_checkpoint):
    out = _copy(made, tmp_path)
    (out / "sizes/16/.weights.safetensors.abc123.tmp").write_bytes(b"x")
    (out / "sizes/16/weights.9.safetensors").write_bytes(b"orphan")
    (tmp_path / f".{out.name}.staging-xyz").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16,))
    assert _temp_files(out) == [] and not (out / "sizes/16/weights.9.safetensors").exists()
    assert (out / "notes.txt").exists(), "only files the bundle manages are swept"


def test_sweep_removes_a_crashed_writers_temp_folder(made, tmp_path, image_dir, resnet8_checkpoint):
    out = _copy(made, tmp_path)
    cache = out / ".ov_cache.abc123.tmp"  # export --engine ov fills its model cache here before moving it in
    cache.mkdir()
    (cache / "blob").write_bytes(b"half a compiled model")
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16,))
    assert not cache.exists()


def test_an_ov_cache_folder_outside_the_bundle_is_refused(made, tmp_path):
    out = _copy(made, tmp_path)
    weights = Bundle.open(out).size(16).weights
    _edit(out, lambda m: m["sizes"]["16"]["artifacts"].update({"ov/fp32": {"path": weights, "cache_dir": "../elsewhere"}}))
    with pytest.raises(MMDeployError, match="cache_dir.*points outside the bundle"):
        Bundle.open(out)


def test_measurements_round_trip_through_typed_accessors(made, tmp_path):
    """Tuned settings, noise records, step keys and the bench environment survive a locked read-modify-write."""
    from mmdeploy.latency.threads import ThreadPolicy
    from mmdeploy.latency.tune import machine_fingerprint, store_settings, stored_policy
    from mmdeploy.results import LatencyResult

    out = _copy(made, tmp_path)
    store_settings(out, {("ort", "fp32", 16, 1): ThreadPolicy(1, True, "tuned")}, {"timings_p50_ms": {}})
    noisy = LatencyResult(16, "torch", "fp32", 1, 2.0, 3.0, 4.0, 2.5, 500.0, 10, policy={"threads": 1, "spinning": False, "source": "torch"},
                          reliable=False, noise={"spread": 1.5})
    with Bundle.update(out) as bundle:
        bundle.record_latency(noisy)
        bundle.set_step_key("bench", "k1")
        bundle.set_bench_environment({"cpu": "test", "interference_summary": "busy"})
    bundle = Bundle.open(out)
    assert bundle.engine_settings["machine"] == machine_fingerprint()
    assert stored_policy(bundle.engine_settings, "ort", "fp32", 16, 1) == ThreadPolicy(1, True, "tuned")
    assert bundle.latencies() == [noisy] and not bundle.latencies()[0].reliable
    assert bundle.step_key("bench") == "k1" and bundle.bench_environment["interference_summary"] == "busy"
    _edit(out, lambda m: m.pop("engine_settings"))  # a bundle never tuned reads as untuned
    assert Bundle.open(out).engine_settings == {}
    assert stored_policy(Bundle.open(out).engine_settings, "ort", "fp32", 16, 1).source == "default"


# -- one content key; manifest keys in one package ----------------------------------------------------


def test_content_key_is_stable_and_order_free():
    assert content_key({"a": 1, "b": [2, 3]}) == content_key({"b": [2, 3], "a": 1})
    assert content_key([1, 2]) != content_key([2, 1]) and len(content_key("x")) == 20


def test_only_the_bundle_package_spells_manifest_keys():
    offenders = []
    for path in (ROOT / "mmdeploy").rglob("*.py"):
        if "bundle" in path.relative_to(ROOT / "mmdeploy").parts[0]:
            continue
        text = path.read_text()
        for needle in ("manifest[", ".manifest", "\"onnx/", "\"trt/{", "f\"onnx/", "f\"ov/", "batch[1:]", "\"engine_settings\"",
                       "\"run_steps\"", "\"bench_environment\""):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []


def test_load_gives_typed_records(made):
    bundle = mmdeploy.load(made)
    record = bundle.size(16)
    assert record.weights.startswith("sizes/16/") and record.weights_sha256 and record.calibration.key
    assert bundle.source.arch == "cifar_resnet8" and record.artifacts == {}
