"""Building TensorRT plans: a plan per deployment size from that size's ONNX, recorded in the bundle.

``build_trt_plan`` turns an ONNX file into a serialized plan, with one static optimization profile
(min = opt = max) per batch size and optionally one dynamic profile, a workspace limit, a timing
cache kept beside the plans, and a build record (settings, versions, sha256) for the manifest.
``build_bundle_plan`` does it inside a bundle and records the plan as artifact ``trt/<precision>``.
``TrtBuildOptions`` holds what a plan is built with besides its graph, size and precision.
``derive_profiles``, ``plan_filename`` and ``build_settings`` are pure and tested on the CPU; the
TensorRT calls are tested against a fake ``tensorrt`` module. Running a plan is
``mmdeploy.engines.tensorrt.TrtEngine``; both sides find TensorRT through ``engines/trt_probe.py``.

API facts this code relies on (checked against NVIDIA's documentation, 2026):

* TensorRT 10 Python ``Builder``/``NetworkDefinitionCreationFlag`` page
  (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html):
  ``EXPLICIT_BATCH`` is "[DEPRECATED] Ignored because networks are always explicit batch in
  TensorRT 10.0"; ``STRONGLY_TYPED`` makes every tensor's type come from the graph. So no
  flag is needed for explicit batch, and this module never touches ``EXPLICIT_BATCH``.
* TensorRT 10.x -> 11.x migration, "Removed Python APIs" and "Migrating from Weak Typing to
  Strong Typing" (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/
  tensorrt-10x-to-11x-python-api-reference.html and ...-python-api-patterns.html):
  ``BuilderFlag.FP16/INT8/BF16/FP8``, ``OBEY/PREFER_PRECISION_CONSTRAINTS``,
  ``IBuilderConfig.int8_calibrator`` and the quantization flags are removed; precision comes
  from the ONNX graph (fp16 conversion keeping fp32 I/O, Q/DQ nodes for int8). In 11.0
  ``STRONGLY_TYPED`` is kept for API compatibility and ignored (strong typing is always on;
  trtx-sys docs of ``NetworkDefinitionCreationFlag``). Hence: set ``STRONGLY_TYPED`` when the
  enum has it, else (an old 10.x) fall back to ``BuilderFlag.FP16``/``INT8`` for an fp16/int8 graph, else fail.
* Explicit quantization ("Explicit Quantization" page of the TensorRT developer guide): a graph
  with Q/DQ nodes is built with its INT8 placement as written; with strong typing no precision
  flag is set. Scales must be symmetric (zero point 0), which export/quantize.py writes.
* Build: ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``,
  ``create_timing_cache(blob)`` / ``set_timing_cache(cache, ignore_mismatch)`` /
  ``get_timing_cache().serialize()`` (ITimingCache page), ``create_optimization_profile``,
  ``IOptimizationProfile.set_shape(name, min, opt, max)``, ``add_optimization_profile``,
  ``build_serialized_network(network, config)`` (returns None on failure);
  ``OnnxParser.parse_from_file`` / ``num_errors`` / ``get_error(i).desc()``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mmdeploy.bundle import ONNX, TRT, atomic_write_bytes
from mmdeploy.engines.registry import engine_spec
from mmdeploy.engines.tensorrt import ProfileSpec
from mmdeploy.engines.trt_errors import create_with_log
from mmdeploy.engines.trt_probe import import_trt, make_logger, trt_versions
from mmdeploy.errors import MMDeployError

PRECISIONS = engine_spec("trt").precisions
TIMING_CACHE = "trt/timing.cache"  # relative to the bundle root; one per bundle, shared by its plans
_log = logging.getLogger("mmdeploy.trt")


@dataclass(frozen=True)
class TrtBuildOptions:
    """How a plan is built, besides its graph, size and precision (``mmdeploy export --trt-batch --workspace-gb``).

    ``batch_sizes``: one static profile each; ``dynamic``: one more profile over batches 1..max (and over H/W in
    [1, ``max_dynamic_size``] when that is given); ``tf32``: let fp32 tensors use TF32 tensor cores (off, so that "fp32"
    means fp32); ``timing_cache``: read when present and written back after the build."""

    batch_sizes: Sequence[int] = (1, 32)
    dynamic: bool = False
    workspace_gb: float = 4.0
    timing_cache: Path | str | None = None
    max_dynamic_size: int | None = None
    tf32: bool = False


# -- pure planning: profiles, names, settings -------------------------------------------------
def derive_profiles(
    input_name: str,
    size: int,
    batch_sizes: Sequence[int],
    dynamic: bool = False,
    max_dynamic_size: int | None = None,
    channels: int = 3,
    min_dynamic_size: int = 1,
) -> list[ProfileSpec]:
    """The optimization profiles of one plan, static ones first (profile 0 is the default).

    One static profile (min = opt = max) per batch size: TensorRT picks kernels for ``opt``
    only, so a static profile is the fastest plan for that exact shape. With ``dynamic``, one
    more profile covers batches 1..max(batch_sizes) (for uneven last batches), tuned at the
    largest batch. Its H/W stay at ``size`` unless ``max_dynamic_size`` is given (a graph with
    dynamic H/W): then they range over [min_dynamic_size, max_dynamic_size], tuned at ``size``.
    """
    batches = sorted({int(b) for b in batch_sizes})
    if not batches or batches[0] < 1:
        raise MMDeployError(f"batch sizes must be positive integers, got {list(batch_sizes)}", "pass e.g. --batch 1 --batch 32")
    if size < 1 or channels < 1:
        raise MMDeployError(f"bad input geometry: size {size}, channels {channels}", "sizes are positive pixel counts")
    profiles = [ProfileSpec(input_name, (b, channels, size, size), (b, channels, size, size), (b, channels, size, size)) for b in batches]
    if dynamic:
        lo_hw, hi_hw = size, size
        if max_dynamic_size is not None:
            if not 1 <= min_dynamic_size <= size <= max_dynamic_size:
                raise MMDeployError(
                    f"dynamic size range [{min_dynamic_size}, {max_dynamic_size}] must contain the deployment size {size}",
                    "raise the maximum dynamic size or lower the minimum",
                )
            lo_hw, hi_hw = min_dynamic_size, max_dynamic_size
        top = batches[-1]
        spec = ProfileSpec(input_name, (1, channels, lo_hw, lo_hw), (top, channels, size, size), (top, channels, hi_hw, hi_hw))
        if spec not in profiles:  # batch sizes (1,) at a fixed size: the "dynamic" range is the static profile
            profiles.append(spec)
    return profiles


def plan_filename(size: int, precision: str, batch: int | None = None) -> str:
    """Bundle-relative path of a plan: ``sizes/160/model.fp16.plan`` (all profiles in one plan),
    or ``sizes/160/model.fp16.b32.plan`` for a plan built for one batch size only."""
    _check_precision(precision)
    suffix = f".b{int(batch)}" if batch is not None else ""
    return f"sizes/{int(size)}/model.{precision}{suffix}.plan"


def build_settings(input_name: str, size: int, precision: str, options: TrtBuildOptions = TrtBuildOptions(), strongly_typed: bool = True,
                   channels: int = 3) -> dict:
    """What a plan is built with, as the manifest records it (JSON-ready)."""
    _check_precision(precision)
    o = options
    if not o.workspace_gb > 0:
        raise MMDeployError(f"workspace must be positive, got {o.workspace_gb} GB", "pass e.g. --workspace-gb 4")
    profiles = derive_profiles(input_name, size, o.batch_sizes, o.dynamic, o.max_dynamic_size, channels)
    return {
        "size": int(size),
        "precision": precision,
        "precision_source": "graph" if strongly_typed else "builder_flag",
        "strongly_typed": bool(strongly_typed),
        "tf32": bool(o.tf32),
        "workspace_bytes": int(o.workspace_gb * (1 << 30)),
        "batch_sizes": sorted({int(b) for b in o.batch_sizes}),
        "dynamic": bool(o.dynamic),
        "profiles": [p.to_dict() for p in profiles],
        "timing_cache": str(o.timing_cache) if o.timing_cache is not None else None,
    }


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise MMDeployError(
            f"TensorRT precision {precision!r} is not supported",
            f"use one of {', '.join(PRECISIONS)}",
        )


# -- build ------------------------------------------------------------------------------------
def _graph_precision(onnx_path: Path) -> str:
    """"int8" if the graph has Q/DQ nodes (explicit quantization), "fp16" if it computes in half precision, else "fp32"."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("mmdeploy.precision") in PRECISIONS:
        return meta["mmdeploy.precision"]
    half = onnx.TensorProto.FLOAT16
    graph = proto.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    if any(t.data_type == half for t in graph.initializer):
        return "fp16"
    if any(v.type.tensor_type.elem_type == half for v in (*graph.value_info, *graph.input, *graph.output)):
        return "fp16"
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == half for a in node.attribute):
            return "fp16"
    return "fp32"




def _input_geometry(network, size: int, batch_sizes: Sequence[int], dynamic_hw: bool) -> tuple[str, int]:
    """The image input's name and channels; refuses graphs whose fixed dims contradict the plan."""
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise MMDeployError(f"expected one image input, the ONNX graph has {names}", "export a classifier with one NCHW input")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 4:
        raise MMDeployError(f"input {tensor.name!r} has shape {shape}, expected NCHW", "export with a 4-D image input")
    n, c, h, w = shape
    if n >= 0 and any(b != n for b in batch_sizes):
        raise MMDeployError(f"the ONNX graph has a fixed batch of {n}; cannot build profiles for batches {sorted(batch_sizes)}",
                            "export the per-size ONNX with a dynamic batch (the default)")
    for dim in (h, w):
        if dim >= 0 and (dim != size or dynamic_hw):
            raise MMDeployError(f"the ONNX graph has fixed H/W {h}x{w}; the plan wants size {size}" + (" with dynamic H/W" if dynamic_hw else ""),
                                "build from that size's own ONNX, or from the dynamic ONNX for a dynamic-size profile")
    return tensor.name, (c if c > 0 else 3)


def _network_flags(trt, precision: str) -> tuple[int, bool]:
    """(flags for create_network, strongly typed?). Never EXPLICIT_BATCH: TensorRT >= 10 ignores it."""
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        return 1 << int(strongly), True
    flag = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if flag and getattr(trt.BuilderFlag, flag, None) is None:
        raise MMDeployError(f"TensorRT {trt.__version__} has neither strongly typed networks nor the {flag} builder flag",
                            "install TensorRT >= 10 (pip install -U 'mmdeploy-mixsize[trt]')")
    return 0, False


def _load_timing_cache(config, path: Path | None) -> tuple[object, bool]:
    """The config's timing cache, seeded from ``path`` when that file is usable here."""
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
    try:
        cache = config.create_timing_cache(blob)
    except Exception:  # a truncated or foreign file
        cache = None
    reused = bool(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        # a cache from another TensorRT version or GPU is refused: start empty, overwrite it after the build
        _log.warning("TensorRT refused the timing cache %s (another TensorRT or GPU?); starting a fresh one", path)
        try:
            cache = config.create_timing_cache(b"")
        except Exception:  # noqa: BLE001
            cache = None
        if cache is None or not config.set_timing_cache(cache, False):
            _log.warning("TensorRT cannot create a timing cache; building without one (slower builds, same plan)")
            return None, False
        reused = False
    return cache, reused


def build_trt_plan(onnx_path: Path, plan_path: Path, size: int, precision: str, options: TrtBuildOptions = TrtBuildOptions()) -> dict:
    """Build a TensorRT plan from ``onnx_path`` and write it atomically to ``plan_path``.

    ``precision`` must match the graph: an fp16 plan is built from the fp16 ONNX (converted
    upstream, fp32 I/O), since TensorRT >= 10 takes precision from the graph. The timing
    cache (``options.timing_cache``) is written back atomically. Returns the build record for
    the manifest: settings, versions, seconds, sha256.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    timing_cache = Path(options.timing_cache) if options.timing_cache is not None else None
    batch_sizes, dynamic, max_dynamic_size = options.batch_sizes, options.dynamic, options.max_dynamic_size
    _check_precision(precision)
    if not onnx_path.is_file():
        raise MMDeployError(f"no ONNX file at {onnx_path}", "run `mmdeploy export BUNDLE --engine onnx` first")
    graph_precision = _graph_precision(onnx_path)
    if graph_precision != precision:
        raise MMDeployError(
            f"{onnx_path.name} is an {graph_precision} graph but a {precision} plan was asked for (TensorRT >= 10 takes precision from the graph)",
            f"build from the {precision} ONNX (`mmdeploy export BUNDLE --engine onnx --precision {precision}`)",
        )
    trt = import_trt()
    started = time.perf_counter()
    logger = make_logger(trt)
    builder = create_with_log(trt.Builder, logger, "Builder")
    flags, strongly_typed = _network_flags(trt, precision)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        text = "; ".join(f"node {e.node()}: {e.desc()}" for e in errors) or "; ".join(logger.errors) or "no details"
        raise MMDeployError(f"TensorRT cannot parse {onnx_path.name}: {text}", "check the graph with `onnx.checker`, or update TensorRT")
    input_name, channels = _input_geometry(network, size, batch_sizes, max_dynamic_size is not None)

    config = builder.create_builder_config()
    settings = build_settings(input_name, size, precision, replace(options, timing_cache=timing_cache), strongly_typed, channels)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    if not settings["tf32"] and getattr(trt.BuilderFlag, "TF32", None) is not None:
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8") and not strongly_typed:
        # Weakly typed (old 10.x): Q/DQ nodes still fix where INT8 runs, but the builder must be allowed INT8 kernels.
        config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
    for spec in derive_profiles(input_name, size, batch_sizes, dynamic, max_dynamic_size, channels):
        profile = builder.create_optimization_profile()
        try:
            profile.set_shape(input_name, spec.min, spec.opt, spec.max)
        except Exception as exc:  # noqa: BLE001  TensorRT raises RuntimeError for shapes it refuses
            said = "; ".join([" ".join(str(exc).split()), *logger.errors[-2:]])
            raise MMDeployError(f"TensorRT rejected the optimization profile {spec.to_dict()}: {said}",
                                "check the batch sizes and the graph's input shape") from None
        if config.add_optimization_profile(profile) < 0:
            raise MMDeployError(f"TensorRT rejected the optimization profile {spec.to_dict()}", "check the batch sizes and the graph's input shape")
    cache = None
    if timing_cache is not None:
        cache, settings["timing_cache_reused"] = _load_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "no details from TensorRT"
        raise MMDeployError(f"TensorRT failed to build a {precision} plan for size {size}: {detail}",
                            "lower the batch sizes or raise --workspace-gb; MMDEPLOY_DEBUG=1 shows TensorRT's log")
    plan = bytes(serialized)
    atomic_write_bytes(plan_path, plan)
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return {
        "settings": settings,
        "versions": trt_versions(trt),
        "build_seconds": round(time.perf_counter() - started, 3),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "plan_bytes": len(plan),
        "profiles": settings["batch_sizes"],
        "dynamic": bool(dynamic),
    }


def build_bundle_plan(bundle, size: int, precision: str = "fp32", onnx_path: Path | None = None,
                      options: TrtBuildOptions = TrtBuildOptions()) -> dict:
    """Build size ``size``'s plan inside ``bundle`` and record it as artifact ``trt/<precision>``.

    Reads the size's ``onnx/<precision>`` artifact unless ``onnx_path`` is given, uses the
    bundle's timing cache (unless ``options`` names another), and sets the manifest entry that
    ``TrtEngine.from_bundle`` reads (the caller saves the manifest).
    """
    hint = f"run `mmdeploy export {bundle.root} --engine onnx --precision {precision}` first"
    if onnx_path is None:
        art = bundle.artifact(size, ONNX, precision)
        if not art:
            raise MMDeployError(f"no {precision} ONNX for size {size} in {bundle.root}", hint)
        onnx_path = bundle.artifact_path(art, hint)
    rel = bundle.fresh_name(plan_filename(size, precision))  # never over a plan the committed manifest lists
    if options.timing_cache is None:
        options = replace(options, timing_cache=bundle.path(TIMING_CACHE))
    record = build_trt_plan(onnx_path, bundle.path(rel), size, precision, options)
    if record["settings"].get("timing_cache"):
        record["settings"]["timing_cache"] = TIMING_CACHE  # bundle-relative, like every path in the manifest
    entry = {"plan": rel, **record}
    bundle.set_artifact(size, TRT, precision, entry)
    return entry


