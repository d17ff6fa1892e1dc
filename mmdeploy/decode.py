"""One image file -> 8-bit RGB arrays: decoding (the JPEG decoder's free downscaling), the ``imagenet`` center crop,
and the resize to the store resolution or to each size. :mod:`mmdeploy.data` runs it over folders in threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CROP_FRACTION = 0.875  # imagenet preprocessing: resize the short side to S / 0.875, center-crop S

__all__ = ["CROP_FRACTION", "decode_one", "to_rgb8"]


def decode_one(path: Path, kind: str, store: int | None, sizes: tuple[int, ...] | None = None):
    """One file -> uint8 [3, R, R] at ``store`` (its largest side when None), or with ``sizes`` one [3, S, S] array per
    size, each resized straight from the decoded (``imagenet``: center-cropped) image; a description string when the
    file cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if store is not None and im.format == "JPEG":
                im.draft("RGB", (store, store))  # let the JPEG decoder downscale big images for free
            im = to_rgb8(im)
            w, h = im.size
            if kind == "imagenet":
                side = max(1, round(min(w, h) * CROP_FRACTION))
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
            if sizes:  # one antialiased resize per size, from the decoded crop: no size depends on another
                return [np.asarray(im if im.size == (s, s) else im.resize((s, s), Image.BILINEAR, reducing_gap=None), dtype=np.uint8)
                        .transpose(2, 0, 1).copy() for s in sizes]
            target = store or max(im.size)
            if im.size != (target, target):
                im = im.resize((target, target), Image.BILINEAR, reducing_gap=None)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"{path}: {type(exc).__name__}"


def to_rgb8(im):
    """Any PIL image as 8-bit RGB, with the full range of its samples mapped onto 0..255.

    PIL's own ``convert("RGB")`` clips 16-bit and 32-bit samples at 255 (a 16-bit PNG comes out
    nearly white): those are scaled here instead. 16-bit modes divide by 257 (65535 -> 255);
    ``I`` (how PIL may open a 16-bit grayscale PNG) and ``F`` are scaled by the range their
    values show: up to 1.0 (floats), 255, or 65535. Palette, LA, RGBA and CMYK images use PIL's
    conversions (alpha is dropped, as torchvision's loader does)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if im.mode.startswith("I;16"):
            scale = 255.0 / 65535.0
        elif im.mode == "F" and top <= 1.0:
            scale = 255.0
        else:
            scale = 1.0 if top <= 255 else 255.0 / 65535.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")  # 2-D uint8: mode L
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    return im if im.mode == "RGB" else im.convert("RGB")
