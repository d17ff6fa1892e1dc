"""The Python API: each step of the workflow as one typed function, calling the library function its command calls.

    from mmdeploy import api
    bundle = api.calibrate("model.pth", sizes=[16, 24], data="images/train", out="bundle")
    bundle = api.export(bundle, engine="ort")
    results = api.evaluate(bundle, data="images/val")

Why ``mmdeploy.api.export`` and not ``mmdeploy.export``: ``export``, ``evaluate``, ``bench`` and ``report`` are also
submodules of the package, and Python's import system rebinds ``mmdeploy.<name>`` to the submodule the first time it
is imported (which these functions themselves do), so a function of that name at the top level would stop being one.

Every function takes a :class:`~mmdeploy.bundle.Bundle` or a bundle folder, works on the folder as it is on disk,
and raises :class:`~mmdeploy.errors.MMDeployError` (a message and a hint) for what the user can fix. A bundle made
from your own ``package.module:factory`` needs that spec again as ``arch``, with the same ``arch_kwargs``
(files never choose code), or
``trust_code_from_files=True``. Heavy libraries are imported when a function is called, not with ``mmdeploy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from mmdeploy.bundle import Bundle
    from mmdeploy.engines.base import Engine
    from mmdeploy.export.parity import Tolerance
    from mmdeploy.latency.tune import BenchSummary
    from mmdeploy.progress import Progress
    from mmdeploy.report import Report
    from mmdeploy.results import AccuracyResult

PathLike = Union[str, os.PathLike]
BundleLike = Union["Bundle", str, os.PathLike]


def load(bundle: PathLike, arch: str | None = None, trust_code_from_files: bool = False, arch_kwargs: Mapping[str, object] | None = None) -> Bundle:
    """Open a bundle folder (a ``Bundle``: its sizes, artifacts and stored results; :func:`load_engine` runs one).

    A bundle made from your own ``package.module:factory`` opens only with ``arch`` (and ``arch_kwargs``) set to
    that same call, or with ``trust_code_from_files=True`` (a manifest is data, not code)."""
    from mmdeploy.bundle import Bundle
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        return Bundle.open(bundle)


def load_engine(bundle: BundleLike, engine: str, size: int, precision: str = "fp32", *, arch: str | None = None,
                trust_code_from_files: bool = False, arch_kwargs: Mapping[str, object] | None = None, **options) -> Engine:
    """The ``engine`` engine of one size of a bundle, not yet activated; a context manager mapping a preprocessed batch to
    logits: ``with mmdeploy.load_engine("bundle", "ort", 24) as run: logits = run(x)``. ``options`` are the engine's own
    (``batch``, ``device``, ``threads``, ``policy``, ...: ``mmdeploy.engines.loader``); an unknown one is refused by name."""
    from mmdeploy.engines.loader import load_engine as load_from_bundle
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        return load_from_bundle(bundle, engine, size, precision, **options)


def calibrate(
    checkpoint: PathLike,
    sizes: Sequence[int],
    data: PathLike,
    out: PathLike,
    *,
    batches: int | str | None = None,
    batch_size: int = 64,
    augment: bool = True,
    seed: int = 0,
    arch: str | None = None,
    arch_kwargs: Mapping[str, object] | None = None,
    preprocess: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    training_size: int | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
    trust_code_from_files: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """``mmdeploy calibrate``: recalibrate BatchNorm for each of ``sizes`` on the ImageFolder ``data`` and write the
    bundle ``out`` (created, or updated where sizes or inputs changed). Returns the bundle.

    ``batches`` x ``batch_size`` training images (default 200; ``batches="auto"``: until the statistics are stable, 16 to 200 batches;
    augmented unless ``augment=False``, order and augmentation from ``seed``) make each size's statistics; ``arch``,
    ``arch_kwargs`` (the factory's keyword arguments), ``preprocess``, ``mean``, ``std`` and ``training_size`` override
    what the checkpoint records; ``allow_pickle`` allows arbitrary unpickling of a checkpoint you trust."""
    from mmdeploy.calib.workflow import calibrate_to_bundle
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        calibrate_to_bundle(checkpoint, list(sizes), data, out, batches=batches, batch_size=batch_size, augment=augment, seed=seed,
                            arch=arch, preprocess=preprocess, mean=_floats(mean), std=_floats(std), training_size=training_size,
                            allow_pickle=allow_pickle, device=device, progress=progress, arch_kwargs=_dict(arch_kwargs))
    return load(out, arch, trust_code_from_files, arch_kwargs)


def export(
    bundle: BundleLike,
    engine: str = "ort",
    precisions: Sequence[str] | None = None,
    *,
    sizes: Sequence[int] | None = None,
    data: PathLike | None = None,
    out: PathLike | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    dynamic: bool = True,
    static_batch: int | None = None,
    trt_batches: Sequence[int] = (1, 32),
    trt_workspace_gb: float = 4.0,
    int8_method: str | None = None,
    int8_images: int | None = None,
    check_size: int | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, object] | None = None,
    trust_code_from_files: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """``mmdeploy export``: ONNX per size (BN folded) and dynamic, gated against PyTorch on real images, and the
    ``engine``'s files (``onnx``/``ort``: the ONNX; ``trt``: TensorRT plans; ``ov``: OpenVINO) for each of
    ``precisions`` (default fp32). Returns the bundle reopened with its new artifacts.

    ``bundle`` may be a checkpoint file: then ``sizes``, ``data`` and ``out`` make a bundle that keeps the
    checkpoint's own BN statistics at every size. ``data`` is the parity gate's images (default: the calibration
    folder); ``tolerances`` replaces the gate's default :class:`~mmdeploy.export.parity.Tolerance` per precision;
    ``check_size`` is the size (not a deployment size) the dynamic ONNX is also checked at (default: found by trying).
    If any check fails, an :class:`~mmdeploy.errors.MMDeployError` says which, and nothing is written."""
    from mmdeploy.export.from_checkpoint import bundle_for_export
    from mmdeploy.export.workflow import export_bundle
    from mmdeploy.models.trust import user_code_policy

    size_list = None if sizes is None else list(sizes)
    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        root = bundle_for_export(_root(bundle), size_list, data, out, arch=arch, progress=progress, arch_kwargs=_dict(arch_kwargs))
        export_bundle(root, engine, None if precisions is None else list(precisions), size_list, data,
                      None if tolerances is None else dict(tolerances), dynamic=dynamic, static_batch=static_batch,
                      trt_batches=tuple(trt_batches), trt_workspace_gb=trt_workspace_gb, progress=progress, int8_method=int8_method,
                      int8_images=int8_images, check_size=check_size)
    return load(root, arch, trust_code_from_files, arch_kwargs)


def evaluate(
    bundle: BundleLike,
    data: PathLike,
    *,
    engines: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    device: str | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, object] | None = None,
    trust_code_from_files: bool = False,
    progress: Progress | None = None,
) -> list[AccuracyResult]:
    """``mmdeploy eval``: top-1/top-5 on the ImageFolder ``data`` per size, for each of ``engines`` (default torch) and
    ``precisions`` (default fp32), before (``calibrated=False``) and after calibration. The results are also stored in
    the bundle (``report`` reads them). ``limit`` evaluates a fixed random subset of that many images."""
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        return evaluate_target(_root(bundle), data, _list(sizes), _list(engines), _list(precisions), batch_size=batch_size, limit=limit,
                               arch=arch, device=device, progress=progress, arch_kwargs=_dict(arch_kwargs))


def bench(
    bundle: BundleLike,
    *,
    engines: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
    warmup: int = 10,
    iters: int = 50,
    tune: bool = False,
    noise_budget_s: float = 30.0,
    arch: str | None = None,
    arch_kwargs: Mapping[str, object] | None = None,
    trust_code_from_files: bool = False,
    progress: Progress | None = None,
) -> BenchSummary:
    """``mmdeploy bench``: latency (p50/p90/p99, throughput, thread settings, interference seen) of every size x
    engine x precision the bundle can run, at each of ``batches`` (default 1 and 32); stored in the bundle.

    ``tune`` first picks ONNX Runtime's threads and spinning per size and batch by measurement. On a busy machine
    each pass is re-timed for up to ``noise_budget_s`` seconds; points still noisy have ``reliable=False``."""
    from mmdeploy.latency.tune import tune_and_bench
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        return tune_and_bench(_root(bundle), _list(engines), _list(precisions), _list(sizes), _list(batches), warmup, iters, tune=tune,
                              noise_budget_s=noise_budget_s, progress=progress)


def report(
    bundle: BundleLike,
    *,
    batch: int = 1,
    reference: str | None = None,
    tolerance: float = 0.5,
    out: PathLike | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, object] | None = None,
    trust_code_from_files: bool = False,
) -> Report:
    """``mmdeploy report``: the accuracy/latency Pareto front of the stored eval and bench results at batch ``batch``,
    latencies relative to ``reference`` ("SIZE/ENGINE/PRECISION", default torch fp32 at the training size), and the
    speed-up at iso-accuracy (within ``tolerance`` top-1 points). Writes report.json/.csv/.md and pareto.png to
    ``out`` (default: the bundle). For a CI gate, compare with :func:`mmdeploy.report.compare_reports`."""
    from mmdeploy.models.trust import user_code_policy
    from mmdeploy.report import report_bundle

    with user_code_policy(arch, trust_code_from_files, _dict(arch_kwargs)):
        rep, _ = report_bundle(_root(bundle), batch, reference, tolerance, out)
    return rep


def _root(bundle: BundleLike) -> Path:
    """A bundle's folder (the functions always work on what is on disk, never on an open bundle's stale copy)."""
    return Path(bundle) if isinstance(bundle, (str, os.PathLike)) else Path(bundle.root)


def _list(values: Sequence | None) -> list | None:
    return None if values is None else list(values)


def _dict(values: Mapping | None) -> dict | None:
    return None if values is None else dict(values)


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


__all__ = ["bench", "calibrate", "evaluate", "export", "load", "report"]
