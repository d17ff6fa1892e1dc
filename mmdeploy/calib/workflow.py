"""``mmdeploy calibrate``: checkpoint + image folder -> bundle with per-size calibrated weights."""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmdeploy import distributed as dist
from mmdeploy.bundle import bundle_lock, check_writable_dir, content_key
from mmdeploy.calib.batching import AUTO_CHUNK_BATCHES, all_reduce_sums, bytes_per_image, memory_chunks, parse_batches
from mmdeploy.calib.bn import BNSums, bn_layers, calibrate_bn, plan_batches
from mmdeploy.calib.convergence import Convergence
from mmdeploy.calib.writer import (
    DEFAULT_TRAINING_SIZE,
    MeasuredSizes,
    bundle_preprocess,
    default_training_size,
    open_same_source,
    write_calibration,
)
from mmdeploy.data import (
    NORMALIZATION_HINT,
    Preprocess,
    decode_for_sizes,
    decoding_key,
    normalization_problem,
    scan_image_folder,
)
from mmdeploy.errors import MMDeployError
from mmdeploy.models import LoadedCheckpoint, arch_info, load_checkpoint
from mmdeploy.models.fit import check_model_fits, forward_error
from mmdeploy.progress import Progress

__all__ = ["DEFAULT_TRAINING_SIZE", "CalibrationSummary", "calibrate_to_bundle", "resolve_preprocess", "validate_sizes"]


@dataclass
class CalibrationSummary:
    bundle: Path
    sizes: list[int]
    reused: list[int]
    images: int
    skipped: int
    bn_layers: int
    records: dict[int, dict] = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)  # in force: kind, mean, std (what eval, export and bench use)
    training_size: int | None = None  # in force: the reports' reference point
    convergence: dict | None = None  # how the statistics moved as batches were added (see mmdeploy.calib.convergence)


def validate_sizes(sizes: list, arch: str, model: torch.nn.Module | None = None) -> list[int]:
    """Sizes must be positive integers the network can take; the error names the smallest that works."""
    if not sizes:
        raise MMDeployError("no --size given", "pass one or more, e.g. --size 16 --size 24")
    out = []
    for s in sizes:
        try:
            value = int(str(s))
        except ValueError:
            raise MMDeployError(f"size {s!r} is not an integer", "sizes are input sides in pixels, e.g. --size 24") from None
        if value <= 0:
            raise MMDeployError(f"size {value} is not a positive integer", "sizes are input sides in pixels, e.g. --size 24")
        out.append(value)
    if ":" in arch:  # your own code: probe each size (a patch model takes only multiples of its patch)
        for size in sorted(set(out)):
            error = forward_error(model, size) if model is not None else ""
            if error:
                smallest = smallest_working_size(model)
                if smallest is not None and size < smallest:
                    raise MMDeployError(f"size {size} is too small for {arch}: the smallest size that works is {smallest}", f"use --size {smallest} or larger")
                raise MMDeployError(f"size {size} does not work with {arch}: {error}", "use sizes your model accepts (a patch model: multiples of its patch size)")
        return sorted(set(out))
    smallest = arch_info(arch).min_size
    too_small = [s for s in out if s < smallest]
    if too_small:
        raise MMDeployError(f"size {too_small[0]} is too small for {arch}: the smallest size that works is {smallest}", f"use --size {smallest} or larger")
    return sorted(set(out))


def smallest_working_size(model: torch.nn.Module | None, limit: int = 1024) -> int | None:
    """Probe a user architecture for the smallest input side its forward pass accepts (None: no power of two up to
    ``limit`` works, e.g. a patch size that is not one)."""
    if model is None:
        return 1

    def ok(s: int) -> bool:
        return not forward_error(model, s)

    if ok(1):
        return 1
    hi = 2
    while hi <= limit and not ok(hi):
        hi *= 2
    if hi > limit:
        return None
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def resolve_preprocess(ckpt: LoadedCheckpoint, kind: str | None = None, mean=None, std=None) -> Preprocess:
    """The caller's --preprocess/--mean/--std, else the checkpoint's ``mmdeploy.preprocess`` metadata, else the defaults.
    A bad mean or std is refused naming where it came from (the flag or the checkpoint)."""
    card = ckpt.meta.get("mmdeploy", {}).get("preprocess", {}) if isinstance(ckpt.meta.get("mmdeploy"), dict) else {}
    in_file = f"the 'mmdeploy' preprocess entry of {ckpt.path}"
    if not isinstance(card, dict):
        raise MMDeployError(f"{in_file} is a {type(card).__name__}, not an object", "it must be like {'kind': 'cifar', 'mean': [...], 'std': [...]}")
    values = {}
    for name, given in (("mean", mean), ("std", std)):
        value, origin = (list(given), f"--{name}") if given else (card[name], in_file) if name in card else (None, "")
        problem = normalization_problem(name, value) if origin else ""
        if problem:
            raise MMDeployError(f"{origin}: {problem}", NORMALIZATION_HINT)
        if origin:
            values[name] = tuple(value)
    return Preprocess(kind or card.get("kind", ckpt.dataset), **values)


def _holding_out_lock(fn):
    """Rank 0 holds ``--out``'s writer lock for the whole calibration: what to reuse is decided from
    the manifest as it is under the lock, so a second `calibrate` (or `run`) of the same new folder
    waits, then reuses the first one's sizes instead of recalibrating and sweeping files a reader
    of the first one is using. A folder only this call made is removed again if it fails."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = signature.bind(*args, **kwargs).arguments["out"]
        with dist.agreed():  # a folder that cannot become a bundle fails before the lock would make it
            if dist.is_main():
                check_writable_dir(Path(out))
        with bundle_lock(out) if dist.is_main() else contextlib.nullcontext():
            return fn(*args, **kwargs)

    return wrapper


@_holding_out_lock
def calibrate_to_bundle(
    checkpoint: str | Path,
    sizes: list,
    data: str | Path,
    out: str | Path,
    batches: int | str | None = None,
    batch_size: int = 64,
    augment: bool = True,
    seed: int = 0,
    arch: str | None = None,
    dataset: str | None = None,
    preprocess: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    training_size: int | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    progress: Progress | None = None,
    recalibrate: bool = True,
    arch_kwargs: dict | None = None,
) -> CalibrationSummary:
    """Calibrate BN for each size and write the bundle. ``recalibrate=False`` keeps the
    checkpoint's own statistics for every size (``mmdeploy export CKPT``). ``arch_kwargs``: the
    factory's keyword arguments (``--arch-kwargs``), recorded in the manifest. ``batches="auto"`` stops once the
    statistics are stable (:class:`mmdeploy.calib.convergence.StoppingRule`), after 16 to 200 batches; a number runs
    exactly that many; None (the default) is 200."""
    progress = progress or Progress()
    out = Path(out)
    batches, rule = parse_batches(batches, dist.active())
    if batch_size <= 1:
        raise MMDeployError("--batch-size must be >= 2", "BN statistics need at least two images per batch")
    if rule is not None and dist.active():
        raise MMDeployError("--batches auto runs in one process: under torch.distributed each rank sees only its share of the batches",
                            "give --batches a number, e.g. the count a single-process auto run recorded")
    with dist.agreed():  # a rank that cannot read the checkpoint or the data stops every rank
        ckpt = load_checkpoint(checkpoint, arch=arch, dataset=dataset, allow_pickle=allow_pickle, arch_kwargs=arch_kwargs)
        model = ckpt.build()
        sizes = validate_sizes(sizes, ckpt.arch, model)
        pre = resolve_preprocess(ckpt, preprocess, mean, std)
        if dist.is_main():  # rank 0 alone reads and writes --out
            check_writable_dir(out)
        folder = scan_image_folder(data)
        # Before any work: classes against the data, activations against memory (export CKPT runs batches up to 8).
        check_model_fits(model, sizes, batch_size if recalibrate else 8, device, len(folder.classes), folder.root)
        # Another checkpoint, arch or arch kwargs: start over; the old bundle's files are removed.
        existing = open_same_source(out, ckpt) if dist.is_main() else None
        if existing is not None:
            pre = bundle_preprocess(existing, pre, explicit=bool(preprocess or mean or std))
        in_force_size = training_size or (existing.training_size if existing is not None else default_training_size(ckpt))
        if existing is None and dist.is_main():
            _warn_defaults_for_user_arch(ckpt, pre, bool(preprocess or mean or std), in_force_size, bool(training_size))
        # How inputs are made from files (native resolution + batched resize, or one resize per
        # size at decode time) changes the result, so it is part of every size's key.
        store = decoding_key(folder, pre.kind)
        settings = {"batches": batches, "batch_size": batch_size, "augment": augment, "seed": seed, "preprocess": pre.to_dict(),
                    "store_resolution": store, "method": "exact-sums-v1" if recalibrate else "none: checkpoint statistics"}
        if rule is not None and recalibrate:  # only then: keys of fixed batch counts stay as they were
            settings["stopping"] = rule.describe()
        data_key = folder.fingerprint()
        keys = {s: content_key({"ckpt": ckpt.sha256, "data": data_key, "size": s, **settings}) for s in sizes}
        reused = [s for s in sizes if existing is not None and existing.has_size(s) and existing.size(s).calibration.key == keys[s]
                  and existing.file_ok(existing.size(s).weights, existing.size(s).weights_sha256)]
    # Rank 0's view of --out decides what to reuse and the preprocessing; every rank must see the same images.
    main_data_key, reused, pre_dict = dist.broadcast_object((data_key, reused, pre.to_dict()))
    pre = Preprocess.from_dict(pre_dict)
    todo = [s for s in sizes if s not in reused]

    plan = plan_batches(len(folder), batch_size, batches, seed)
    mine = dist.shard(list(enumerate(plan)))  # whole batches per rank: the sums stay exact
    n_layers = len(bn_layers(model))
    if n_layers == 0:
        warnings.warn(f"{ckpt.arch} has no BatchNorm layers: calibration is a no-op, weights are copied as they are", stacklevel=2)
    sums: dict[int, dict[str, BNSums]] = {s: {} for s in todo}
    images_used = n_skipped = 0
    layers = bn_layers(model)
    # One process sees every batch in order: it can follow the statistics as they settle (and stop on them).
    convergence = Convergence([n for n, _ in layers], [m.num_features for _, m in layers], todo, rule) if not dist.active() else None
    if todo and n_layers and recalibrate:
        with dist.agreed():  # the per-rank work; a rank that fails here (decode, out of memory) stops every rank
            if data_key != main_data_key:
                raise MMDeployError(f"{folder.root} holds other images on rank {dist.rank()} than on rank 0",
                                    "give every rank the same --data (a shared folder, or identical copies)")
            # Decode and calibrate in chunks of whole batches that fit a memory budget (ImageNet-scale
            # calibration at many sizes would not fit at once); sums add up exactly across chunks.
            skipped: list[str] = []
            model.to(device)
            title = f"calibrating BN at sizes {', '.join(map(str, todo))}" + (" (auto: stops once stable)" if rule else "")
            with progress.task(title, sum(len(b) for _, b in mine) * len(todo), unit="images") as advance:
                # auto decodes a few batches at a time: images after the stop are never decoded
                for chunk in memory_chunks(mine, bytes_per_image(folder, pre.kind, todo), max_batches=AUTO_CHUNK_BATCHES if rule else None):
                    wanted = sorted({i for _, b in chunk for i in b})
                    decoded, chunk_skipped = _decode_own_images(folder, wanted, pre.kind, todo, Progress())
                    skipped += chunk_skipped
                    # Map file indices to rows of the decoded tensor (skipped files drop out of their batch).
                    ok_files = [i for i in wanted if not any(s.startswith(f"{folder.files[i]}:") for s in chunk_skipped)] if chunk_skipped else wanted
                    row = {f: r for r, f in enumerate(ok_files)}
                    batches_rows = [(bi, torch.tensor([row[i] for i in b if i in row], dtype=torch.long)) for bi, b in chunk]
                    batches_rows = [(bi, r) for bi, r in batches_rows if len(r) >= 2]
                    images = (decoded.per_size or decoded.images) if decoded else torch.empty(0, dtype=torch.uint8)
                    part = calibrate_bn(model, images, batches_rows, todo, pre, augment, seed, device, advance, convergence)
                    ran = set(convergence.batches) if convergence is not None else {bi for bi, _ in batches_rows}
                    images_used += sum(len(r) for bi, r in batches_rows if bi in ran)
                    sums = part if not any(sums.values()) else {sz: {n: sums[sz][n].plus(part[sz][n]) for n in part[sz]} for sz in part}
                    if convergence is not None and convergence.stopped:
                        break
                    advance(sum(len(b) for bi, b in chunk if bi not in dict(batches_rows)) * len(todo))  # batches with < 2 readable images
            model.cpu()
        # A rank with no batches (more ranks than batches) adds zeros: every rank takes part.
        sums, images_used, n_skipped = all_reduce_sums(sums, model, images_used, len(skipped))
        if images_used < 2:
            raise MMDeployError(f"only {images_used} readable calibration images in {folder.root} ({n_skipped} files skipped as unreadable)",
                                "give --data a folder with more images")

    summary = CalibrationSummary(out, sizes, reused, images_used, n_skipped, n_layers, preprocess=pre.to_dict(), training_size=in_force_size)
    batches_used = len(plan)
    if convergence is not None and convergence.trace:
        summary.convergence = convergence.summary()
        batches_used = summary.convergence["batches"] if rule else batches_used
    measured = MeasuredSizes(todo, sums, keys, settings, folder.root, data_key, batches_used, images_used, n_skipped, summary.convergence)
    with dist.agreed():  # every rank learns whether rank 0 published the bundle
        if dist.is_main():
            summary.records.update(write_calibration(out, ckpt, model, pre, bool(preprocess or mean or std), training_size, measured))
    return summary


def _warn_defaults_for_user_arch(ckpt: LoadedCheckpoint, pre: Preprocess, pre_given: bool, size: int, size_given: bool) -> None:
    """Your own architecture with nothing saying how it was trained gets the defaults of its dataset (ImageNet unless the
    factory sets ``mmdeploy_dataset``): say so in one line, since a CIFAR model on ImageNet preprocessing loses points silently."""
    if ":" not in ckpt.arch:
        return  # a registered architecture's defaults are its own
    mm = ckpt.meta.get("mmdeploy") if isinstance(ckpt.meta.get("mmdeploy"), dict) else {}
    declared = hasattr(arch_info(ckpt.arch).factory, "mmdeploy_dataset")
    defaulted = []  # (what is used, the flags that set it)
    if not (pre_given or declared or mm.get("preprocess")):
        defaulted.append((f"{pre.kind} preprocessing (mean {_numbers(pre.mean)}, std {_numbers(pre.std)})", "--preprocess/--mean/--std"))
    if not (size_given or mm.get("training_size")):
        defaulted.append((f"training size {size}", "--train-size"))
    if defaulted:
        used, flags = (" and ".join(part) for part in zip(*defaulted))
        warnings.warn(f"{ckpt.arch} is your own architecture and neither this command nor the checkpoint says how it was trained: "
                      f"using {used} by default; pass {flags} if it was trained otherwise", stacklevel=3)


def _numbers(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _decode_own_images(folder, indices: list[int], kind: str, sizes: list[int], progress: Progress):
    """Decode this rank's images: (decoded or None, skipped file descriptions).

    Under torch.distributed a rank whose every file is unreadable skips them all, as one
    process would; whether enough images are left is decided over all ranks.
    """
    if not indices:
        return None, []
    with progress.task(f"decoding {len(indices)} images", len(indices)) as advance:
        try:
            decoded = decode_for_sizes(folder, indices, kind, sizes, progress=advance)
        except MMDeployError:
            if not dist.active():
                raise
            return None, [f"{folder.files[i]}: unreadable" for i in indices]
    return decoded, decoded.skipped
