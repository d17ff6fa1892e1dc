"""The export plan: which files each engine needs, in which precisions, and what an engine's export step is handed.

:func:`plan_exports` is the one place that turns requested engines and precisions into steps, reading the engine
registry and asking each engine whether this machine serves a precision. ``mmdeploy export`` runs a one-engine plan
(:func:`mmdeploy.export.workflow.export_bundle`); ``mmdeploy run`` runs a plan of every engine it measures
(:func:`mmdeploy.export.by_plan.export_by_plan`) and reads from it what eval and bench measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmdeploy.engines.registry import ONNX_PRECISIONS, deployed_engines, engine_spec
from mmdeploy.errors import MMDeployError

ONNX_ONLY = "onnx"  # the ONNX files and their gate, no engine's own files


@dataclass(frozen=True)
class PlannedExport:
    """One export pass: ``engine``'s files in ``precisions``, built from the gated ONNX in ``onnx_precisions``.

    ``serves``: the engines the pass's files serve (ONNX Runtime runs the ONNX that the TensorRT pass gates).
    ``builds_onnx``: the pass exports and gates the ONNX itself; a pass that does not (an engine applying its own
    precision to the fp32 ONNX, like OpenVINO) comes after one that does."""

    engine: str
    precisions: tuple[str, ...]
    onnx_precisions: tuple[str, ...]
    serves: tuple[str, ...]
    builds_onnx: bool = True

    @property
    def float_precisions(self) -> list[str]:
        """The precisions exported in the pass's first step; int8 follows in a step of its own."""
        return [p for p in self.precisions if p != "int8"] or ["fp32"]


@dataclass
class ExportPlan:
    """The passes, in order, and why a requested engine or precision is left out here."""

    engines: tuple[str, ...]  # the requested engines that run here
    precisions: tuple[str, ...]  # the requested precisions some planned engine serves here: what eval and bench measure
    passes: tuple[PlannedExport, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # "ov" or "ov bf16" -> the one-line reason


def _allowed(engine: str) -> tuple[str, ...]:
    return ONNX_PRECISIONS if engine == ONNX_ONLY else engine_spec(engine).precisions


def check_export_engine(engine: str) -> None:
    if engine != ONNX_ONLY and engine not in deployed_engines():
        raise MMDeployError(f"unknown export engine {engine!r}", f"use --engine {ONNX_ONLY}, {', '.join(deployed_engines())}")


def plan_export(engine: str, precisions: Sequence[str] | None) -> PlannedExport:
    """The pass of ``mmdeploy export --engine ENGINE``: an unknown engine or precision, or one this machine cannot
    serve, is refused in one line before any work."""
    check_export_engine(engine)
    precisions = tuple(precisions or ("fp32",))
    allowed = _allowed(engine)
    for p in precisions:
        if p not in allowed:
            raise MMDeployError(f"unknown precision {p!r} for --engine {engine}", f"use --precision {', '.join(allowed)} with --engine {engine}")
    if engine == ONNX_ONLY:
        return PlannedExport(engine, precisions, precisions, (engine,))
    spec = engine_spec(engine)
    spec.check_here(list(precisions))
    return PlannedExport(engine, precisions, tuple(spec.onnx_precisions(list(precisions))), (engine,))


def plan_exports(engines: Sequence[str], precisions: Sequence[str], unavailable: dict[str, str]) -> ExportPlan:
    """The passes of ``mmdeploy run``: ``engines`` (``auto``: every deployed engine usable here) in ``precisions``,
    each engine taking those it serves; ``unavailable``: engine -> why it does not run here ("" where it does).

    The engines that run the ONNX or build from it (ort, trt) share one pass, named for the one with an export step
    of its own; engines that apply their own precision to the gated ONNX (ov) follow, each in its own pass. An engine
    or precision this machine cannot serve is skipped with its reason instead of failing the run."""
    if "auto" in engines:
        engines = [e for e in deployed_engines() if not unavailable.get(e)]
    if any(e not in deployed_engines() for e in engines):
        raise MMDeployError(f"unknown engine in config: {list(engines)}", f"use {', '.join(deployed_engines())} (torch is always measured)")
    skipped = {e: unavailable[e] for e in engines if unavailable.get(e)}
    usable = [e for e in engines if not unavailable.get(e)]
    served = {e: _served_here(e, precisions, skipped) for e in usable}
    onnx_pass = [e for e in usable if not engine_spec(e).onnx_float]
    after = [e for e in usable if engine_spec(e).onnx_float and served[e]]
    needed = {p for e in usable for p in engine_spec(e).onnx_precisions(served[e])}  # the ONNX precisions some engine reads
    passes = []
    if usable:
        onnx_precisions = tuple(p for p in precisions if p in ONNX_PRECISIONS and p in needed) or ("fp32",)
        # trt's plans are built in the same pass as the ONNX they read; "ort" alone is the ONNX files
        name = next((e for e in onnx_pass if engine_spec(e).exporter), "ort")
        passes.append(PlannedExport(name, onnx_precisions, onnx_precisions, tuple(onnx_pass) or ("ort",)))
    for e in after:
        passes.append(PlannedExport(e, tuple(served[e]), tuple(engine_spec(e).onnx_precisions(served[e])), (e,), builds_onnx=False))
    measured = tuple(p for p in precisions if any(p in served[e] for e in usable))
    return ExportPlan(tuple(usable), measured, tuple(passes), skipped)


def _served_here(engine: str, precisions: Sequence[str], skipped: dict) -> list[str]:
    """The ``precisions`` ``engine`` serves on this machine; one its registry check refuses here (ov bf16 without native
    bf16) goes into ``skipped`` with its reason."""
    spec = engine_spec(engine)
    chosen = []
    for p in precisions:
        if p not in spec.precisions:
            continue
        try:
            spec.check_here([p])
        except MMDeployError as exc:
            skipped[f"{engine} {p}"] = exc.message
            continue
        chosen.append(p)
    return chosen


def artifact_key(source_sha: str, precision: str, variant: str, extra: str = "") -> str:
    """An exported file's reuse key: the bytes it is made from, its precision and kind, and the versions that make it."""
    import torch

    from mmdeploy.bundle import content_key
    from mmdeploy.version import __version__

    return content_key([source_sha, precision, variant, __version__, torch.__version__, extra])


@dataclass(frozen=True)
class ExportOptions:
    """The settings of an export besides its engine, precisions and sizes (``mmdeploy export``'s flags, ``[export]``)."""

    data: str | Path | None = None  # real images for the parity gate (default: the calibration folder)
    tolerances: dict | None = None  # precision -> mmdeploy.export.parity.Tolerance, over the defaults
    parity_count: int = 16
    dynamic: bool = True
    static_batch: int | None = None
    check_size: int | None = None
    int8_method: str | None = None
    int8_images: int | None = None
    trt_batches: tuple[int, ...] = (1, 32)
    trt_workspace_gb: float = 4.0


@dataclass
class ExportSummary:
    bundle: Path
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    checks: list = field(default_factory=list)  # mmdeploy.export.parity.ParityCheck
    trt: dict = field(default_factory=dict)
    ov: dict = field(default_factory=dict)

    @property
    def wrote(self) -> bool:
        """Whether the call wrote any file (ONNX, a TensorRT plan or an OpenVINO entry)."""
        return bool(self.written or self.trt or self.ov)


@dataclass
class EngineExport:
    """What an engine's export step (its registry entry's ``exporter``) is handed once the bundle's ONNX passed its gate."""

    bundle: object  # mmdeploy.bundle.Bundle, as this rank sees it after the ONNX commit
    bundle_dir: Path
    sizes: list[int]
    planned: PlannedExport  # the engine's precisions and the gated ONNX precisions they are built from
    options: ExportOptions  # with the tolerances of every precision filled in
    images: object  # the decoded parity images, per size
    pre: object  # the bundle's mmdeploy.data.Preprocess
    progress: object  # mmdeploy.progress.Progress
    summary: ExportSummary
