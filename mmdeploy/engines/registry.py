"""The engine registry: one ``EngineSpec`` per engine, the only place an engine's facts are written down.

Config choices, the CLI's help, the pipeline's routing, export dispatch, eval, bench and tune read it. Everything heavy
(the runner class, the exporter, the availability probe) is named as ``"package.module:attribute"`` and imported only
when asked for (code that has them imported already may pass them directly), so reading the registry costs no torch import (the CLI's start-up depends on it).

A new engine is its runner module (an ``Engine`` subclass built from plain values), a loader (engines/loader.py: from a
bundle to those values; an engine that runs an existing artifact names an existing one), optionally an export step,
and one :func:`register_engine` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from mmdeploy.errors import MMDeployError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")  # what an exported ONNX graph can carry (bf16 is OpenVINO's own, applied at load)
# Artifact kinds in a bundle (bundle/records.py spells their manifest labels): the files an engine runs.
ONNX_ARTIFACT, TRT_ARTIFACT, OV_ARTIFACT = "onnx", "trt", "ov"


@dataclass(frozen=True)
class EngineSpec:
    """What mmdeploy knows about one engine.

    ``artifact``: the bundle artifact kind it runs (None: it runs the model itself, like eager torch).
    ``runner``: ``"module:Class"``, an ``Engine`` subclass. ``loader``: ``"module:function"`` called as
    ``loader(runner, bundle, size, precision, **options)``: finds the runner's file and settings in a bundle and builds it
    (mmdeploy.engines.loader); its keyword-only parameters are the engine's options.
    ``unavailable``: ``"module:function"`` returning "" where it runs here, else one line saying why not.
    ``exporter``: ``"module:function"`` that builds its own files after the gated ONNX (None: the ONNX is all it needs);
    called as ``exporter(job)`` with a ``mmdeploy.export.plan.EngineExport``.
    ``onnx_float``: the ONNX precision its float precisions are built from (None: the same precision); int8 always
    reads the int8 (QDQ) ONNX.
    ``int8_symmetric``: it takes only symmetric int8 scales. ``tunable``: ``mmdeploy bench --tune`` chooses its settings.
    ``check``: ``"module:function(precisions)"`` raising when this machine cannot serve those precisions well, before an
    export starts (beyond ``unavailable``, e.g. OpenVINO bf16 without native bf16). ``title``: the name people know it by;
    ``help``: a few words for the CLI's help.
    """

    name: str
    precisions: tuple[str, ...]
    artifact: str | None
    runner: str | type
    loader: str | Callable | None = None
    unavailable: str | Callable[[], str] | None = None
    exporter: str | Callable | None = None
    onnx_float: str | None = None
    int8_symmetric: bool = False
    tunable: bool = False
    check: str | Callable | None = None
    title: str = ""
    help: str = ""

    def unavailable_reason(self) -> str:
        return _resolve(self.unavailable)() if self.unavailable else ""

    def runner_class(self):
        return _resolve(self.runner)

    def loader_function(self) -> Callable:
        if self.loader is None:
            raise MMDeployError(f"the {self.name} engine has no loader", "its registry entry must name one (EngineSpec.loader)")
        return _resolve(self.loader)

    def check_here(self, precisions: list[str]) -> None:
        """Refuse, in one line and before any work, an export this machine cannot serve."""
        if self.check:
            _resolve(self.check)(precisions)
        reason = self.unavailable_reason()
        if reason:
            raise MMDeployError(f"cannot build {self.title or self.name} engines here: {reason}", "use --engine ort on this machine")

    def export_step(self) -> Callable | None:
        return _resolve(self.exporter) if self.exporter else None

    def onnx_precisions(self, precisions: list[str]) -> list[str]:
        """The ONNX precisions this engine's ``precisions`` are built from."""
        if not self.onnx_float:
            return list(precisions)
        return [self.onnx_float] + (["int8"] if "int8" in precisions else [])  # the float ONNX is always built and gated


def _resolve(ref):
    """A ``"module:attribute"`` name, imported now; anything else (a class or function given directly) as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_ENGINES: dict[str, EngineSpec] = {}


def register_engine(spec: EngineSpec) -> EngineSpec:
    """Add an engine; a name registered twice, or a precision mmdeploy does not know, is an error."""
    if spec.name in _ENGINES:
        raise ValueError(f"engine {spec.name!r} is registered twice")
    unknown = [p for p in spec.precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"engine {spec.name!r}: unknown precisions {unknown} (known: {', '.join(PRECISIONS)})")
    _ENGINES[spec.name] = spec
    return spec


def unregister_engine(name: str) -> None:
    """Remove an engine (tests that register a toy one remove it after)."""
    _ENGINES.pop(name, None)


def engine_spec(name: str) -> EngineSpec:
    try:
        return _ENGINES[name]
    except KeyError:
        raise MMDeployError(f"unknown engine {name!r}", f"use one of {', '.join(_ENGINES)}") from None


def engine_names() -> tuple[str, ...]:
    """Every registered engine, in registration order (the order of report rows and default lists)."""
    return tuple(_ENGINES)


def deployed_engines() -> tuple[str, ...]:
    """The engines that run exported files (all but the eager reference): what `export` builds and `auto` means."""
    return tuple(n for n, s in _ENGINES.items() if s.artifact)


def tunable_engines() -> tuple[str, ...]:
    return tuple(n for n, s in _ENGINES.items() if s.tunable)


def artifact_of(engine: str) -> str | None:
    """The artifact kind ``engine`` runs (None: eager, or not a registered engine)."""
    spec = _ENGINES.get(engine)
    return spec.artifact if spec else None


def engines_of_artifact(kind: str) -> tuple[str, ...]:
    """The engines that run artifacts of ``kind`` (their stored figures go stale when it is replaced)."""
    return tuple(n for n, s in _ENGINES.items() if s.artifact == kind)


def serves(engine: str, precision: str) -> bool:
    spec = _ENGINES.get(engine)
    return spec is not None and precision in spec.precisions


def names_serving(precision: str) -> list[str]:
    return [n for n, s in _ENGINES.items() if precision in s.precisions]


def describe_engines(names: tuple[str, ...] | None = None) -> str:
    """``torch (...), ort (ONNX Runtime), ... or ov (OpenVINO, CPU)``: the registry (or ``names``) in a CLI help line."""
    specs = [_ENGINES[n] for n in names] if names is not None else list(_ENGINES.values())
    parts = [f"{s.name} ({s.help or s.title})" if s.help or s.title else s.name for s in specs]
    return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else "".join(parts)


# The built-in engines, in the order reports and default lists show them.
# int8 is an exported-graph precision (QDQ ONNX), so eager torch has none; fp16 in torch needs CUDA (engines.torch_runs).
register_engine(EngineSpec("torch", ("fp32", "fp16"), None, "mmdeploy.engines.torch_engine:TorchEngine",
                           loader="mmdeploy.engines.loader:load_torch", title="PyTorch", help="eager, the reference"))
register_engine(EngineSpec("ort", ONNX_PRECISIONS, ONNX_ARTIFACT, "mmdeploy.engines.onnxruntime:OrtEngine", loader="mmdeploy.engines.loader:load_ort",
                           unavailable="mmdeploy.engines.onnxruntime:ort_unavailable_reason", tunable=True, title="ONNX Runtime"))
# TensorRT takes only symmetric int8 scales; ONNX Runtime is fastest with uint8 activations (export/quantize.py).
register_engine(EngineSpec("trt", ("fp32", "fp16", "int8"), TRT_ARTIFACT, "mmdeploy.engines.tensorrt:TrtEngine", loader="mmdeploy.engines.loader:load_trt",
                           unavailable="mmdeploy.engines.trt_probe:trt_unavailable_reason", exporter="mmdeploy.export.tensorrt_step:build_trt_step",
                           int8_symmetric=True, title="TensorRT", help="TensorRT, CUDA"))
# OpenVINO reads the per-size fp32 ONNX and applies its own precision; its int8 reads the per-size QDQ ONNX.
register_engine(EngineSpec("ov", ("fp32", "bf16", "int8"), OV_ARTIFACT, "mmdeploy.engines.openvino:OvEngine", loader="mmdeploy.engines.loader:load_ov",
                           unavailable="mmdeploy.engines.openvino:ov_unavailable_reason", exporter="mmdeploy.export.openvino:build_ov_step",
                           onnx_float="fp32", tunable=True, check="mmdeploy.export.openvino:check_ov_available", title="OpenVINO",
                           help="OpenVINO, CPU"))
