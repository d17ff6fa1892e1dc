"""Image folders, decoding once, and the deterministic per-size preprocessing.

An image folder is torchvision's ImageFolder layout: one subfolder per class, classes in
sorted order. Each file is decoded once into a uint8 tensor at a *store* resolution; every
target size is then made from it by a batched, antialiased resize, so many sizes cost one
decode. Preprocessing kinds:

- ``cifar``: the whole image is resized to S x S.
- ``imagenet``: resize the short side to S/0.875 and center-crop S. Equivalently: crop the
  central square of side 0.875 x short side, then resize it to S. The crop is done at decode
  time, the resize per batch.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmdeploy.classes import folder_labels
from mmdeploy.decode import CROP_FRACTION, decode_one, to_rgb8  # noqa: F401  (CROP_FRACTION, to_rgb8: still importable from here)
from mmdeploy.errors import MMDeployError

if TYPE_CHECKING:  # torch is imported where tensors are made: Preprocess checks a manifest without it (report, the gate)
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


NORMALIZATION_HINT = "mean needs finite numbers and std finite numbers > 0, one per RGB channel, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"


def normalization_problem(name: str, value) -> str:
    """What is wrong with a ``mean`` or ``std`` from any source ("" if nothing): the run config's own check."""
    from mmdeploy.config import normalization_problem as problem  # the config schema imports the engines: only when needed

    return problem(name, value)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input at a given size; recorded in every bundle."""

    kind: str = "cifar"  # "cifar" or "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.kind not in ("cifar", "imagenet"):
            raise MMDeployError(f"unknown preprocessing {self.kind!r}", "use --preprocess cifar or --preprocess imagenet")
        # A zero, NaN or infinite std (or NaN mean) gives non-finite inputs, BN statistics and a believable 10% top-1.
        problem = normalization_problem("mean", self.mean) or normalization_problem("std", self.std)
        if problem:
            raise MMDeployError(f"normalization {problem}", NORMALIZATION_HINT)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(d["kind"], tuple(d["mean"]), tuple(d["std"]))

    def inputs(self, files, size: int) -> torch.Tensor:
        """Image files -> the normalized float batch [N, 3, size, size] a model or engine takes (see :func:`load_inputs`)."""
        return load_inputs(files, size, self)


@dataclass
class ImageFolder:
    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """A content key for reuse: the sha256 of every file's bytes with its label, in order.

        File hashes come from a per-user cache keyed by path, size, mtime and inode
        (:mod:`mmdeploy.filehash`), so a rerun costs one ``stat`` per file."""
        import hashlib

        from mmdeploy.filehash import file_hashes

        try:
            digests = file_hashes(self.files)
        except OSError as exc:
            raise MMDeployError(f"cannot read {exc.filename or self.root}: {exc.strerror or exc}",
                                "check the image folder's files are readable") from None
        h = hashlib.sha256()
        for digest, y in zip(digests, self.labels):
            h.update(f"{digest}|{y}\n".encode())
        return h.hexdigest()[:16]


def scan_image_folder(root: str | Path, classes: list[str] | None = None, num_outputs: int | None = None) -> ImageFolder:
    """List an ImageFolder directory. Errors name the problem; nothing is decoded yet.

    With the model's ``classes`` (or its ``num_outputs``), labels are the model's indices of the
    folder names (:func:`mmdeploy.classes.folder_labels`); without, sorted folder order."""
    root = Path(root)
    if not root.exists():
        raise MMDeployError(f"image folder {root} does not exist", "pass --data DIR with one subfolder per class")
    if not root.is_dir():
        raise MMDeployError(f"{root} is not a folder", "pass --data DIR with one subfolder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise MMDeployError(f"image folder {root} has no class subfolders", "put images in DIR/<class>/<image>.jpg")
    files, labels = [], []
    for label, cls in zip(folder_labels(folders, classes, num_outputs, root), folders):
        for dirpath, _, names in os.walk(root / cls):
            for name in sorted(names):
                if not name.startswith("."):
                    files.append(Path(dirpath) / name)
                    labels.append(label)
    if not files:
        raise MMDeployError(f"image folder {root} has no files in its class subfolders", "put images in DIR/<class>/<image>.jpg")
    return ImageFolder(root, folders, files, labels)


@dataclass
class DecodedImages:
    """uint8 images [N, 3, R, R] at the store resolution R, with labels and what was skipped.

    ``per_size`` (when decoded for given sizes) holds [N, 3, S, S] per size S, each resized
    straight from the decoded (cropped) image; ``at(S)`` returns what to make size S from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    per_size: dict[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def at(self, size: int) -> torch.Tensor:
        return self.per_size[size] if self.per_size and size in self.per_size else self.images


def native_resolution(folder: ImageFolder, kind: str) -> int | None:
    """For ``cifar`` preprocessing of square images of one size (CIFAR itself), that size: images
    are kept as they are and each target size is one batched resize away. Else None."""
    from PIL import Image

    if kind == "cifar":
        for f in folder.files[:8]:
            try:
                with Image.open(f) as im:
                    if im.size[0] == im.size[1]:
                        return im.size[0]
            except OSError:
                continue
    return None


def store_resolution(folder: ImageFolder, kind: str, sizes: list[int]) -> int:
    """One resolution to keep every decoded image at: the native one, else the largest size."""
    return native_resolution(folder, kind) or max(sizes)


def decoding_key(folder: ImageFolder, kind: str) -> int | str:
    """How ``decode_for_sizes`` makes inputs from files, for reuse keys: the native size, or "per-size"."""
    return native_resolution(folder, kind) or "per-size"


def decode_for_sizes(folder: ImageFolder, indices: list[int] | None, kind: str, sizes: list[int], workers: int | None = None,
                     progress=None) -> DecodedImages:
    """Decode each file once and make every size from it independently of the other sizes:
    native-resolution images (one batched resize per size later), or one resize per size at
    decode time (images of other shapes, ``imagenet`` crops)."""
    native = native_resolution(folder, kind)
    if native:
        return decode_images(folder, indices, kind, native, workers, progress)
    return decode_images(folder, indices, kind, max(sizes), workers, progress, sizes=sorted(set(sizes)))


def decode_images(
    folder: ImageFolder,
    indices: list[int] | None,
    kind: str,
    store: int,
    workers: int | None = None,
    progress=None,
    sizes: list[int] | None = None,
) -> DecodedImages:
    """Decode the chosen files once, in parallel threads (PIL releases the GIL while decoding);
    with ``sizes``, also resize each straight to every size (``DecodedImages.per_size``).

    Corrupt and non-image files are skipped and listed; if none is left, it is an error.
    """
    indices = list(range(len(folder))) if indices is None else list(indices)
    workers = workers or min(8, (os.cpu_count() or 2))
    arrays, labels, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per = tuple(sizes) if sizes else None
        results = pool.map(lambda i: decode_one(folder.files[i], kind, store, per), indices, chunksize=64)
        for i, res in zip(indices, results):
            if isinstance(res, str):
                skipped.append(res)
            else:
                arrays.append(res)
                labels.append(folder.labels[i])
            if progress is not None:
                progress(1)
    if not arrays:
        raise MMDeployError(
            f"no readable images in {folder.root} ({len(skipped)} files skipped as corrupt or not images)",
            "check the folder holds JPEG/PNG files in DIR/<class>/",
        )
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable files in {folder.root}, e.g. {skipped[0]}", stacklevel=2)
    import torch

    labels_t = torch.tensor(labels, dtype=torch.long)
    if sizes:
        per_size = {s: torch.from_numpy(np.stack([a[j] for a in arrays])) for j, s in enumerate(sizes)}
        return DecodedImages(per_size[max(sizes)], labels_t, skipped, per_size)
    return DecodedImages(torch.from_numpy(np.stack(arrays)), labels_t, skipped)


def load_inputs(files, size: int, pre: Preprocess, workers: int | None = None) -> torch.Tensor:
    """Image files (in order) -> one normalized float batch [N, 3, size, size], made exactly as ``eval`` makes its inputs.

    A file that cannot be read as an image is an error here (a batch must keep one row per file given)."""
    paths = [Path(f) for f in files]
    if not paths:
        raise MMDeployError("no image files given", "pass a list of JPEG/PNG paths")
    for path in paths:
        if not path.is_file():
            raise MMDeployError(f"image {path} does not exist", "pass paths of JPEG/PNG files")
    with warnings.catch_warnings():  # an unreadable file is raised below, not warned about
        warnings.simplefilter("ignore")
        decoded = decode_for_sizes(ImageFolder(paths[0].parent, [], paths, [0] * len(paths)), None, pre.kind, [size], workers)
    if decoded.skipped:
        raise MMDeployError(f"not an image: {decoded.skipped[0]}", "pass paths of JPEG/PNG files")
    return to_input(decoded.at(size), size, pre)


def to_input(batch_u8: torch.Tensor, size: int, pre: Preprocess, augment_gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B,3,R,R] -> normalized float [B,3,S,S]; with a generator, training augmentation.

    Augmentation is the reference code's CIFAR recipe scaled to S: random crop with S/8
    zero padding and a horizontal flip, per image, vectorized.
    """
    import torch.nn.functional as F

    x = batch_u8.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if augment_gen is not None:
        x = augment_crop_flip(x, augment_gen)
    return normalize(x, pre)


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(x - mean) / std per channel on x's device, in place; x is float in [0, 1]."""
    mean, std = _normalization(pre.mean, pre.std, x.device, x.dtype)
    return x.sub_(mean).div_(std).contiguous()


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without stalling the host: a copy from pageable memory
    to a GPU waits for all queued GPU work first, one from pinned memory does not."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@functools.lru_cache(maxsize=32)
def _normalization(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as [1,C,1,1] tensors on ``device``, made once (each creation is a host-to-device copy)."""
    import torch

    return (torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1), torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1))


def augment_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with S/8 zero padding and a horizontal flip per image (calibration and training)."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = (torch.rand(b, generator=gen) < 0.5).long()
    # The draws come from the CPU generator whatever the device, so results match across devices.
    oy, ox, flip = to_device(torch.stack([oy, ox, flip]), x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)[None]
    cols = ox[:, None] + torch.arange(w, device=x.device)[None]
    cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
    idx = torch.arange(b, device=x.device)
    out = padded[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C]
    return out.permute(0, 3, 1, 2)
