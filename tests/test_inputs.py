"""Odd and hostile inputs: data keyed by content, image modes, class folders, configs, unwritable bundles."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdeploy import filehash
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.classes import CIFAR10_CLASSES, folder_labels
from mmdeploy.config import ConfigError, config_problems
from mmdeploy.data import decode_images, scan_image_folder, to_rgb8
from mmdeploy.errors import MMDeployError
from mmdeploy.pipeline import DEMO_CONFIG, load_config
from mmdeploy.writable import disk_error, ensure_writable

# ---------------------------------------------------------------- content hashes and reuse


def _count_hashing(monkeypatch) -> list:
    calls: list = []
    real = filehash._sha256
    monkeypatch.setattr(filehash, "_sha256", lambda p: (calls.append(p), real(p))[1])
    return calls


def test_file_hashes_are_cached_and_notice_same_size_rewrites(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    cache = tmp_path / "cache.json"
    calls = _count_hashing(monkeypatch)
    first = filehash.file_hashes(files, cache)
    assert len(calls) == 3 and len(set(first)) == 3
    assert filehash.file_hashes(files, cache) == first and len(calls) == 3, "warm: no file read again"
    files[1].write_bytes(b"\xff" * 100)  # same name, same size, other bytes
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # even with the mtime set back
    again = filehash.file_hashes(files, cache)
    assert len(calls) == 4 and again[1] != first[1] and again[0] == first[0]


@pytest.mark.parametrize("garbage", [b"\x00\xffnot json", b'{"version": 1, "entries": {"x": [1, 2]}}', b"[]",
                                     b'{"version": 1, "entries": {"%s": [100, 0, 0, 0, "zz"]}}'])
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, monkeypatch, garbage):
    f = tmp_path / "a.bin"
    f.write_bytes(b"a" * 100)
    cache = tmp_path / "cache.json"
    cache.write_bytes(garbage.replace(b"%s", str(f).encode()))
    calls = _count_hashing(monkeypatch)
    assert filehash.file_hashes([f], cache) == [filehash._sha256(str(f))]
    assert len(calls) == 2, "hashed for real, not taken from the broken cache"
    assert filehash._read_cache(cache), "rewritten as a valid cache"


def test_unwritable_cache_dir_never_fails(tmp_path, monkeypatch):
    f = tmp_path / "a.bin"
    f.write_bytes(b"a")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MMDEPLOY_CACHE_DIR", str(blocker / "sub"))  # under a file: cannot be created, even by root
    assert filehash.cache_dir() == blocker / "sub"
    assert len(filehash.file_hashes([f])) == 1


def test_concurrent_writers_keep_each_others_entries(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    cache = tmp_path / "cache.json"
    filehash.file_hashes([a], cache)
    filehash.file_hashes([b], cache)
    assert set(filehash._read_cache(cache)) == {str(a), str(b)}
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"], "no temp files left"


def _pad_to_same_size(x: Path, y: Path) -> None:
    """Trailing bytes after a JPEG's end marker are ignored by decoders: make both files one size."""
    n = max(x.stat().st_size, y.stat().st_size)
    for p in (x, y):
        p.write_bytes(p.read_bytes().ljust(n, b"\0"))


def _jpeg_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((32, 32, 3), 40 + 170 * label, np.uint8) + rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.jpg", quality=90)
    for i in range(4):
        _pad_to_same_size(root / "cat" / f"{i}.jpg", root / "dog" / f"{i}.jpg")
    return root


def test_swapped_jpeg_contents_are_not_reused(tmp_path, resnet8_checkpoint):
    data = _jpeg_folder(tmp_path / "data")
    out = tmp_path / "bundle"
    first = calibrate_to_bundle(resnet8_checkpoint, [16], data, out, batches=2, batch_size=4, augment=False)
    key = scan_image_folder(data).fingerprint()
    assert calibrate_to_bundle(resnet8_checkpoint, [16], data, out, batches=2, batch_size=4, augment=False).reused == [16]
    for i in range(4):  # swap contents between the classes: same names, same sizes, other bytes
        cat, dog = data / "cat" / f"{i}.jpg", data / "dog" / f"{i}.jpg"
        a, b = cat.read_bytes(), dog.read_bytes()
        assert len(a) == len(b)
        cat.write_bytes(b)
        dog.write_bytes(a)
    assert scan_image_folder(data).fingerprint() != key, "eval/run reuse keys change too"
    again = calibrate_to_bundle(resnet8_checkpoint, [16], data, out, batches=2, batch_size=4, augment=False)
    assert again.reused == [] and again.records[16]["data_fingerprint"] != first.records[16]["data_fingerprint"]


def test_inverted_bmp_pixels_are_not_reused(tmp_path, resnet8_checkpoint):
    from mmdeploy.bundle import Bundle

    data = tmp_path / "data"
    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 128, (32, 32, 3), dtype=np.uint8)).save(data / cls / f"{i}.bmp")
    out = tmp_path / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], data, out, batches=2, batch_size=4, augment=False)
    before = Bundle.open(out).load_weights(16)["bn1.running_mean"].clone()
    for f in data.rglob("*.bmp"):
        size = f.stat().st_size
        with Image.open(f) as im:
            Image.fromarray(255 - np.asarray(im)).save(f)
        assert f.stat().st_size == size
    again = calibrate_to_bundle(resnet8_checkpoint, [16], data, out, batches=2, batch_size=4, augment=False)
    assert again.reused == []
    assert not torch.allclose(Bundle.open(out).load_weights(16)["bn1.running_mean"], before)


# ---------------------------------------------------------------- image modes


def test_16bit_png_decodes_like_its_8bit_twin(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    Image.fromarray(gray).save(tmp_path / "a" / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "b" / "sixteen.png")
    with Image.open(tmp_path / "b" / "sixteen.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    decoded = decode_images(scan_image_folder(tmp_path), None, "cifar", 32, workers=1).images
    assert torch.equal(decoded[0], decoded[1])
    assert decoded[1].float().mean().item() == pytest.approx(gray.mean(), abs=0.5), "scaled, not clipped to white"


_RGB = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
_GRAY = _RGB[..., 0]


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.fromarray(_GRAY.astype(np.uint16) * 257), _GRAY),
    (lambda: Image.fromarray(_GRAY.astype(np.int32) * 257), _GRAY),
    (lambda: Image.fromarray(_GRAY.astype(np.int32)), _GRAY),
    (lambda: Image.fromarray(_GRAY.astype(np.float32) / 255), _GRAY),
    (lambda: Image.fromarray(np.dstack([_GRAY, np.full_like(_GRAY, 7)])), _GRAY),
    (lambda: Image.fromarray(np.dstack([_RGB, np.full_like(_GRAY, 0)])), _RGB),
    (lambda: Image.fromarray(_RGB).convert("CMYK"), _RGB),
])
def test_modes_become_8bit_rgb(make, expected):
    out = np.asarray(to_rgb8(make()))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    want = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=2)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_palette_with_transparency_becomes_rgb():
    im = Image.fromarray(_RGB).convert("P")
    im.info["transparency"] = 0
    out = np.asarray(to_rgb8(im))
    assert out.shape == (8, 8, 3) and np.abs(out.astype(int) - _RGB).mean() < 40


# ---------------------------------------------------------------- class folders


def test_cat_and_dog_folders_score_against_cifar10_indices(image_dir):
    folder = scan_image_folder(image_dir, list(CIFAR10_CLASSES), 10)
    assert folder.labels == [3] * 8 + [5] * 8
    assert scan_image_folder(image_dir, None, 2).labels == [0] * 8 + [1] * 8, "no list, counts equal: sorted order"


def test_eval_uses_the_mapped_indices(image_dir):
    from mmdeploy.data import Preprocess
    from mmdeploy.engines.base import Engine
    from mmdeploy.evaluate import EvalTarget, measure_accuracy

    class AlwaysCat(Engine):
        name = "fake"

        def _infer(self, x):
            logits = torch.zeros(x.shape[0], 10)
            logits[:, 3] = 1
            return logits

    target = EvalTarget(16, "fake", "fp32", True, lambda: AlwaysCat(16))
    mapped = measure_accuracy([target], image_dir, Preprocess(), classes=list(CIFAR10_CLASSES), num_outputs=10)
    assert mapped[0].top1 == pytest.approx(50.0), "every cat right, every dog wrong"


def test_imagenet_wordnet_folders_take_imagenet_indices():
    from mmdeploy.classes import imagenet_wnids, model_classes

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert folder_labels(["n01443537", "n15075141"], None, 1000, Path("val")) == [1, 999]
    assert model_classes({}, {"dataset": "imagenet"}, 1000) == list(wnids)
    assert model_classes({}, {"dataset": "cifar10"}, 100) is None, "a list that does not fit the outputs is not used"
    assert model_classes({"mmdeploy": {"classes": ["b", "a"]}}, {"dataset": "cifar10"}, 2) == ["b", "a"], "recorded names first"


@pytest.mark.parametrize("folders, classes, n, fragment", [
    (["cat", "zebra"], list(CIFAR10_CLASSES), 10, "zebra are not classes of the model"),
    (["cat", "dog"], None, 10, "2 class folders but the model has 10 outputs"),
])
def test_unmappable_folders_are_refused(folders, classes, n, fragment):
    with pytest.raises(MMDeployError, match=fragment):
        folder_labels(folders, classes, n, Path("data"))


def test_bundle_records_classes_and_eval_cli_refuses_unknown_folders(tmp_path, image_dir, resnet8_checkpoint, cli):
    from mmdeploy.bundle import Bundle

    out = tmp_path / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=2, batch_size=4)
    assert Bundle.open(out).manifest["source"]["classes"] == list(CIFAR10_CLASSES)
    data = tmp_path / "zoo"
    shutil.copytree(image_dir, data)
    (data / "dog").rename(data / "zebra")
    result = cli("eval", out, "--data", data)
    assert result.exit_code == 1 and "zebra" in result.stderr and "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- run configs


def test_demo_config_fits_the_schema():
    assert config_problems(DEMO_CONFIG) == []


def test_config_lists_every_problem_before_any_work(tmp_path, cli):
    path = tmp_path / "bad.toml"
    path.write_text('out = 3\n[calibrate]\nsize = [16]\nsizes = "48"\n[bench]\niters = 0\n[export]\nprecisions = ["fp8"]\n'
                    '[report]\ngate = "yes"\n[[model]]\nname = "a"\ncheckpoint = "x.pth"\n[[model]]\nname = "a"\ncheckpoint = "y.pth"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    for fragment in ("out must be a string", "unknown key calibrate.size", "calibrate.sizes must be a list of ints",
                     "bench.iters must be >= 1", "'fp8' is not one of fp32, fp16", "report.gate must be true or false",
                     "model[1].name 'a' is used twice"):
        assert fragment in text
    assert len(info.value.problems) == 7
    result = cli("run", path)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 8 and "7 problems" in result.stderr


@pytest.mark.parametrize("toml, fragment", [
    ("[calibrate]\nsizes = [16, 0]", "calibrate.sizes[1] must be >= 1"),
    ("[calibrate]\nseed = 1.5", "calibrate.seed must be an integer"),
    ("[bench]\nwarmup = -1", "bench.warmup must be >= 0"),
    ("[bench]\nbatches = [true]", "bench.batches[0] must be an integer"),
    ("[export]\nengines = [\"tensorflow\"]", "is not one of auto, ort, trt"),
    ("calibrate = [1]", "calibrate must be a table"),
    ("[data]\ncalibration = {path = \"x\"}", "data.calibration must be a string"),
    ("[report]\nmax_latency_regress = \"-5%\"", "report.max_latency_regress"),
    ("[[model]]\nname = \"../x\"\ncheckpoint = \"c.pth\"", "must be a plain folder name"),
])
def test_config_types_and_ranges(tmp_path, toml, fragment):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(fragment in p for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------- read-only bundles, full disks


def test_ensure_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MMDeployError, match="is not a folder"):
        ensure_writable(tmp_path / "f" / "bundle")
    ensure_writable(tmp_path / "new" / "bundle")  # a folder that will be made under a writable one
    assert not list(tmp_path.glob("**/.mmdeploy-write-probe-*")), "the probe is removed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into chmod 0555 folders; the write probe is tested above and with ENOSPC below")
def test_read_only_bundle_fails_before_work(tmp_path, image_dir, resnet8_checkpoint, cli):
    out = tmp_path / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=2, batch_size=4)
    out.chmod(0o555)
    try:
        result = cli("eval", out, "--data", image_dir)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 1 and "not writable" in result.stderr and "internal error" not in result.stderr


def test_read_only_file_system_probe(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(MMDeployError, match="read-only file system") as info:
        ensure_writable(tmp_path)
    assert str(tmp_path) in info.value.message


def test_full_disk_is_one_line_and_leaves_no_bundle(tmp_path, image_dir, resnet8_checkpoint, cli, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]) if args else None)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "bundle"
    result = cli("calibrate", resnet8_checkpoint, "--size", "16", "--data", image_dir, "--out", out, "--batches", "2", "--batch-size", "4")
    assert result.exit_code == 1 and "internal error" not in result.stderr
    assert "No space left" in result.stderr or "no space left" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "manifest.json").exists()


def test_disk_errors_name_the_path():
    full = disk_error(OSError(errno.ENOSPC, "No space left on device", "/b/manifest.json"))
    assert "no space left" in full.message and "/b/manifest.json" in full.message and "free some space" in full.hint
    assert "permission denied on /b" in disk_error(OSError(errno.EACCES, "Permission denied", "/b")).message
    assert disk_error(OSError(errno.ENOENT, "No such file")) is None


def test_full_disk_while_saving_eval_results_is_one_line(tmp_path, image_dir, resnet8_checkpoint, cli, monkeypatch):
    from mmdeploy.bundle import Bundle

    out = tmp_path / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=2, batch_size=4)
    before = (out / "manifest.json").read_bytes()

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", full)
    result = cli("eval", out, "--data", image_dir)
    assert result.exit_code == 1 and "internal error" not in result.stderr, result.stderr
    assert "no space left on the disk" in result.stderr and "manifest.json" in result.stderr and "free some space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "manifest.json").read_bytes() == before and Bundle.open(out).sizes == [16]
    assert not list(out.glob(".*.tmp")), "the temp file is removed"
