"""``mmdeploy run``'s export step: every pass of an :class:`~mmdeploy.export.plan.ExportPlan` on one bundle.

Each pass exports its float precisions in one call, then int8: a pass that builds the ONNX quantizes one size at a
time, and a size whose INT8 fails its parity gate is skipped with its reason instead of failing the run (the refusal is
remembered under its inputs' key, so an unchanged bundle is not quantized and gated again on every run); a pass that
reads the gated ONNX (ov) takes int8 at the sizes whose INT8 ONNX passed.
"""

from __future__ import annotations

from pathlib import Path

from mmdeploy.bundle import ONNX, Bundle, content_key
from mmdeploy.errors import MMDeployError
from mmdeploy.export import workflow
from mmdeploy.export.parity import tolerances_for
from mmdeploy.export.plan import ExportPlan, PlannedExport
from mmdeploy.flagmap import step_keywords

# [export] settings that are not export_bundle keywords: the plan's engines and precisions, and int8's own settings.
_PLAN_KEYS = ("engines", "precisions", "int8_method", "int8_images")


def export_keywords(export: dict, precisions: list[str]) -> dict:
    """export_bundle's keywords from [export]: the shared mapping's, and the parity tolerances when any bound is set."""
    options = step_keywords("export", export)
    tolerances = tolerances_for(precisions, export.get("atol"), export.get("rtol"), export.get("min_agreement"))
    return {**options, "tolerances": tolerances} if tolerances else options


def export_by_plan(name: str, bundle_dir: Path, plan: ExportPlan, data: Path, export: dict, skipped: dict, progress, log) -> bool | None:
    """Run ``plan``'s passes on model ``name``'s bundle with ``[export]`` settings ``export`` and parity images ``data``;
    sizes refused for int8 go into ``skipped``. Returns whether any file was written (None: the plan has no pass)."""
    wrote = None
    for planned in plan.passes:
        log(f"{name}: export {', '.join(planned.serves)} {', '.join(planned.precisions)}")
        floats = planned.float_precisions
        ex = workflow.export_bundle(bundle_dir, planned.engine, floats, data=data, progress=progress, **export_keywords(export, floats))
        ran = ex.wrote
        if "int8" in planned.precisions:
            ran = _export_int8(name, bundle_dir, planned, data, export, skipped, progress, log) or ran
        wrote = bool(wrote) or ran
    return wrote


def _export_int8(name: str, bundle_dir: Path, planned: PlannedExport, data: Path, export: dict, skipped: dict, progress, log) -> bool:
    keywords = {**export_keywords(export, ["int8"]), "dynamic": False}
    if not planned.builds_onnx:  # the QDQ ONNX of each size whose INT8 passed its gate
        current = Bundle.open(bundle_dir)
        sizes = [s for s in current.sizes if current.artifact(s, ONNX, "int8")]
        return bool(sizes) and workflow.export_bundle(bundle_dir, planned.engine, ["int8"], sizes=sizes, data=data, progress=progress,
                                                      **keywords).wrote
    wrote = False
    bundle = Bundle.open(bundle_dir)
    for size in bundle.sizes:
        step = f"int8-refused/{size}"
        fp32 = bundle.artifact(size, ONNX, "fp32")  # what INT8 is made from, with the calibration
        # Settings beyond the defaults (a looser gate, a static batch, ...) may let a refused size pass: part of the key when set.
        changed = {k: v for k, v in export.items() if k not in _PLAN_KEYS}
        key = content_key([fp32 and (fp32.key or fp32.sha256), bundle.size(size).calibration.key, planned.engine, export.get("int8_method"),
                           export.get("int8_images"), *([changed] if changed else [])])
        if bundle.step_key(step) == key:
            skipped[f"{name} int8 at {size}"] = "refused by its parity gate in an earlier run (inputs unchanged)"
            continue
        try:
            ex = workflow.export_bundle(bundle_dir, planned.engine, ["int8"], sizes=[size], data=data, progress=progress, **keywords)
        except MMDeployError as exc:
            skipped[f"{name} int8 at {size}"] = exc.message
            log(f"{name}: int8 at size {size} not deployed: {exc.message}")
            with Bundle.update(bundle_dir) as marked:
                marked.set_step_key(step, key)
            continue
        wrote = wrote or ex.wrote
    return wrote
