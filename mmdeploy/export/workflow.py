"""``mmdeploy export``: bundle -> dynamic and per-size ONNX (fp32/fp16), gated; optionally TensorRT plans.

All artifacts of one call are written to temp names and checked; only if every check passes
are they moved into place and recorded in the manifest. Unchanged inputs reuse artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmdeploy import __version__
from mmdeploy import distributed as dist
from mmdeploy.bundle import Bundle, temp_path_for
from mmdeploy.data import decode_for_sizes, scan_image_folder
from mmdeploy.engines.onnxruntime import OrtEngine
from mmdeploy.errors import MMDeployError
from mmdeploy.export.onnx import _BAKE_HINT, convert_fp16, export_onnx, graph_record
from mmdeploy.export.parity import DEFAULT_TOLERANCES, ParityCheck, Tolerance, check_parity
from mmdeploy.models.checkpoint import sha256_file
from mmdeploy.progress import Progress
from mmdeploy.writable import ensure_writable

PARITY_BATCHES = (1, 8)


@dataclass
class ExportSummary:
    bundle: Path
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    checks: list[ParityCheck] = field(default_factory=list)
    trt: dict = field(default_factory=dict)


@dataclass
class _Pending:
    """An artifact built under a temp name, waiting for the gate."""

    rel: str
    tmp: Path
    record: dict
    checks: list[ParityCheck] = field(default_factory=list)


def _artifact_key(weights_sha: str, precision: str, variant: str, extra: str = "") -> str:
    blob = json.dumps([weights_sha, precision, variant, __version__, torch.__version__, extra])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def parity_images(bundle: Bundle, data: str | Path | None, count: int, sizes: list[int]):
    src = data or next((e["calibration"].get("data") for e in bundle.manifest["sizes"].values() if e["calibration"].get("data")), None)
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
) -> ExportSummary:
    if engine not in ("onnx", "ort", "trt"):
        raise MMDeployError(f"unknown export engine {engine!r}", "use --engine onnx, ort or trt")
    progress = progress or Progress()
    bundle = Bundle.open(bundle_dir)
    ensure_writable(bundle.root)  # before minutes of export work, not after
    precisions = precisions or ["fp32"]
    for p in precisions:
        if p not in ("fp32", "fp16"):
            raise MMDeployError(f"unknown precision {p!r}", "use --precision fp32 or fp16")
    if engine == "trt":
        from mmdeploy.engines.tensorrt import trt_unavailable_reason

        reason = trt_unavailable_reason()
        if reason:
            raise MMDeployError(f"cannot build TensorRT engines here: {reason}", "use --engine ort on this machine")
    sizes = [int(s) for s in sizes] if sizes else bundle.sizes
    for s in sizes:
        bundle.size_entry(s)
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    pre = bundle.preprocess()
    example = bundle.training_size if bundle.training_size in sizes else sizes[len(sizes) // 2]
    extra = unseen_size(sizes, example)
    images = parity_images(bundle, data, parity_count, sizes + [extra])
    summary = ExportSummary(bundle.root)
    pending: list[_Pending] = []
    fp32_cache: dict = {}
    dyn_bn = bundle.training_size if str(bundle.training_size) in bundle.manifest["sizes"] else None
    with dist.agreed():  # rank 0 exports and gates the ONNX; the other ranks wait here for its outcome
        if dist.is_main():
            try:
                with progress.task("exporting and checking", (len(sizes) + int(dynamic)) * len(precisions)) as advance:
                    for precision in precisions:
                        tol = tolerances[precision]
                        if dynamic:
                            pending_dyn = _export_one(bundle, summary, dyn_bn, example, True, precision, static_batch, "dynamic", fp32_cache)
                            if pending_dyn:
                                ref = bundle.build_model(dyn_bn)
                                with OrtEngine(pending_dyn.tmp, example, precision) as run:
                                    for s in sizes + [extra]:
                                        pending_dyn.checks += check_parity(ref, _Sized(run, s), images, s, PARITY_BATCHES, pre, tol, "dynamic")
                                pending.append(pending_dyn)
                            advance(1)
                        for s in sizes:
                            p = _export_one(bundle, summary, s, s, False, precision, static_batch, "per-size", fp32_cache)
                            if p:
                                ref = bundle.build_model(s)
                                with OrtEngine(p.tmp, s, precision) as run:
                                    p.checks += check_parity(ref, run, images, s, PARITY_BATCHES if static_batch is None else (static_batch,), pre, tol, "per-size")
                                pending.append(p)
                            advance(1)
                for p in pending:
                    summary.checks += p.checks
                failed = sorted({(c.artifact, c.size, c.precision) for c in summary.checks if not c.passed})
                if failed:
                    names = ", ".join(f"{a} {p} at size {s}" for a, s, p in failed)
                    raise MMDeployError(f"parity gate failed: {names} differ from PyTorch beyond tolerance; nothing was written", _BAKE_HINT)
                for p in pending:
                    os.replace(p.tmp, bundle.path(p.rel))
                    p.record["parity"] = [c.to_dict() for c in p.checks]
                    _record(bundle, p)
                    summary.written.append(p.rel)
                bundle.save()
            finally:
                for p in pending:
                    p.tmp.unlink(missing_ok=True)
                for f in fp32_cache.values():
                    f.unlink(missing_ok=True)
    if engine == "trt":
        if not dist.is_main():
            bundle = Bundle.open(bundle_dir)  # now with rank 0's gated ONNX
        summary.trt = _build_trt(bundle, sizes, precisions, images, pre, tolerances, trt_batches, trt_workspace_gb, progress)
    return summary


def _min_size(arch: str) -> int:
    from mmdeploy.models import arch_info

    return arch_info(arch).min_size if ":" not in arch else 1


def _export_one(bundle: Bundle, summary: ExportSummary, bn_size: int | None, size: int, dynamic: bool, precision: str,
                static_batch: int | None, variant: str, fp32_cache: dict) -> _Pending | None:
    """Export (or reuse) one artifact under a temp name. fp16 converts the fp32 export of the same call."""
    weights_rel = bundle.manifest["source"]["weights"] if bn_size is None else bundle.size_entry(bn_size)["weights"]
    weights_sha = sha256_file(bundle.path(weights_rel))
    suffix = "" if precision == "fp32" else ".fp16"
    rel = f"model.dynamic{suffix}.onnx" if dynamic else f"sizes/{size}/model{suffix}.onnx"
    key = _artifact_key(weights_sha, precision, variant, str(static_batch))
    holder = bundle.manifest.setdefault("dynamic", {}) if dynamic else bundle.size_entry(size).setdefault("artifacts", {})
    old = holder.get(f"onnx/{precision}")
    if old and old.get("key") == key and bundle.path(old["path"]).exists():
        summary.reused.append(rel)
        return None
    model = bundle.build_model(bn_size)
    bn_set = "source checkpoint" if bn_size is None else f"calibrated for {bn_size}"
    calib = None if bn_size is None else bundle.size_entry(bn_size)["calibration"]
    meta = {"mmdeploy.version": __version__, "mmdeploy.size": "dynamic" if dynamic else str(size), "mmdeploy.bn_statistics": bn_set,
            "mmdeploy.calibration": calib or {}, "mmdeploy.source_sha256": bundle.manifest["source"]["sha256"],
            "mmdeploy.arch": bundle.arch, "mmdeploy.preprocess": bundle.manifest["preprocess"], "mmdeploy.precision": precision}
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
        else:
            shutil.copyfile(fp32, tmp)
            graph = graph_record(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = {"path": rel, "key": key, "precision": precision, "variant": variant, "bn_statistics": bn_set, "example_size": size,
              "dynamic_batch": static_batch is None, "static_batch": static_batch, "graph": graph}
    return _Pending(rel, tmp, record)


def _record(bundle: Bundle, p: _Pending) -> None:
    p.record["sha256"] = sha256_file(bundle.path(p.rel))
    if p.record["variant"] == "dynamic":
        bundle.manifest.setdefault("dynamic", {})[f"onnx/{p.record['precision']}"] = p.record
    else:
        entry = bundle.size_entry(p.record["example_size"])
        entry.setdefault("artifacts", {})[f"onnx/{p.record['precision']}"] = p.record
        _forget_metrics(entry, "ort", p.record["precision"])


def _forget_metrics(entry: dict, engine: str, precision: str) -> None:
    """A rewritten artifact makes its engine's stored accuracy and latency at that size stale."""
    metrics = entry.get("metrics", {})
    metrics.get("accuracy", {}).pop(f"{engine}/{precision}", None)
    latency = metrics.get("latency", {})
    for key in [k for k in latency if k.startswith(f"{engine}/{precision}/")]:
        del latency[key]


class _Sized:
    """The same engine reported at another size (the dynamic ONNX serves every size)."""

    def __init__(self, engine, size: int):
        self.engine, self.size, self.precision = engine, size, engine.precision

    def __call__(self, x):
        return self.engine(x)


def _trt_identity() -> str:
    """What a plan is only valid for: the TensorRT version and the GPU model."""
    try:
        import tensorrt

        version = tensorrt.__version__
    except ImportError:  # only reached with a stand-in builder (tests)
        version = "none"
    gpu = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else "no-gpu"
    return f"{version}/{gpu}"


def _build_trt(bundle, sizes, precisions, images, pre, tolerances, batches, workspace_gb, progress) -> dict:
    """Build one TensorRT plan per (size, precision) from its gated ONNX, then gate the plan itself.

    Under torchrun the builds are spread over the ranks, each on its own GPU; every rank
    writes its own plan files and rank 0 merges all ranks' manifest entries and saves the
    manifest once. A build that fails leaves no plan for its (size, precision), and every rank
    raises; the plans that passed are kept.
    """
    from mmdeploy.engines.tensorrt import TrtEngine, build_bundle_plan, plan_filename

    mine = dist.shard([(s, p) for s in sizes for p in precisions])
    entries, failed, failure = {}, [], None
    with progress.task("building TensorRT plans", len(mine)) as advance:
        for s, precision in mine:
            onnx_art = bundle.size_entry(s).get("artifacts", {}).get(f"onnx/{precision}", {})
            key = _artifact_key(onnx_art.get("sha256", ""), precision, "trt", json.dumps([list(batches), workspace_gb, _trt_identity()]))
            old = bundle.size_entry(s).get("artifacts", {}).get(f"trt/{precision}")
            if old and old.get("key") == key and bundle.path(old["plan"]).exists():
                advance(1)  # same ONNX, settings, TensorRT and GPU: the plan is reused
                continue
            try:
                entry = build_bundle_plan(bundle, s, precision, batch_sizes=batches, workspace_gb=workspace_gb)
                entry["key"] = key
                ref = bundle.build_model(s)
                with TrtEngine.from_bundle(bundle, s, precision) as run:
                    checks = check_parity(ref, run, images, s, tuple(b for b in batches if b <= len(images)) or (1,), pre, tolerances[precision], "trt")
                entry["parity"] = [c.to_dict() for c in checks]
                if not all(c.passed for c in checks):
                    raise MMDeployError(f"parity gate failed for the TensorRT {precision} plan at size {s}", "try --precision fp32, or report the model")
            except Exception as exc:  # noqa: BLE001  (reported to every rank below)
                failed.append((s, precision))
                bundle.path(plan_filename(s, precision)).unlink(missing_ok=True)
                failure = exc
                break
            entries[(s, precision)] = entry
            advance(1)
    gathered = dist.all_gather_object((entries, failed))
    merged = {k: v for part, _ in gathered for k, v in part.items()}
    with dist.agreed():  # rank 0 records every rank's plans; then all raise if any build failed
        if dist.is_main():
            for s, precision in (k for _, bad in gathered for k in bad):
                bundle.size_entry(s).get("artifacts", {}).pop(f"trt/{precision}", None)
                _forget_metrics(bundle.size_entry(s), "trt", precision)
            for (s, precision), entry in merged.items():
                bundle.set(["sizes", str(s), "artifacts", f"trt/{precision}"], entry)
                _forget_metrics(bundle.size_entry(s), "trt", precision)
            bundle.save()
        if failure is not None:
            raise failure
    built = {f"{s}/{p}": merged[(s, p)]["plan"] for s in sizes for p in precisions if (s, p) in merged}
    return built
