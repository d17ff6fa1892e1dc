"""``mmdeploy export --engine ov``: gate OpenVINO on each per-size fp32 ONNX, per precision, and record it.

OpenVINO reads the same per-size ONNX that ONNX Runtime runs (already gated); what is new is
OpenVINO's own compilation, in fp32 or bf16. ``int8`` compiles the per-size QDQ INT8 ONNX
(export/quantize.py, ranges calibrated at that size): OpenVINO runs its quantized operators in
int8 (measured faster than ONNX Runtime on the same file at batch 32 and from 32 px at batch 1,
``benchmarks/bench_engines.py --int8``), and the INT8 gate's tolerances apply. Each (size, precision) is compiled into a
temporary model cache, checked against PyTorch at batch 1 (latency hint) and at a larger batch
(throughput hint, batch split over streams), and only if it passes are its cache blobs moved
into the bundle's ``ov_cache/`` and its entry written. A failing (size, precision) writes
nothing (its old entry, if any, is dropped) and the call ends with an error naming it.
An entry is reused while its key (ONNX bytes, precision, OpenVINO version, CPU) is unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mmdeploy.bundle import ONNX, OV, Bundle, content_key
from mmdeploy.engines.loader import ov_record
from mmdeploy.engines.openvino import CACHE_DIR, OvEngine, check_precision, ov_unavailable_reason
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import ParityCheck, Tolerance, check_parity, parity_images

OV_PARITY_BATCHES = (1, 8)  # 8 reaches the throughput path (engines.openvino.THROUGHPUT_MIN_BATCH)
# bf16 flips the top-1 of near-ties (about 1 image in 100-250 here): on 16 images one flip fails a 95%
# agreement bound by chance, so the ov gate looks at at least this many images.
OV_MIN_PARITY_IMAGES = 64


def _ov_key(onnx_sha: str, precision: str) -> str:
    import openvino as ov

    from mmdeploy.latency.machine import cpu_name

    return content_key([onnx_sha, precision, ov.__version__, cpu_name()])


def check_ov_available(precisions: list[str]) -> None:
    """Refuse up front (one line) what this machine cannot serve: no openvino, or bf16 without native bf16."""
    reason = ov_unavailable_reason()
    if reason:
        raise MMDeployError(f"cannot use OpenVINO here: {reason}", "use --engine ort on this machine")
    for p in precisions:
        check_precision(p)


def build_ov_step(job) -> None:
    """The ov engine's export step (``job``: ``mmdeploy.export.plan.EngineExport``): gate and record the ov engine of every
    (size, precision); rank 0 alone compiles and gates, under the bundle's lock. ``job.summary`` gets what was built
    ("size/precision" -> ONNX path), the checks, and what was reused."""
    from mmdeploy import distributed as dist

    if not dist.is_main():
        return
    bundle, sizes, precisions, options = Bundle.open(job.bundle_dir), job.sizes, job.planned.precisions, job.options
    pre = bundle.preprocess()
    images = None  # decoded only if some (size, precision) needs its gate
    built, checks, reused, failed = {}, [], [], []
    with job.progress.task("checking OpenVINO engines", len(sizes) * len(precisions)) as advance:
        for s in sizes:
            for precision in precisions:
                source = "int8" if precision == "int8" else "fp32"  # bf16 is OpenVINO's own precision on the fp32 graph
                onnx = bundle.artifact(s, ONNX, source)
                hint = f"run `mmdeploy export {bundle.root} --engine ort{' --precision int8' if source == 'int8' else ''}` first"
                if not onnx:
                    raise MMDeployError(f"no per-size {source} ONNX for size {s}", hint)
                key = _ov_key(onnx.sha256, precision)
                old = ov_record(bundle, s, precision)
                if old and old.key == key and old.sha256 == onnx.sha256 and bundle.artifact_usable(old):
                    reused.append(f"{s}/{precision}")
                    advance(1)
                    continue
                if images is None:
                    images = parity_images(bundle, options.data, max(options.parity_count, OV_MIN_PARITY_IMAGES), sizes)
                mine = _gate_one(bundle, s, precision, bundle.artifact_path(onnx, hint), images, pre, options.tolerances[precision])
                checks += mine
                if all(c.passed for c in mine):
                    # the ov entry names the ONNX it was gated on; the bundle keeps that file while the entry lists it
                    bundle.set_artifact(s, OV, precision, {"path": onnx.file, "sha256": onnx.sha256, "key": key, "precision": precision,
                                                           "cache_dir": CACHE_DIR, "openvino": _ov_version(),
                                                           "parity": [c.to_dict() for c in mine]})
                    built[f"{s}/{precision}"] = onnx.file
                else:
                    bundle.remove_artifact(s, OV, precision)  # also forgets that point's stale metrics
                    failed.append(f"{precision} at size {s}")
                advance(1)
    bundle.commit()
    job.summary.ov = built
    job.summary.checks += checks
    job.summary.reused += [f"ov {r}" for r in reused]
    if failed:
        raise MMDeployError(f"OpenVINO parity gate failed: {', '.join(failed)} differ from PyTorch beyond tolerance; those were not written",
                            "serve them in fp32 (--precision fp32), or loosen --atol/--rtol/--min-agreement if the accuracy drop is acceptable")


def _gate_one(bundle: Bundle, size: int, precision: str, onnx: Path, images, pre, tol: Tolerance) -> list[ParityCheck]:
    """Compile into a temporary cache, check; on a pass the blobs join the bundle's cache."""
    cache = bundle.path(CACHE_DIR)
    tmp_cache = Path(tempfile.mkdtemp(dir=bundle.root, prefix=f".{CACHE_DIR}.", suffix=".tmp"))
    try:
        with OvEngine(onnx, size, precision, cache_dir=tmp_cache) as run:
            checks = check_parity(bundle.build_model(size), run, images, size, OV_PARITY_BATCHES, pre, tol, "ov")
        if all(c.passed for c in checks) and tmp_cache.is_dir():
            cache.mkdir(exist_ok=True)
            for blob in tmp_cache.iterdir():  # names are OpenVINO's content hashes: one never replaces another's bytes
                os.replace(blob, cache / blob.name)
        return checks
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)


def _ov_version() -> str:
    import openvino as ov

    return ov.__version__
