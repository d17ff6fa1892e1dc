"""Training and validation batches made on the device from the decoded uint8 images, and top-1 on the validation set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmdeploy.data import DecodedImages, Preprocess, augment_crop_flip, decode_images, normalize, scan_image_folder, store_resolution
from mmdeploy.errors import MMDeployError
from mmdeploy.train.regime import Regime


def make_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor,
    size: int,
    duplicates: int,
    pre: Preprocess,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 store -> a normalized training batch of len(rows) x duplicates inputs at ``size``.

    The resize is deterministic, so it is done once per image before the copies are made; each
    copy then gets its own crop and flip.
    """
    rows = rows.to(images.device)
    x = images.index_select(0, rows).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = labels.index_select(0, rows)
    if duplicates > 1:
        x, y = x.repeat_interleave(duplicates, 0), y.repeat_interleave(duplicates, 0)
    if gen is not None:
        x = augment_crop_flip(x, gen)
    return normalize(x, pre), y


@torch.no_grad()
def val_accuracy(model, val_set: DecodedImages, regime: Regime, pre, memory_format, autocast, batch: int = 256) -> float:
    """Top-1 (%) at the regime's evaluation size (base size; the fixed size for ``fixed``), eval mode."""
    size = regime.sizes[0].size if regime.kind == "fixed" else regime.base_size
    model.eval()
    hits = torch.zeros((), dtype=torch.long, device=val_set.images.device)
    try:
        for start in range(0, len(val_set), batch):
            rows = torch.arange(start, min(start + batch, len(val_set)))
            x, y = make_batch(val_set.images, val_set.labels, rows, size, 1, pre, None)
            with autocast():
                hits += (model(x.contiguous(memory_format=memory_format)).argmax(1) == y).sum()
    finally:
        model.train()
    return 100.0 * hits.item() / len(val_set)


def decode_val(val, classes, pre, regime, workers, progress) -> DecodedImages | None:
    if val is None:
        return None
    folder = scan_image_folder(val)
    if folder.classes != classes:
        raise MMDeployError(f"--val {val} has classes {folder.classes[:5]}..., not the training classes {classes[:5]}...",
                            "the validation folder needs the same class subfolders as --data")
    size = regime.sizes[0].size if regime.kind == "fixed" else regime.base_size
    with progress.task(f"decoding {len(folder)} validation images", len(folder)) as advance:
        return decode_images(folder, None, pre.kind, store_resolution(folder, pre.kind, [size]), workers, progress=advance)

