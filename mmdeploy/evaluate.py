"""Top-1/top-5 accuracy of many (size, engine, precision) points in one pass over decoded images."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdeploy import distributed as dist
from mmdeploy.bundle.lock import reading_bundle
from mmdeploy.data import Preprocess, decode_for_sizes, scan_image_folder, to_input
from mmdeploy.errors import MMDeployError
from mmdeploy.progress import Progress
from mmdeploy.results import AccuracyResult
from mmdeploy.stats import pack_correct


@dataclass
class EvalTarget:
    """One thing to measure: a size and a factory for the engine that runs it."""

    size: int
    engine: str
    precision: str
    calibrated: bool
    make_engine: Callable  # () -> Engine (context manager)


def measure_accuracy(
    targets: list[EvalTarget],
    data: str | Path,
    preprocess: Preprocess,
    batch_size: int = 256,
    chunk: int = 4096,
    limit: int | None = None,
    progress: Progress | None = None,
    classes: list[str] | None = None,
    num_outputs: int | None = None,
) -> list[AccuracyResult]:
    """Decode each image once per chunk, then run every target on it. Counts all-reduce across ranks.

    Labels are the model's indices of the folder names (``classes``/``num_outputs``, see
    :func:`mmdeploy.classes.folder_labels`)."""
    progress = progress or Progress()
    folder = scan_image_folder(data, classes, num_outputs)
    indices = list(range(len(folder)))
    if limit:
        gen = torch.Generator().manual_seed(0)  # a fixed, class-balanced-in-expectation subset
        indices = sorted(torch.randperm(len(folder), generator=gen)[:limit].tolist())
    all_indices = indices
    position = {index: p for p, index in enumerate(indices)}  # where each image's result goes, the same on every rank
    hits = torch.zeros(len(targets), len(indices), dtype=torch.int32)  # per target and image: top-1 right (1) or not
    seen = torch.zeros(len(indices), dtype=torch.int32)  # the images that were decoded (unreadable files are left out)
    indices = dist.shard(indices)
    sizes = sorted({t.size for t in targets})
    counts = torch.zeros(len(targets), 3, dtype=torch.float64)  # top1, top5, n
    with dist.agreed():  # a rank that fails (an engine, out of memory) stops every rank before the all-reduce
        engines = [t.make_engine() for t in targets]
        skipped = 0
        try:
            for e in engines:
                e.__enter__()
            with progress.task(f"evaluating {len(targets)} points on {len(indices)} images", len(indices) * len(targets)) as advance:
                for start in range(0, len(indices), chunk):
                    part = indices[start : start + chunk]
                    try:
                        decoded = decode_for_sizes(folder, part, preprocess.kind, sizes)
                    except MMDeployError:
                        skipped += len(part)
                        continue
                    skipped += len(decoded.skipped)
                    unreadable = {s.rsplit(": ", 1)[0] for s in decoded.skipped}
                    where = torch.tensor([position[i] for i in part if str(folder.files[i]) not in unreadable], dtype=torch.long)
                    seen[where] = 1
                    for ti, (t, engine) in enumerate(zip(targets, engines)):
                        for b in range(0, len(decoded), batch_size):
                            x = to_input(decoded.at(t.size)[b : b + batch_size], t.size, preprocess)
                            logits = engine(x)
                            y = decoded.labels[b : b + batch_size]
                            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
                            hits[ti, where[b : b + batch_size]] = (top5[:, 0] == y).to(torch.int32)
                            counts[ti, 0] += (top5[:, 0] == y).sum().item()
                            counts[ti, 1] += (top5 == y[:, None]).any(1).sum().item()
                            counts[ti, 2] += len(y)
                            advance(len(y))
        finally:
            for e in engines:
                e.__exit__(None, None, None)
    counts = dist.all_reduce_sum(counts)  # every rank takes part, also one with no images
    hits, seen = dist.all_reduce_sum(hits), dist.all_reduce_sum(seen)  # each image was scored by one rank only
    if counts[:, 2].min().item() == 0:  # the same on every rank, so all of them take part in this sum
        skipped = int(dist.all_reduce_sum(torch.tensor([skipped], dtype=torch.float64)).item())
        raise MMDeployError(f"no readable images in {folder.root} ({skipped} skipped)", "check the folder holds JPEG/PNG files in DIR/<class>/")
    evaluated = seen.nonzero().flatten()
    image_set = _image_set(folder.fingerprint(), [all_indices[p] for p in evaluated.tolist()])
    return [
        AccuracyResult(t.size, t.engine, t.precision, 100.0 * c[0].item() / c[2].item(), 100.0 * c[1].item() / c[2].item(), int(c[2].item()), t.calibrated,
                       correct=pack_correct(h[evaluated].tolist()), image_set=image_set)
        for t, c, h in zip(targets, counts, hits)
    ]


def _image_set(folder_fingerprint: str, indices: list[int]) -> str:
    """Which images were scored, in which order: the folder's content key and the chosen files' positions in it.
    Two points with the same key have per-image results that line up image by image (a paired comparison)."""
    import hashlib

    return hashlib.sha256(f"{folder_fingerprint}|{','.join(map(str, indices))}".encode()).hexdigest()[:16]



@reading_bundle("target")  # no writer sweeps what it reads; results merge under the lock
def evaluate_target(
    target: str | Path,
    data: str | Path,
    sizes: list | None = None,
    engines: list[str] | None = None,
    precisions: list[str] | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    arch: str | None = None,
    allow_pickle: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
    preprocess: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    arch_kwargs: dict | None = None,
) -> list[AccuracyResult]:
    """Accuracy of a checkpoint (its own BN statistics) or of a bundle: before and after
    calibration, and of each deployed artifact requested. Bundle results go into its manifest.

    ``preprocess``/``mean``/``std`` apply to a checkpoint; a bundle uses the preprocessing it was calibrated with."""
    from mmdeploy.bundle import Bundle
    from mmdeploy.classes import bundle_label_space, checkpoint_label_space
    from mmdeploy.engines import check_choices, serves, torch_runs
    from mmdeploy.engines.loader import load_engine
    from mmdeploy.engines.registry import names_serving
    from mmdeploy.engines.torch_engine import TorchEngine
    from mmdeploy.latency.bench import has_artifact
    from mmdeploy.writable import ensure_writable

    check_choices(engines, precisions)
    for prec in precisions or []:  # a precision no chosen engine serves would be measured by nothing, silently
        if not any(serves(name, prec) for name in engines or ["torch"]):
            servers = names_serving(prec)
            raise MMDeployError(f"precision {prec} is served by none of the engines {', '.join(engines or ['torch'])}",
                                f"add --engine {' or --engine '.join(servers)}")
    if batch_size < 1 or (limit is not None and limit < 1):
        raise MMDeployError("--batch-size and --limit must be >= 1", "e.g. --batch-size 256 --limit 1000")
    targets: list[EvalTarget] = []
    if Path(target).is_dir() and not Bundle.is_bundle(target):
        Bundle.open(target)  # a folder is only ever a bundle: say it is not one (a checkpoint is a file)
    if Bundle.is_bundle(target):
        if preprocess or mean or std:
            raise MMDeployError("a bundle is evaluated with the preprocessing it was calibrated with",
                                "leave out --preprocess/--mean/--std (they are for evaluating a checkpoint)")
        bundle = Bundle.open(target)
        if dist.is_main():
            ensure_writable(bundle.root)  # results go into the manifest: fail before measuring, not after
        chosen = [int(s) for s in sizes] if sizes else bundle.sizes
        for s in chosen:
            bundle.size(s)  # refuses a size the bundle lacks
        pre = bundle.preprocess()
        label_space = bundle_label_space(bundle.source)
        source = bundle.build_model(None)
        _check_fits(source, chosen, batch_size, device)
        for s in chosen:
            targets.append(EvalTarget(s, "torch", "fp32", False, lambda s=s: TorchEngine(source, s, device=device)))
            for name in engines or ["torch"]:
                for prec in precisions or ["fp32"]:
                    if not serves(name, prec) or (name == "torch" and not torch_runs(prec)):
                        continue
                    if name != "torch" and not has_artifact(bundle, name, s, prec):  # e.g. a size whose INT8 failed its gate
                        warnings.warn(f"{name} {prec} at size {s} is not exported in {bundle.root}; skipped", stacklevel=2)
                        continue
                    targets.append(EvalTarget(s, name, prec, True, lambda s=s, n=name, p=prec: load_engine(bundle, n, s, p, **({"device": device} if n == "torch" else {}))))
    else:
        from mmdeploy.calib.workflow import resolve_preprocess, validate_sizes
        from mmdeploy.models import load_checkpoint

        ckpt = load_checkpoint(target, arch=arch, allow_pickle=allow_pickle, arch_kwargs=arch_kwargs)
        model = ckpt.build()
        if not sizes:
            raise MMDeployError("evaluating a checkpoint needs --size", "pass e.g. --size 32, or evaluate a bundle")
        if set(engines or ["torch"]) != {"torch"} or set(precisions or ["fp32"]) != {"fp32"}:
            raise MMDeployError("a checkpoint is evaluated with the torch engine in fp32 only (its own BN statistics)",
                                "calibrate and export it to a bundle (`mmdeploy calibrate`, `mmdeploy export`) to evaluate other engines")
        pre = resolve_preprocess(ckpt, preprocess, mean, std)
        label_space = checkpoint_label_space(ckpt)
        scan_image_folder(data, *label_space)  # a folder set that cannot be mapped fails before any work
        sizes = validate_sizes(sizes, ckpt.arch, model)
        _check_fits(model, sizes, batch_size, device)
        for s in sizes:
            targets.append(EvalTarget(s, "torch", "fp32", False, lambda s=s: TorchEngine(model, s, device=device)))
        bundle = None
    results = measure_accuracy(targets, data, pre, batch_size=batch_size, limit=limit, progress=progress, classes=label_space[0],
                               num_outputs=label_space[1])
    with dist.agreed():  # every rank learns whether rank 0 saved the results
        if bundle is not None and dist.is_main():
            folder_key = scan_image_folder(data, *label_space).fingerprint()
            # Read-modify-write under the lock: a concurrent bench keeps its results; a result whose
            # weights or artifact changed meanwhile (a concurrent calibrate or export) is dropped.
            with Bundle.update(target) as current:
                for r in results:
                    if current.has_size(r.size) and current.point_fingerprint(r.key) == bundle.point_fingerprint(r.key):
                        current.record_accuracy(r, str(data), folder_key)
    return results


def _check_fits(model, sizes: list[int], batch_size: int, device: str | None) -> None:
    """Sizes whose activations cannot fit are refused before any work (the folder's classes are
    checked against the model's when the folder is scanned with its label space)."""
    from mmdeploy.models.fit import check_model_fits

    check_model_fits(model, sizes, batch_size, device or ("cuda" if _cuda() else "cpu"))


def _cuda() -> bool:
    return torch.cuda.is_available()
