"""Loaders: from a bundle to a runner (Polygraphy's loader/runner split).

A loader finds what one engine needs in a bundle (the artifact file, verified against the manifest; the settings
`mmdeploy bench --tune` stored for this machine) and hands the runner plain values: a path, a size, a precision, a
``ThreadPolicy``. Runners (``engines/onnxruntime.py``, ``openvino.py``, ``tensorrt.py``, ``torch_engine.py``) import
nothing from the bundle, the tuner or the exporters; the dependency runs one way: loader -> runners -> base.

Each registry entry names its loader (``EngineSpec.loader``), called as ``loader(runner, bundle, size, precision,
**options)`` with the entry's runner class, so a new engine that runs an existing artifact (the toy engine in
tests/test_engine_registry.py) reuses a loader by naming it. A loader's options are its keyword-only parameters;
options with the same name mean the same thing in every engine: ``batch`` (int: the batch the engine will be called
with; every loader takes it), ``device`` (str: "cpu", "cuda", "cuda:N"), ``threads`` (int: intra-op CPU threads),
``policy`` (``ThreadPolicy``). An option an engine does not have is refused, naming it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from mmdeploy.engines.registry import ONNX_ARTIFACT, OV_ARTIFACT, TRT_ARTIFACT, engine_spec
from mmdeploy.engines.tensor_names import BATCH_DIM, HEIGHT_DIM, WIDTH_DIM
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.settings import stored_policy

if TYPE_CHECKING:
    from mmdeploy.engines.base import Engine
    from mmdeploy.latency.threads import ThreadPolicy


def load_engine(bundle, name: str, size: int, precision: str = "fp32", **options) -> Engine:
    """The ``name`` engine for one size of ``bundle`` (a ``Bundle`` or its folder), not yet activated:
    ``with load_engine("bundle", "ort", 24) as run: logits = run(x)``."""
    spec = engine_spec(name)
    loader = spec.loader_function()
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise MMDeployError(f"the {name} engine has no option {', '.join(repr(k) for k in unknown)}",
                            f"its options are: {', '.join(option_names(name))}")
    if isinstance(bundle, (str, Path)):
        from mmdeploy.bundle import Bundle

        bundle = Bundle.open(bundle)
    return loader(spec.runner_class(), bundle, size, precision, **options)


def option_names(name: str) -> list[str]:
    """The options the ``name`` engine takes: its loader's keyword-only parameters, in their order."""
    params = inspect.signature(engine_spec(name).loader_function()).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def _export_hint(bundle, engine: str, precision: str) -> str:
    return f"run `mmdeploy export {bundle.root} --engine {engine} --precision {precision}`"


def load_torch(runner, bundle, size: int, precision: str = "fp32", *, batch: int | None = None, device: str | None = None,
               policy: ThreadPolicy | None = None) -> Engine:
    """The eager model with size ``size``'s calibrated weights. ``batch`` is accepted like every engine's: eager torch
    runs any batch."""
    return runner(bundle.build_model(size), size, precision, device=device, policy=policy)


def load_ort(runner, bundle, size: int, precision: str = "fp32", *, variant: str = "per-size", batch: int | None = None,
             tuned_batch: int | None = None, policy: ThreadPolicy | None = None, threads: int | None = None,
             providers: list[str] | None = None) -> Engine:
    """The ONNX of one size (``variant="dynamic"``: the dynamic ONNX, its H and W pinned to ``size``); unless ``policy``
    or ``threads`` is given, with the settings `mmdeploy bench --tune` stored for the batch nearest ``tuned_batch``
    (or ``batch``)."""
    if variant == "dynamic":
        art = bundle.artifact(None, ONNX_ARTIFACT, precision)
        fixed = {HEIGHT_DIM: size, WIDTH_DIM: size, **({BATCH_DIM: batch} if batch else {})}
    else:
        art = bundle.artifact(size, ONNX_ARTIFACT, precision)
        fixed = {BATCH_DIM: batch} if batch else {}
    hint = _export_hint(bundle, "ort", precision)
    if not art or not bundle.path(art.file).exists():
        raise MMDeployError(f"no {variant} {precision} ONNX for size {size} in {bundle.root}", hint)
    if policy is None and threads is None:
        policy = stored_policy(bundle.engine_settings, runner.name, precision, size, tuned_batch or batch)
    return runner(bundle.artifact_path(art, hint), size, precision, providers=providers, threads=threads, fixed_dims=fixed,
                  variant=variant, policy=policy)


def load_trt(runner, bundle, size: int, precision: str = "fp32", *, batch: int | None = None, device: str | None = None) -> Engine:
    """The TensorRT plan of one size; ``batch`` must be one the plan has a profile for."""
    from mmdeploy.engines.trt_probe import require_trt_engine

    hint = f"{_export_hint(bundle, 'trt', precision)} on a machine with TensorRT and an NVIDIA GPU"
    art = bundle.artifact(size, TRT_ARTIFACT, precision)
    if not art or not bundle.path(art.file).is_file():
        raise MMDeployError(f"no TensorRT {precision} plan for size {size} in {bundle.root}", hint)
    profiles = [int(b) for b in art.fields.get("profiles", [])]
    if batch is not None and profiles and batch not in profiles and not art.fields.get("dynamic"):
        raise MMDeployError(f"the size-{size} {precision} plan has profiles for batches {profiles}, not {batch}",
                            f"rebuild with that batch: `mmdeploy export {bundle.root} --engine trt --trt-batch {batch}`")
    require_trt_engine()
    return runner(bundle.artifact_path(art, hint), size, precision, device=device, batch=batch, build_versions=art.fields.get("versions"))


def ov_record(bundle, size: int, precision: str):
    """The gated ov entry (``ArtifactRecord``) of one (size, precision) in the manifest, or None."""
    return bundle.artifact(size, OV_ARTIFACT, precision)


def load_ov(runner, bundle, size: int, precision: str = "fp32", *, batch: int | None = None, threads: int | None = None,
            streams: int | None = None, throughput_min_batch: int | None = None, tuned_batch: int | None = None,
            policy: ThreadPolicy | None = None) -> Engine:
    """The gated ov engine of one size. ``batch`` is accepted like every engine's: each batch shape compiles on first use.
    Unless ``policy``, ``threads`` or ``streams`` is given, threads and streams are the ones `mmdeploy bench --tune`
    stored for the batch nearest ``tuned_batch`` (or ``batch``)."""
    from mmdeploy.engines.openvino import CACHE_DIR
    from mmdeploy.latency.threads import ov_default_policy

    if policy is None and threads is None and streams is None:
        policy = stored_policy(bundle.engine_settings, runner.name, precision, size, tuned_batch or batch, default=ov_default_policy())
    record = ov_record(bundle, size, precision)
    hint = _export_hint(bundle, "ov", precision)
    if not record or not bundle.path(record.file).exists():
        raise MMDeployError(f"no gated ov {precision} engine for size {size} in {bundle.root}", hint)
    extra = {} if throughput_min_batch is None else {"throughput_min_batch": throughput_min_batch}
    return runner(bundle.artifact_path(record, hint), size, precision, threads=threads, cache_dir=bundle.path(record.cache_dir or CACHE_DIR),
                  streams=streams, policy=policy, **extra)
