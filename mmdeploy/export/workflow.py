"""``mmdeploy export``: bundle -> dynamic and per-size ONNX (fp32/fp16; int8 per size only), gated; optionally TensorRT plans or OpenVINO engines.

All artifacts of one call are written to temp names and checked; only if every check passes
are they moved into place and recorded in the manifest, in two steps: fp32/fp16 first, then
int8 (which calibrates, and fails for reasons of its own): an int8 failure keeps the fp32/fp16
files that passed. Unchanged inputs reuse artifacts. Which ONNX precisions an engine's precisions need is the
export plan's (export/plan.py); the engine's own files are then built by the export step its registry entry names
(export/tensorrt_step.py, export/openvino.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mmdeploy import distributed as dist
from mmdeploy.bundle import ONNX, Bundle, bundle_lock, sha256_file, temp_path_for
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.engines.registry import engine_spec
from mmdeploy.errors import MMDeployError
from mmdeploy.export.onnx import _BAKE_HINT, NO_DYNAMIC_HINT, convert_fp16, export_onnx, graph_record
from mmdeploy.export.parity import DEFAULT_TOLERANCES, ParityCheck, Tolerance, check_parity, choose_check_size, parity_images
from mmdeploy.export.plan import (
    ONNX_ONLY,
    EngineExport,
    ExportOptions,
    ExportSummary,
    artifact_key,
    check_export_engine,
    plan_export,
)
from mmdeploy.export.quantize import (
    DEFAULT_IMAGES,
    DEFAULT_METHOD,
    INT8_HINT,
    INT8_PARITY_IMAGES,
    calibration_batches,
    int8_key_extra,
    int8_settings,
    quantize_int8,
)
from mmdeploy.progress import Progress
from mmdeploy.version import __version__
from mmdeploy.writable import ensure_writable

PARITY_BATCHES = (1, 8)


@dataclass
class _Pending:
    """An artifact built under a temp name, waiting for the gate."""

    rel: str
    tmp: Path
    record: dict
    checks: list[ParityCheck] = field(default_factory=list)


@dataclass
class _OnnxPass:
    """What every artifact of one call's ONNX pass shares: the bundle, the sizes and images it is checked at, its
    settings, and the files in flight (temp files, fp32 exports that fp16 and int8 convert)."""

    bundle: Bundle
    summary: ExportSummary
    options: ExportOptions
    sizes: list[int]
    example: int  # the size the dynamic ONNX is exported at
    dyn_bn: int | None  # the BN statistics the dynamic ONNX carries (None: the source checkpoint's)
    extra: int | None  # the unseen size the dynamic ONNX is also checked at
    int8: dict | None  # the int8 settings, when int8 is exported
    images: object
    pre: object
    pending: list[_Pending] = field(default_factory=list)
    fp32_cache: dict = field(default_factory=dict)


def export_bundle(
    bundle_dir: str | Path,
    engine: str = "ort",
    precisions: list[str] | None = None,
    sizes: list[int] | None = None,
    data: str | Path | None = None,
    tolerances: dict[str, Tolerance] | None = None,
    parity_count: int = 16,
    dynamic: bool = True,
    static_batch: int | None = None,
    trt_batches: tuple[int, ...] = (1, 32),
    trt_workspace_gb: float = 4.0,
    progress: Progress | None = None,
    int8_method: str | None = None,
    int8_images: int | None = None,
    check_size: int | None = None,
) -> ExportSummary:
    """Export the bundle's ONNX (dynamic and per size), gate each against PyTorch, and build ``engine``'s files.
    ``check_size``: the unseen size the dynamic ONNX is also checked at (default: the first that the model accepts of
    example+8 and the next multiples of common patch sizes and strides). The keywords after ``tolerances`` are the
    command's flags; they travel on as one :class:`~mmdeploy.export.plan.ExportOptions`."""
    check_export_engine(engine)
    options = ExportOptions(data, {**DEFAULT_TOLERANCES, **(tolerances or {})}, parity_count, dynamic, static_batch, check_size,
                            int8_method, int8_images, tuple(trt_batches), trt_workspace_gb)
    progress = progress or Progress()
    Bundle.open(bundle_dir)  # refuse a non-bundle before the lock would create a folder
    # Rank 0 holds the bundle's lock for the whole export: temp files live in the bundle, and
    # whatever a failed export leaves is swept before the lock is released.
    with bundle_lock(bundle_dir) if dist.is_main() else contextlib.nullcontext():
        try:
            return _export_locked(bundle_dir, engine, precisions, sizes, options, progress)
        finally:
            if dist.is_main() and Bundle.is_bundle(bundle_dir):
                Bundle.open(bundle_dir).sweep()


def _export_locked(bundle_dir, engine: str, precisions: list[str] | None, sizes: list[int] | None, options: ExportOptions,
                   progress: Progress) -> ExportSummary:
    bundle = Bundle.open(bundle_dir)
    ensure_writable(bundle.root)  # before minutes of export work, not after
    planned = plan_export(engine, precisions)  # refuses what the engine does not serve here, before any work
    onnx_precisions = list(planned.onnx_precisions)  # e.g. ov reads the fp32 ONNX and applies its own precision
    spec = engine_spec(engine) if engine != ONNX_ONLY else None
    int8 = int8_settings(options.int8_method or DEFAULT_METHOD, DEFAULT_IMAGES if options.int8_images is None else options.int8_images,
                         symmetric=bool(spec and spec.int8_symmetric)) if "int8" in onnx_precisions else None
    sizes = [int(s) for s in sizes] if sizes else bundle.sizes
    for s in sizes:
        bundle.size(s)  # refuses a size the bundle lacks
    example = bundle.training_size if bundle.training_size in sizes else sizes[len(sizes) // 2]
    dyn_bn = bundle.training_size if bundle.has_size(bundle.training_size) else None
    dynamic_here = options.dynamic and any(p != "int8" for p in onnx_precisions)
    # The dynamic ONNX is also checked at a size it was not exported at, one the model accepts (patch models need multiples).
    extra = choose_check_size(bundle.build_model(dyn_bn), sizes, example, options.check_size) if dynamic_here else None
    # int8 is judged on top-1 agreement: 16 images cannot tell 95% from 85%, so it gets a larger sample.
    count = max(options.parity_count, INT8_PARITY_IMAGES) if int8 else options.parity_count
    images = parity_images(bundle, options.data, count, sizes + ([extra] if extra else []))
    run = _OnnxPass(bundle, ExportSummary(bundle.root), options, sizes, example, dyn_bn, extra, int8, images, bundle.preprocess())
    summary = run.summary
    with dist.agreed():  # rank 0 exports and gates the ONNX; the other ranks wait here for its outcome
        if dist.is_main():
            try:
                with progress.task("exporting and checking", (len(sizes) + int(options.dynamic)) * len(onnx_precisions)) as advance:
                    # int8 last, in its own step: what passed its gate before it is committed first, so an int8
                    # failure (its gate, its memory, its calibration images) leaves the fp32/fp16 files in place.
                    for step in ([p for p in onnx_precisions if p != "int8"], [p for p in onnx_precisions if p == "int8"]):
                        if not step:
                            continue
                        start = len(run.pending)
                        try:
                            for precision in step:
                                _export_precision(run, precision, advance)
                            _gate_and_commit(bundle, summary, run.pending[start:], already_written=bool(summary.written))
                        except MMDeployError as exc:
                            if "int8" in step and summary.written:  # say what the failure did not undo
                                raise MMDeployError(f"{exc.message}; kept what passed its gate before int8: {', '.join(summary.written)}", exc.hint) from exc
                            raise
            finally:
                for p in run.pending:
                    p.tmp.unlink(missing_ok=True)
                for f in run.fp32_cache.values():
                    f.unlink(missing_ok=True)
    step = spec.export_step() if spec else None
    if step:  # the engine's own files, built from the gated ONNX (on every rank: a step may spread its work over them)
        step(EngineExport(bundle if dist.is_main() else Bundle.open(bundle_dir), Path(bundle_dir), sizes, planned, options, images,
                          run.pre, progress, summary))
    return summary


def _export_precision(run: _OnnxPass, precision: str, advance) -> None:
    """Export one precision's artifacts (dynamic, then per size) under temp names and run their checks."""
    bundle, options, tol = run.bundle, run.options, run.options.tolerances[precision]
    if options.dynamic and precision != "int8":  # int8 ranges are per size: no dynamic int8 (export/quantize.py)
        pending_dyn = _export_one(run, run.dyn_bn, run.example, True, precision, "dynamic")
        if pending_dyn:
            run.pending.append(pending_dyn)  # before the gate: its temp file is removed on every path
            ref = bundle.build_model(run.dyn_bn)
            with OrtEngine(pending_dyn.tmp, run.example, precision) as engine:
                for s in run.sizes + [run.extra]:
                    pending_dyn.checks += check_parity(ref, _Sized(engine, s), run.images, s, PARITY_BATCHES, run.pre, tol, "dynamic")
    advance(int(options.dynamic))
    batches = PARITY_BATCHES if options.static_batch is None else (options.static_batch,)
    for s in run.sizes:
        p = _export_one(run, s, s, False, precision, "per-size")
        if p:
            run.pending.append(p)
            ref = bundle.build_model(s)
            with OrtEngine(p.tmp, s, precision) as engine:
                p.checks += check_parity(ref, engine, run.images, s, batches, run.pre, tol, "per-size")
        advance(1)


def _gate_and_commit(bundle: Bundle, summary: ExportSummary, pending: list[_Pending], already_written: bool = False) -> None:
    """All of ``pending`` pass their checks and move into place with one manifest commit, or none does."""
    for p in pending:
        summary.checks += p.checks
    _raise_on_failed_checks([c for p in pending for c in p.checks], already_written)
    for p in pending:
        os.replace(p.tmp, bundle.path(p.rel))
        p.record["parity"] = [c.to_dict() for c in p.checks]
        _record(bundle, p)
        summary.written.append(p.rel)
    bundle.save()  # the commit point; no sweep yet: the int8 step still needs its fp32 temp files (export_bundle sweeps at the end)


def _raise_on_failed_checks(checks: list[ParityCheck], already_written: bool = False) -> None:
    """One line naming every failed (artifact, precision, size): an engine error first (it is the likelier cause), else the numbers."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return
    unwritten = "they were not written" if already_written else "nothing was written"
    errors = {(c.artifact, c.precision, c.size): c.error for c in failed if c.error}
    if errors:
        (artifact, precision, size), error = next(iter(errors.items()))
        others = sorted({(c.artifact, c.precision, c.size) for c in failed} - {(artifact, precision, size)})
        more = f" (also failing: {', '.join(f'{a} {p} at size {s}' for a, p, s in others)})" if others else ""
        hint = f"{_BAKE_HINT}; {NO_DYNAMIC_HINT}" if all(c.artifact == "dynamic" for c in failed) else _BAKE_HINT
        raise MMDeployError(f"parity gate failed: the {artifact} {precision} ONNX could not run at size {size} ({error}){more}; "
                            f"{unwritten}", hint)
    names = ", ".join(f"{a} {p} at size {s}" for a, s, p in sorted({(c.artifact, c.size, c.precision) for c in failed}))
    hint = INT8_HINT if all(c.precision == "int8" for c in failed) else _BAKE_HINT
    if all(c.artifact == "dynamic" for c in failed):  # the per-size files passed: they can be exported alone
        hint = f"{hint}; {NO_DYNAMIC_HINT}"
    raise MMDeployError(f"parity gate failed: {names} differ from PyTorch beyond tolerance; {unwritten}", hint)


def _min_size(arch: str) -> int:
    from mmdeploy.models import arch_info

    return arch_info(arch).min_size if ":" not in arch else 1


def _export_one(run: _OnnxPass, bn_size: int | None, size: int, dynamic: bool, precision: str, variant: str) -> _Pending | None:
    """Export (or reuse) one artifact under a temp name. fp16 and int8 convert the fp32 export of the same call."""
    bundle, summary, static_batch, fp32_cache, int8 = run.bundle, run.summary, run.options.static_batch, run.fp32_cache, run.int8
    weights_sha = sha256_file(bundle.weights_file(bn_size))  # verified against the manifest, then keyed by content
    suffix = "" if precision == "fp32" else f".{precision}"
    calib = None if bn_size is None else bundle.size(bn_size).calibration.fields
    extra = str(static_batch) + (int8_key_extra(calib or {}, int8) if precision == "int8" else "")
    key = artifact_key(weights_sha, precision, variant, extra)
    old = bundle.artifact(None if dynamic else size, ONNX, precision)
    if old is not None and old.key == key and bundle.artifact_usable(old):  # a changed or garbage file is redone
        summary.reused.append(old.file)
        return None
    # A name the committed manifest does not list: the old artifact stays valid until the manifest moves on.
    rel = bundle.fresh_name(f"model.dynamic{suffix}.onnx" if dynamic else f"sizes/{size}/model{suffix}.onnx")
    model = bundle.build_model(bn_size)
    bn_set = "source checkpoint" if bn_size is None else f"calibrated for {bn_size}"
    meta = {"mmdeploy.version": __version__, "mmdeploy.size": "dynamic" if dynamic else str(size), "mmdeploy.bn_statistics": bn_set,
            "mmdeploy.calibration": calib or {}, "mmdeploy.source_sha256": bundle.source.sha256,
            "mmdeploy.arch": bundle.arch, "mmdeploy.preprocess": bundle.preprocess().to_dict(), "mmdeploy.precision": precision}
    tmp = temp_path_for(bundle.path(rel))
    try:
        fp32 = fp32_cache.get((variant, bn_size, size))
        if fp32 is None:
            fp32 = temp_path_for(bundle.path(rel + ".fp32"))
            fp32_cache[(variant, bn_size, size)] = fp32
            graph = export_onnx(model, fp32, size, dynamic_hw=dynamic, dynamic_batch=static_batch is None,
                                example_batch=static_batch or 2, metadata=meta, min_size=_min_size(bundle.arch))
        if precision == "fp16":
            graph = convert_fp16(fp32, tmp)
        elif precision == "int8":
            graph = quantize_int8(fp32, tmp, calibration_batches(calib or {}, bundle.preprocess(), size, int8["images"]), int8["method"],
                                  symmetric=int8["activations"].startswith("int8"))
        else:
            shutil.copyfile(fp32, tmp)
            graph = graph_record(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = {"path": rel, "key": key, "precision": precision, "variant": variant, "bn_statistics": bn_set, "example_size": size,
              "dynamic_batch": static_batch is None, "static_batch": static_batch, "graph": graph, **({"int8": int8} if precision == "int8" else {})}
    return _Pending(rel, tmp, record)


def _record(bundle: Bundle, p: _Pending) -> None:
    p.record["sha256"] = sha256_file(bundle.path(p.rel))
    size = None if p.record["variant"] == "dynamic" else p.record["example_size"]
    bundle.set_artifact(size, ONNX, p.record["precision"], p.record)  # also forgets the stale ort figures at that size


class _Sized:
    """The same engine reported at another size (the dynamic ONNX serves every size)."""

    def __init__(self, engine, size: int):
        self.engine, self.size, self.precision = engine, size, engine.precision

    def __call__(self, x):
        return self.engine(x)
