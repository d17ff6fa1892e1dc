"""``mmdeploy export``: bundle -> dynamic and per-size ONNX (fp32/fp16; int8 per size only), gated; optionally TensorRT plans or OpenVINO engines.

All artifacts of one call are written to temp names and checked; only if every check passes
are they moved into place and recorded in the manifest, in two steps: fp32/fp16 first, then
int8 (which calibrates, and fails for reasons of its own): an int8 failure keeps the fp32/fp16
files that passed. Unchanged inputs reuse artifacts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmdeploy import distributed as dist
from mmdeploy.bundle import ONNX, TRT, Bundle, bundle_lock, content_key, sha256_file, temp_path_for
from mmdeploy.data import decode_for_sizes, scan_image_folder
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.engines.registry import ONNX_PRECISIONS, deployed_engines, engine_spec
from mmdeploy.errors import MMDeployError
from mmdeploy.export.onnx import _BAKE_HINT, NO_DYNAMIC_HINT, convert_fp16, export_onnx, graph_record
from mmdeploy.export.parity import DEFAULT_TOLERANCES, ParityCheck, Tolerance, check_parity
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
from mmdeploy.models.fit import forward_error
from mmdeploy.progress import Progress
from mmdeploy.version import __version__
from mmdeploy.writable import ensure_writable

PARITY_BATCHES = (1, 8)


@dataclass
class ExportSummary:
    bundle: Path
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    checks: list[ParityCheck] = field(default_factory=list)
    trt: dict = field(default_factory=dict)
    ov: dict = field(default_factory=dict)


@dataclass
class EngineExport:
    """What an engine's export step (its registry entry's ``exporter``) is handed once the bundle's ONNX passed its gate."""

    bundle: Bundle  # as this rank sees it after the ONNX commit
    bundle_dir: Path
    sizes: list[int]
    precisions: list[str]  # the engine's own precisions, as asked for
    onnx_precisions: list[str]  # the gated ONNX precisions they are built from
    images: object  # the decoded parity images, per size
    data: str | Path | None
    pre: object
    tolerances: dict[str, Tolerance]
    parity_count: int
    trt_batches: tuple[int, ...]
    trt_workspace_gb: float
    progress: Progress
    summary: ExportSummary


@dataclass
class _Pending:
    """An artifact built under a temp name, waiting for the gate."""

    rel: str
    tmp: Path
    record: dict
    checks: list[ParityCheck] = field(default_factory=list)


def _artifact_key(weights_sha: str, precision: str, variant: str, extra: str = "") -> str:
    return content_key([weights_sha, precision, variant, __version__, torch.__version__, extra])


def parity_images(bundle: Bundle, data: str | Path | None, count: int, sizes: list[int]):
    src = data or bundle.calibration_data()
    if not src or not Path(src).exists():
        raise MMDeployError("no images for the parity check", "pass --data DIR (an ImageFolder of real images)")
    folder = scan_image_folder(src)
    gen = torch.Generator().manual_seed(1234)
    picks = sorted(torch.randperm(len(folder), generator=gen)[:count].tolist())
    pre = bundle.preprocess()
    return decode_for_sizes(folder, picks, pre.kind, sizes)


def unseen_size(sizes: list[int], example: int) -> int:
    """A size that is neither a deployment size nor the example: shows baked-in shapes."""
    candidate = example + 8
    while candidate in sizes:
        candidate += 8
    return candidate


# Multiples tried for the dynamic ONNX's check size after example+8: patch sizes (ViT 16, 14) and network strides (32, 64).
CHECK_MULTIPLES = (16, 32, 14, 28, 64, 56, 128)


def check_size_candidates(sizes: list[int], example: int) -> list[int]:
    """Sizes to try for the dynamic ONNX's unseen-size check, first to last: example+8, then the next multiples of
    common patch sizes and strides above the example; never a deployment size."""
    out = [unseen_size(sizes, example)]
    for m in CHECK_MULTIPLES:
        candidate = (example // m + 1) * m
        while candidate in sizes:
            candidate += m
        if candidate not in out:
            out.append(candidate)
    return out


def choose_check_size(model: torch.nn.Module, sizes: list[int], example: int, given: int | None = None) -> int:
    """The size the dynamic ONNX is checked at besides the deployment sizes: ``given`` (``--check-size``), or the first
    candidate the PyTorch model accepts (a patch model asserts its input is a multiple of the patch). One line if none."""
    if given is not None:
        if given in sizes:
            raise MMDeployError(f"--check-size {given} is a deployment size; the check needs a size the export did not see",
                                "pick another size your model accepts, e.g. the next multiple of its patch size or stride")
        error = forward_error(model, given)
        if error:
            raise MMDeployError(f"--check-size {given}: the PyTorch model does not run at that size ({error})",
                                "pick a size your model accepts (e.g. a multiple of its patch size or stride)")
        return given
    tried = {}
    for candidate in check_size_candidates(sizes, example):
        error = forward_error(model, candidate)
        if not error:
            return candidate
        tried[candidate] = error
    first = next(iter(tried.items()))
    raise MMDeployError(f"no size to check the dynamic ONNX at: the PyTorch model refused {', '.join(map(str, tried))} "
                        f"(at {first[0]}: {first[1]})", f"pass --check-size N (a size your model accepts, not a deployment size), {NO_DYNAMIC_HINT}")


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
    example+8 and the next multiples of common patch sizes and strides)."""
    if engine != "onnx" and engine not in deployed_engines():
        raise MMDeployError(f"unknown export engine {engine!r}", f"use --engine onnx, {', '.join(deployed_engines())}")
    progress = progress or Progress()
    Bundle.open(bundle_dir)  # refuse a non-bundle before the lock would create a folder
    # Rank 0 holds the bundle's lock for the whole export: temp files live in the bundle, and
    # whatever a failed export leaves is swept before the lock is released.
    with bundle_lock(bundle_dir) if dist.is_main() else contextlib.nullcontext():
        try:
            return _export_locked(bundle_dir, engine, precisions, sizes, data, tolerances, parity_count, dynamic, static_batch,
                                  trt_batches, trt_workspace_gb, progress, int8_method, int8_images, check_size)
        finally:
            if dist.is_main() and Bundle.is_bundle(bundle_dir):
                Bundle.open(bundle_dir).sweep()


def _export_locked(bundle_dir, engine, precisions, sizes, data, tolerances, parity_count, dynamic, static_batch, trt_batches,
                   trt_workspace_gb, progress, int8_method, int8_images, check_size) -> ExportSummary:
    bundle = Bundle.open(bundle_dir)
    ensure_writable(bundle.root)  # before minutes of export work, not after
    spec = engine_spec(engine) if engine != "onnx" else None  # "onnx": the ONNX files and their gate alone
    precisions = precisions or ["fp32"]
    allowed = spec.precisions if spec else ONNX_PRECISIONS
    for p in precisions:
        if p not in allowed:
            raise MMDeployError(f"unknown precision {p!r} for --engine {engine}", f"use --precision {', '.join(allowed)} with --engine {engine}")
    engine_precisions = precisions
    if spec:
        spec.check_here(precisions)
        precisions = spec.onnx_precisions(precisions)  # e.g. ov reads the fp32 ONNX and applies its own precision
    int8 = int8_settings(int8_method or DEFAULT_METHOD, DEFAULT_IMAGES if int8_images is None else int8_images,
                         symmetric=bool(spec and spec.int8_symmetric)) if "int8" in precisions else None
    sizes = [int(s) for s in sizes] if sizes else bundle.sizes
    for s in sizes:
        bundle.size(s)  # refuses a size the bundle lacks
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    pre = bundle.preprocess()
    example = bundle.training_size if bundle.training_size in sizes else sizes[len(sizes) // 2]
    dyn_bn = bundle.training_size if bundle.has_size(bundle.training_size) else None
    dynamic_here = dynamic and any(p != "int8" for p in precisions)
    # The dynamic ONNX is also checked at a size it was not exported at, one the model accepts (patch models need multiples).
    extra = choose_check_size(bundle.build_model(dyn_bn), sizes, example, check_size) if dynamic_here else None
    # int8 is judged on top-1 agreement: 16 images cannot tell 95% from 85%, so it gets a larger sample.
    images = parity_images(bundle, data, max(parity_count, INT8_PARITY_IMAGES) if int8 else parity_count, sizes + ([extra] if extra else []))
    summary = ExportSummary(bundle.root)
    pending: list[_Pending] = []
    fp32_cache: dict = {}
    with dist.agreed():  # rank 0 exports and gates the ONNX; the other ranks wait here for its outcome
        if dist.is_main():
            try:
                with progress.task("exporting and checking", (len(sizes) + int(dynamic)) * len(precisions)) as advance:
                    # int8 last, in its own step: what passed its gate before it is committed first, so an int8
                    # failure (its gate, its memory, its calibration images) leaves the fp32/fp16 files in place.
                    for step in ([p for p in precisions if p != "int8"], [p for p in precisions if p == "int8"]):
                        if not step:
                            continue
                        start = len(pending)
                        try:
                            for precision in step:
                                _export_precision(bundle, summary, pending, precision, sizes, extra, example, dyn_bn, dynamic,
                                                  static_batch, fp32_cache, int8, images, pre, tolerances[precision], advance)
                            _gate_and_commit(bundle, summary, pending[start:], already_written=bool(summary.written))
                        except MMDeployError as exc:
                            if "int8" in step and summary.written:  # say what the failure did not undo
                                raise MMDeployError(f"{exc.message}; kept what passed its gate before int8: {', '.join(summary.written)}", exc.hint) from exc
                            raise
            finally:
                for p in pending:
                    p.tmp.unlink(missing_ok=True)
                for f in fp32_cache.values():
                    f.unlink(missing_ok=True)
    step = spec.export_step() if spec else None
    if step:  # the engine's own files, built from the gated ONNX (on every rank: a step may spread its work over them)
        step(EngineExport(bundle if dist.is_main() else Bundle.open(bundle_dir), Path(bundle_dir), sizes, engine_precisions, precisions, images,
                          data, pre, tolerances, parity_count, trt_batches, trt_workspace_gb, progress, summary))
    return summary


def build_trt_step(job: EngineExport) -> None:
    """The trt engine's export step: a TensorRT plan per (size, precision), each gated."""
    job.summary.trt = _build_trt(job.bundle, job.sizes, job.onnx_precisions, job.images, job.pre, job.tolerances, job.trt_batches,
                                 job.trt_workspace_gb, job.progress)


def _export_precision(bundle, summary, pending, precision, sizes, extra, example, dyn_bn, dynamic, static_batch, fp32_cache, int8, images,
                      pre, tol, advance) -> None:
    """Export one precision's artifacts (dynamic, then per size) under temp names and run their checks."""
    if dynamic and precision != "int8":  # int8 ranges are per size: no dynamic int8 (export/quantize.py)
        pending_dyn = _export_one(bundle, summary, dyn_bn, example, True, precision, static_batch, "dynamic", fp32_cache)
        if pending_dyn:
            pending.append(pending_dyn)  # before the gate: its temp file is removed on every path
            ref = bundle.build_model(dyn_bn)
            with OrtEngine(pending_dyn.tmp, example, precision) as run:
                for s in sizes + [extra]:
                    pending_dyn.checks += check_parity(ref, _Sized(run, s), images, s, PARITY_BATCHES, pre, tol, "dynamic")
    advance(int(dynamic))
    for s in sizes:
        p = _export_one(bundle, summary, s, s, False, precision, static_batch, "per-size", fp32_cache, int8)
        if p:
            pending.append(p)
            ref = bundle.build_model(s)
            with OrtEngine(p.tmp, s, precision) as run:
                p.checks += check_parity(ref, run, images, s, PARITY_BATCHES if static_batch is None else (static_batch,), pre, tol, "per-size")
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


def _export_one(bundle: Bundle, summary: ExportSummary, bn_size: int | None, size: int, dynamic: bool, precision: str,
                static_batch: int | None, variant: str, fp32_cache: dict, int8: dict | None = None) -> _Pending | None:
    """Export (or reuse) one artifact under a temp name. fp16 and int8 convert the fp32 export of the same call."""
    weights_sha = sha256_file(bundle.weights_file(bn_size))  # verified against the manifest, then keyed by content
    suffix = "" if precision == "fp32" else f".{precision}"
    calib = None if bn_size is None else bundle.size(bn_size).calibration.fields
    extra = str(static_batch) + (int8_key_extra(calib or {}, int8) if precision == "int8" else "")
    key = _artifact_key(weights_sha, precision, variant, extra)
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


def _build_trt(bundle, sizes, precisions, images, pre, tolerances, batches, workspace_gb, progress) -> dict:
    """Build one TensorRT plan per (size, precision) from its gated ONNX, then gate the plan itself.

    Under torchrun the builds are spread over the ranks, each on its own GPU; every rank
    writes its own plan files and rank 0 merges all ranks' manifest entries and saves the
    manifest once. A build that fails leaves no plan for its (size, precision), and every rank
    raises; the plans that passed are kept.
    """
    from mmdeploy.engines.loader import load_engine
    from mmdeploy.engines.trt_probe import trt_identity
    from mmdeploy.export.tensorrt import build_bundle_plan, plan_filename

    mine = dist.shard([(s, p) for s in sizes for p in precisions])
    entries, failed, failure = {}, [], None
    with progress.task("building TensorRT plans", len(mine)) as advance:
        for s, precision in mine:
            onnx_art = bundle.artifact(s, ONNX, precision)
            key = _artifact_key(onnx_art.sha256 or "" if onnx_art else "", precision, "trt", json.dumps([list(batches), workspace_gb, trt_identity()]))
            old = bundle.artifact(s, TRT, precision)
            if old is not None and old.key == key and bundle.artifact_usable(old):
                advance(1)  # same ONNX, settings, TensorRT and GPU: the plan is reused
                continue
            try:
                entry = build_bundle_plan(bundle, s, precision, batch_sizes=batches, workspace_gb=workspace_gb)
                entry["key"] = key
                ref = bundle.build_model(s)
                with load_engine(bundle, "trt", s, precision) as run:
                    checks = check_parity(ref, run, images, s, tuple(b for b in batches if b <= len(images)) or (1,), pre, tolerances[precision], "trt")
                entry["parity"] = [c.to_dict() for c in checks]
                if not all(c.passed for c in checks):
                    error = next((f" ({c.error})" for c in checks if getattr(c, "error", "")), "")  # the plan could not run
                    raise MMDeployError(f"parity gate failed for the TensorRT {precision} plan at size {s}{error}", "try --precision fp32, or report the model")
            except Exception as exc:  # noqa: BLE001  (reported to every rank below)
                failed.append((s, precision))
                bundle.path(bundle.fresh_name(plan_filename(s, precision))).unlink(missing_ok=True)
                failure = exc
                break
            entries[(s, precision)] = entry
            advance(1)
    gathered = dist.all_gather_object((entries, failed))
    merged = {k: v for part, _ in gathered for k, v in part.items()}
    with dist.agreed():  # rank 0 records every rank's plans; then all raise if any build failed
        if dist.is_main():
            for s, precision in (k for _, bad in gathered for k in bad):
                bundle.remove_artifact(s, TRT, precision)
            for (s, precision), entry in merged.items():
                bundle.set_artifact(s, TRT, precision, entry)
            bundle.commit()
        if failure is not None:
            raise failure
    built = {f"{s}/{p}": merged[(s, p)]["plan"] for s in sizes for p in precisions if (s, p) in merged}
    return built
