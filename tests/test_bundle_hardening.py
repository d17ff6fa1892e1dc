"""Issue 24, the bundle's side: a lock file that is not a regular file, concurrent first runs and
readers, byte-identical weights, a sweep that only takes mmdeploy's own names, and one-line errors
for manifests that point across sizes, carry a NUL byte or a 5,000-character path, and full disks."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import calibrate_small as _calibrate

from mmdeploy.bundle import MANIFEST, Bundle, bundle_lock, lock_policy, save_safetensors
from mmdeploy.bundle.lock import LOCK_FILE
from mmdeploy.errors import MMDeployError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory, image_dir, resnet8_checkpoint):
    out = tmp_path_factory.mktemp("made24") / "bundle"
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24))
    return out


@pytest.fixture(scope="module")
def exported(made, tmp_path_factory):
    from mmdeploy.export.workflow import export_bundle

    out = tmp_path_factory.mktemp("exported24") / "bundle"
    shutil.copytree(made, out)
    export_bundle(out, "ort", ["fp32"], data=ROOT / "calib/val", parity_count=4, dynamic=False)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(src, out, symlinks=True)
    return out


def _edit(out: Path, change) -> None:
    manifest = json.loads((out / MANIFEST).read_text())
    change(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- 1. the lock file is never followed, never anything but a regular file --------------------


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(made, tmp_path, image_dir, cli, command):
    out = _copy(made, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / LOCK_FILE).unlink(missing_ok=True)
    (out / LOCK_FILE).symlink_to(victim)
    args = ("eval", out, "--data", image_dir) if command == "eval" else ("export", out, "--engine", "onnx")
    line = _one_line_error(cli(*args))
    assert "symbolic link" in line and str(out / LOCK_FILE) in line and "remove it" in line
    assert victim.read_text() == "precious\n", "the symlink's target was not truncated or written"
    assert (out / LOCK_FILE).is_symlink()


@pytest.mark.parametrize("kind", ["directory", "fifo", "hardlink"])
def test_a_lock_that_is_not_a_regular_file_is_refused_in_one_line(made, tmp_path, kind):
    out = _copy(made, tmp_path)
    lock = out / LOCK_FILE
    lock.unlink(missing_ok=True)
    other = tmp_path / "other.txt"
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        other.write_text("another file\n")
        os.link(other, lock)
    with pytest.raises(MMDeployError) as info:
        with Bundle.update(out) as bundle:
            bundle.set_step_key("eval", "x")
    words = {"directory": "a directory", "fifo": "a FIFO", "hardlink": "a hard link"}[kind]
    assert words in info.value.message and str(lock) in info.value.message and "\n" not in info.value.one_line()
    assert "remove it" in info.value.hint and (("rm -r " in info.value.hint) == (kind == "directory"))
    assert Bundle.open(out).step_key("eval") != "x"
    if kind == "hardlink":
        assert other.read_text() == "another file\n"


# -- 2. concurrent first runs; readers keep their files; deterministic weights ----------------


def _calibrate_in_child(args):
    image_dir, ckpt, out = args
    summary = _calibrate(image_dir, ckpt, out, sizes=(16, 24))
    return summary.reused


def test_two_calibrates_of_one_new_folder_both_succeed_and_the_second_reuses(tmp_path, image_dir, resnet8_checkpoint):
    out = tmp_path / "new" / "bundle"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        reused = pool.map(_calibrate_in_child, [(image_dir, resnet8_checkpoint, out)] * 2)
    # The second decided what to reuse under the lock, after the first committed: it recalibrated nothing.
    assert sorted(reused, key=len) == [[], [16, 24]]
    bundle = Bundle.open(out)
    assert bundle.sizes == [16, 24]
    assert _files(out) == sorted([LOCK_FILE, MANIFEST, "source", "source/weights.safetensors", "sizes", "sizes/16", "sizes/24",
                                  "sizes/16/weights.safetensors", "sizes/24/weights.safetensors"])


def _hold_shared(out, ready, release):
    with bundle_lock(out, shared=True):
        ready.set()
        release.wait(30)


def test_a_writer_waits_for_a_reader(made, tmp_path):
    out = _copy(made, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_hold_shared, args=(out, ready, release))
    reader.start()
    try:
        assert ready.wait(60)
        with bundle_lock(out, shared=True):  # readers share
            pass
        with lock_policy(wait=False), pytest.raises(MMDeployError, match="in use by another mmdeploy"):
            with Bundle.update(out) as bundle:
                bundle.set_step_key("eval", "x")
        release.set()
        with Bundle.update(out) as bundle:  # waits for the reader, then writes
            bundle.set_step_key("eval", "y")
    finally:
        release.set()
        reader.join(30)
    assert Bundle.open(out).step_key("eval") == "y"


def _hold_exclusive(out, ready, release):
    with bundle_lock(out):
        ready.set()
        release.wait(30)


def test_a_writer_waiting_on_a_new_folder_that_its_first_writer_gave_up_gets_a_fresh_lock(tmp_path):
    """The first writer made the folder and failed before any commit: it removes folder and lock on release;
    the waiting writer notices its lock file is gone, makes both again and holds the new one."""
    import threading

    out = tmp_path / "new"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_hold_exclusive, args=(out, ready, release))
    first.start()
    try:
        assert ready.wait(60)
        got = {}

        def second():
            with bundle_lock(out):
                lock = out / LOCK_FILE
                got["pid"] = lock.read_text().strip()
                fd = os.open(lock, os.O_RDWR)  # the lock this writer holds is the file on disk
                try:
                    with pytest.raises(BlockingIOError):
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                finally:
                    os.close(fd)

        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), "the second writer waits"
        release.set()
        waiter.join(30)
    finally:
        release.set()
        first.join(30)
    assert got == {"pid": str(os.getpid())}
    assert not out.exists(), "the second writer committed nothing either: the folder is gone again"
    with bundle_lock(out):
        pass
    assert not out.exists()
    out.mkdir()
    with bundle_lock(out):  # a folder the user made stays, its lock file is emptied of the pid
        pass
    assert (out / LOCK_FILE).read_text() == ""


def test_eval_holds_the_bundle_shared_while_it_reads(made, tmp_path, image_dir, monkeypatch):
    """No writer can take the lock (and sweep) while eval measures; another reader can; eval's results still land."""
    from mmdeploy import evaluate

    out = _copy(made, tmp_path)
    real, seen = evaluate.measure_accuracy, {}

    def measure(*args, **kwargs):
        fd = os.open(out / LOCK_FILE, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            seen["shared"] = True
        finally:
            os.close(fd)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "measure_accuracy", measure)
    evaluate.evaluate_target(out, image_dir, sizes=[16], limit=4)
    assert seen == {"shared": True}
    assert [(a.size, a.engine) for a in Bundle.open(out).accuracies() if a.calibrated] == [(16, "torch")]
    fd = os.open(out / LOCK_FILE, os.O_RDWR)  # released afterwards
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_safetensors_files_are_byte_identical_for_identical_content(tmp_path):
    import torch
    from safetensors import safe_open

    state = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(2, dtype=torch.int64)}
    meta = {f"key{i}": str(i) for i in range(8)}  # safetensors alone writes these in a per-process hash order
    digests = set()
    for i in range(4):
        path = tmp_path / f"w{i}.safetensors"
        save_safetensors(path, state, dict(reversed(meta.items())) if i % 2 else meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("b"), state["b"])


def test_calibrating_twice_writes_identical_weights(tmp_path, image_dir, resnet8_checkpoint):
    one, two = tmp_path / "one", tmp_path / "two"
    _calibrate(image_dir, resnet8_checkpoint, one)
    _calibrate(image_dir, resnet8_checkpoint, two)
    for rel in ("sizes/16/weights.safetensors", "source/weights.safetensors"):
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    a, b = Bundle.open(one), Bundle.open(two)
    assert a.size(16).weights_sha256 == b.size(16).weights_sha256 and a.source.weights_sha256 == b.source.weights_sha256


# -- 6. the sweep takes only mmdeploy's own names, and says what it took ----------------------

_USER_FILES = ("source/original_checkpoint.pth", "model_final.onnx", "sizes/16/notes.txt")


def test_user_files_in_a_bundle_survive_eval_calibrate_and_export(made, tmp_path, image_dir, resnet8_checkpoint, cli):
    out = _copy(made, tmp_path)
    for rel in _USER_FILES:
        (out / rel).write_text(f"the user's {rel}")
    assert cli("eval", out, "--data", image_dir, "--size", "16", "--limit", "4").exit_code == 0
    assert cli("export", out, "--engine", "onnx", "--data", ROOT / "calib/val", "--no-dynamic").exit_code == 0
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16,), seed=1)  # new statistics: the old weights and ONNX go
    for rel in _USER_FILES:
        assert (out / rel).read_text() == f"the user's {rel}", rel
    assert Bundle.open(out).size(16).weights == "sizes/16/weights.1.safetensors"
    assert not (out / "sizes/16/weights.safetensors").exists() and not (out / "sizes/16/model.onnx").exists()


def test_the_sweep_says_what_it_removed(made, tmp_path, image_dir, cli):
    out = _copy(made, tmp_path)
    for rel in _USER_FILES:
        (out / rel).write_text("mine")
    (out / "sizes/16/weights.7.safetensors").write_bytes(b"left by a crashed calibrate")
    (out / "sizes/16/.model.onnx.abcd1234.tmp").write_bytes(b"half an ONNX")
    result = cli("eval", out, "--data", image_dir, "--size", "16", "--limit", "4")
    assert result.exit_code == 0, result.stderr
    text = re.sub(r"\s+", "", result.stderr)  # the console wraps long lines
    assert text.count("removedfrombundle") == 1 and "sizes/16/weights.7.safetensors" in text and ".model.onnx.abcd1234.tmp" in text
    assert not any(rel in text for rel in _USER_FILES)
    assert all((out / rel).exists() for rel in _USER_FILES)
    assert not (out / "sizes/16/weights.7.safetensors").exists()


def test_a_normal_recalibration_sweeps_quietly(made, tmp_path, image_dir, resnet8_checkpoint):
    out = _copy(made, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # superseded files of this writer are no news
        _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16,), seed=3)


# -- 8. manifests that point across sizes, NUL bytes, long paths; full disks -----------------


def test_a_size_pointing_at_another_sizes_onnx_is_refused(exported, tmp_path, image_dir, cli):
    out = _copy(exported, tmp_path)
    other = Bundle.open(out).size(24).artifact("onnx", "fp32")
    _edit(out, lambda m: m["sizes"]["16"]["artifacts"]["onnx/fp32"].update(path=other.file, sha256=other.sha256))
    line = _one_line_error(cli("eval", out, "--data", image_dir, "--engine", "ort"))
    assert "sizes.16.artifacts.onnx/fp32.path" in line and "not in size 16's folder" in line


def test_a_copy_of_another_sizes_onnx_in_the_right_folder_is_refused_by_its_shape(exported, tmp_path, image_dir, cli):
    out = _copy(exported, tmp_path)
    bundle = Bundle.open(out)
    mine, other = bundle.size(16).artifact("onnx", "fp32"), bundle.size(24).artifact("onnx", "fp32")
    shutil.copyfile(out / other.file, out / mine.file)
    _edit(out, lambda m: m["sizes"]["16"]["artifacts"]["onnx/fp32"].update(sha256=other.sha256))
    line = _one_line_error(cli("eval", out, "--data", image_dir, "--engine", "ort", "--size", "16"))
    assert "takes 24x24 images, not size 16" in line


@pytest.mark.parametrize("bad", ["nul", "long", "long-name", "data-nul", "data-long"])
def test_nul_bytes_and_huge_paths_in_a_manifest_are_one_line_errors(made, tmp_path, image_dir, cli, bad):
    out = _copy(made, tmp_path)
    value = {"nul": "sizes/16/weights\x00.safetensors", "long": "sizes/16/" + "a/" * 2500 + "w.safetensors",
             "long-name": "sizes/16/" + "w" * 300 + ".safetensors", "data-nul": "/data\x00/x", "data-long": "/d" * 2600}[bad]
    if bad.startswith("data"):
        _edit(out, lambda m: m["sizes"]["16"]["calibration"].update(data=value))
    else:
        _edit(out, lambda m: m["sizes"]["16"].update(weights=value))
    line = _one_line_error(cli("eval", out, "--data", image_dir))
    assert len(line) < 600, line
    assert ("NUL byte" in line) if "nul" in bad else ("characters long" in line)


def _fsync_fails_at(monkeypatch, n: int) -> None:
    """A disk that fills up at the ``n``-th fsync: the write's OSError carries no file name, as a real one."""
    real, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_during_a_first_calibrate_leaves_nothing(tmp_path, image_dir, resnet8_checkpoint, cli, monkeypatch):
    out = tmp_path / "bundle"
    _fsync_fails_at(monkeypatch, 2)  # the checkpoint's own weights land, the size's weights do not
    result = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", image_dir, "--out", out, "--batches", "2", "--batch-size", "4")
    line = _one_line_error(result)
    assert "no space left on the disk" in line and "sizes/16/weights.safetensors" in line and "free some space" in line
    assert not out.exists(), "no folder, no unlisted weights file left behind"


def test_a_full_disk_while_adding_a_size_leaves_the_bundle_as_it_was(made, tmp_path, image_dir, resnet8_checkpoint, cli, monkeypatch):
    out = _copy(made, tmp_path)
    before, manifest = _files(out), (out / MANIFEST).read_bytes()
    _fsync_fails_at(monkeypatch, 1)
    line = _one_line_error(cli("calibrate", resnet8_checkpoint, "--size", "20", "--data", image_dir, "--out", out,
                               "--batches", "2", "--batch-size", "4"))
    assert "no space left on the disk" in line and "sizes/20/weights.safetensors" in line
    assert _files(out) == before and (out / MANIFEST).read_bytes() == manifest


def test_a_full_disk_during_eval_names_the_file(made, tmp_path, image_dir, cli, monkeypatch):
    out = _copy(made, tmp_path)
    _fsync_fails_at(monkeypatch, 1)
    line = _one_line_error(cli("eval", out, "--data", image_dir, "--size", "16", "--limit", "4"))
    assert "no space left on the disk" in line and str(out / MANIFEST) in line
    assert not list(out.glob(".*.tmp"))
