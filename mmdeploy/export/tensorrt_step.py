"""``mmdeploy export --engine trt``: the TensorRT engine's export step, a gated plan per (size, precision) in a bundle.

Reached through the trt entry of the engine registry, as ``export/openvino.py`` is for ov. The plans are built from the
per-size ONNX that passed its gate (``export/tensorrt.py`` builds one plan), then each plan is gated against PyTorch.
Under torchrun the builds are spread over the ranks, each on its own GPU.
"""

from __future__ import annotations

import json

from mmdeploy import distributed as dist
from mmdeploy.bundle import ONNX, TRT
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import check_parity
from mmdeploy.export.plan import EngineExport, artifact_key


def build_trt_step(job: EngineExport) -> None:
    """Build one TensorRT plan per (size, precision) of ``job`` from its gated ONNX, then gate the plan itself.

    Every rank writes its own plan files and rank 0 merges all ranks' manifest entries and saves the
    manifest once. A build that fails leaves no plan for its (size, precision), and every rank
    raises; the plans that passed are kept, and ``job.summary.trt`` names them ("size/precision" -> plan path).
    """
    from mmdeploy.engines.loader import load_engine
    from mmdeploy.engines.trt_probe import trt_identity
    from mmdeploy.export.tensorrt import TrtBuildOptions, build_bundle_plan, plan_filename

    bundle, sizes, precisions, tolerances = job.bundle, job.sizes, job.planned.precisions, job.options.tolerances
    batches, workspace_gb, images = job.options.trt_batches, job.options.trt_workspace_gb, job.images
    mine = dist.shard([(s, p) for s in sizes for p in precisions])
    entries, failed, failure = {}, [], None
    with job.progress.task("building TensorRT plans", len(mine)) as advance:
        for s, precision in mine:
            onnx_art = bundle.artifact(s, ONNX, precision)
            key = artifact_key(onnx_art.sha256 or "" if onnx_art else "", precision, "trt", json.dumps([list(batches), workspace_gb, trt_identity()]))
            old = bundle.artifact(s, TRT, precision)
            if old is not None and old.key == key and bundle.artifact_usable(old):
                advance(1)  # same ONNX, settings, TensorRT and GPU: the plan is reused
                continue
            try:
                entry = build_bundle_plan(bundle, s, precision, options=TrtBuildOptions(batch_sizes=batches, workspace_gb=workspace_gb))
                entry["key"] = key
                ref = bundle.build_model(s)
                with load_engine(bundle, "trt", s, precision) as run:
                    checks = check_parity(ref, run, images, s, tuple(b for b in batches if b <= len(images)) or (1,), job.pre, tolerances[precision], "trt")
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
    job.summary.trt = {f"{s}/{p}": merged[(s, p)]["plan"] for s in sizes for p in precisions if (s, p) in merged}
