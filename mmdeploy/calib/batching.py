"""The calibration's batches: ``--batches`` parsed, batches grouped into chunks whose decoded images fit a memory
budget, and the sums of every rank added up under torch.distributed."""

from __future__ import annotations

import torch

from mmdeploy import distributed as dist
from mmdeploy.calib.bn import BNSums, bn_layers
from mmdeploy.calib.convergence import AUTO, AUTO_MAX_BATCHES, StoppingRule
from mmdeploy.data import native_resolution
from mmdeploy.errors import MMDeployError

__all__ = ["AUTO_CHUNK_BATCHES", "CHUNK_BYTES", "all_reduce_sums", "bytes_per_image", "memory_chunks", "parse_batches"]


CHUNK_BYTES = 1 << 30  # decoded uint8 images held at once during calibration
AUTO_CHUNK_BATCHES = 8  # batches decoded at once under --batches auto


def parse_batches(batches, distributed: bool = False) -> tuple[int, StoppingRule | None]:
    """``--batches``: a positive count (exactly that many batches), or ``auto`` (16 to 200 batches, stopping once stable).
    None (not given) is the reference code's fixed 200: at its 1% tolerance auto's variances still differ from a
    calibration twice as long by up to 5% (resnet50 at 160 px, ``benchmarks/bench_auto_stop.py``), so it is opt-in.
    ``distributed``: under torch.distributed no rank sees every batch in order, so an explicit auto is refused there."""
    if batches is None:
        return AUTO_MAX_BATCHES, None
    if isinstance(batches, str) and batches.strip().lower() == AUTO:
        return AUTO_MAX_BATCHES, StoppingRule()
    try:
        count = int(str(batches).strip()) if not isinstance(batches, bool) else None
    except ValueError:
        count = None
    if count is None or count <= 0:
        raise MMDeployError(f"--batches {batches!r} is neither a positive integer nor auto",
                            "e.g. --batches 200 (the reference code's count) or --batches auto (stop once the statistics are stable)")
    return count, None


def bytes_per_image(folder, kind: str, sizes: list[int]) -> int:
    native = native_resolution(folder, kind)
    return 3 * (native * native if native else sum(s * s for s in sizes))


def memory_chunks(batches: list, image_bytes: int, budget: int | None = None, max_batches: int | None = None) -> list[list]:
    """Consecutive whole batches, at most ``budget`` bytes of decoded images (and ``max_batches`` batches) per chunk
    (at least one batch). No batches gives one empty chunk, so a rank without work still returns (zero) sums."""
    per_chunk = max(1, (CHUNK_BYTES if budget is None else budget) // max(1, image_bytes))
    chunks, current, n = [], [], 0
    for item in batches:
        if current and (n + len(item[1]) > per_chunk or (max_batches and len(current) >= max_batches)):
            chunks.append(current)
            current, n = [], 0
        current.append(item)
        n += len(item[1])
    return chunks + [current] if current or not chunks else chunks


def all_reduce_sums(sums: dict[int, dict[str, BNSums]], model, images: int, skipped: int) -> tuple[dict[int, dict[str, BNSums]], int, int]:
    """Add every rank's sums, images used and files skipped (one flat float64 tensor, one
    all-reduce); exact because batches are whole per rank and counts are small integers."""
    if not dist.active():
        return sums, images, skipped
    names = [n for n, _ in bn_layers(model)]
    flat = torch.cat([torch.tensor([images, skipped], dtype=torch.float64)]
                     + [torch.cat([torch.tensor([sums[s][n].count], dtype=torch.float64), sums[s][n].sum, sums[s][n].sumsq]) for s in sorted(sums) for n in names])
    flat = dist.all_reduce_sum(flat)
    images, skipped = int(flat[0].item()), int(flat[1].item())
    out, pos = {}, 2
    for s in sorted(sums):
        out[s] = {}
        for n in names:
            c = sums[s][n].sum.numel()
            out[s][n] = BNSums(flat[pos].item(), flat[pos + 1 : pos + 1 + c].clone(), flat[pos + 1 + c : pos + 1 + 2 * c].clone())
            pos += 1 + 2 * c
    return out, images, skipped
