"""Image folders, decode-once, and the deterministic per-size preprocessing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mmdeploy.data import Preprocess, decode_images, scan_image_folder, store_resolution, to_input
from mmdeploy.errors import MMDeployError

PRE = Preprocess("cifar", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_scan_lists_sorted_classes_and_files(image_dir):
    folder = scan_image_folder(image_dir)
    assert folder.classes == ["cat", "dog"]
    assert len(folder) == 16 and folder.labels == [0] * 8 + [1] * 8
    assert folder.files[0].name == "000.png" and folder.files[1].name == "001.jpg"
    assert folder.fingerprint() == scan_image_folder(image_dir).fingerprint()


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.write_text("x"), p)[1], "is not a folder"),
    (lambda p: (p.mkdir(), p)[1], "no class subfolders"),
    (lambda p: ((p / "a").mkdir(parents=True), p)[1], "no files"),
])
def test_scan_errors(tmp_path, make, fragment):
    with pytest.raises(MMDeployError, match=fragment):
        scan_image_folder(make(tmp_path / "data"))


def test_decode_once_at_native_resolution(image_dir):
    folder = scan_image_folder(image_dir)
    assert store_resolution(folder, "cifar", [16, 48]) == 32  # square CIFAR-like images: their own size
    decoded = decode_images(folder, None, "cifar", 32, workers=2)
    assert decoded.images.shape == (16, 3, 32, 32) and decoded.images.dtype == torch.uint8
    assert decoded.labels.tolist() == folder.labels and decoded.skipped == []
    png = np.array(Image.open(folder.files[0]).convert("RGB")).transpose(2, 0, 1).copy()
    assert torch.equal(decoded.images[0], torch.from_numpy(png))  # PNG is lossless: exactly the pixels


def test_decode_skips_and_counts_corrupt_files(tmp_path, image_dir):
    import shutil

    shutil.copytree(image_dir, tmp_path / "d")
    (tmp_path / "d/cat/bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (tmp_path / "d/dog/notes.txt").write_text("hello")
    folder = scan_image_folder(tmp_path / "d")
    with pytest.warns(UserWarning, match="skipped 2 unreadable files"):
        decoded = decode_images(folder, None, "cifar", 32, workers=2)
    assert len(decoded) == 16 and len(decoded.skipped) == 2
    assert decoded.labels.tolist() == [0] * 8 + [1] * 8


def test_decode_fails_when_nothing_is_readable(tmp_path):
    (tmp_path / "d/a").mkdir(parents=True)
    (tmp_path / "d/a/x.png").write_bytes(b"not a png")
    with pytest.raises(MMDeployError, match="no readable images"), warnings.catch_warnings():
        decode_images(scan_image_folder(tmp_path / "d"), None, "cifar", 32)


def test_imagenet_preprocessing_center_crops(tmp_path):
    # a 40x20 image: left half black, right half white; the central 17.5 px square is mostly both
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    (tmp_path / "d/a").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "d/a/x.png")
    folder = scan_image_folder(tmp_path / "d")
    decoded = decode_images(folder, None, "imagenet", 16)
    img = decoded.images[0].float()
    assert decoded.images.shape == (1, 3, 16, 16)
    assert img[:, :, :6].max() < 10 and img[:, :, -6:].min() > 245  # crop is centred, so both halves remain


def test_to_input_is_deterministic_and_normalized(image_dir):
    decoded = decode_images(scan_image_folder(image_dir), None, "cifar", 32)
    x = to_input(decoded.images, 24, PRE)
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32
    assert torch.equal(x, to_input(decoded.images, 24, PRE))
    raw = to_input(decoded.images, 32, PRE)
    torch.testing.assert_close(raw, (decoded.images.float() / 255 - 0.5) / 0.25)
    assert decoded.images.dtype == torch.uint8  # the stored images are not modified in place


def test_augmentation_is_seeded():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = to_input(images, 16, PRE, torch.Generator().manual_seed(1))
    b = to_input(images, 16, PRE, torch.Generator().manual_seed(1))
    c = to_input(images, 16, PRE, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 3, 16, 16)


def test_decode_for_sizes_makes_each_size_independently(tmp_path):
    """Non-square images: every size is one resize from the decoded crop, whatever other sizes are asked for."""
    from PIL import Image

    from mmdeploy.data import decode_for_sizes, decoding_key

    root = tmp_path / "imgs" / "a"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(((64, 48), (50, 70))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    folder = scan_image_folder(tmp_path / "imgs")
    assert decoding_key(folder, "imagenet") == "per-size"
    both = decode_for_sizes(folder, None, "imagenet", [16, 24])
    alone = decode_for_sizes(folder, None, "imagenet", [16])
    assert both.at(16).shape == (2, 3, 16, 16) and both.at(24).shape == (2, 3, 24, 24)
    assert torch.equal(both.at(16), alone.at(16))
