"""Native TensorRT: a plan per deployment size built from that size's ONNX, and the ``trt`` engine.

Two halves:

* **Build** (``build_trt_plan``): ONNX -> serialized plan, with one static optimization profile
  (min = opt = max) per batch size and optionally one dynamic profile, a workspace limit, a
  timing cache kept beside the plans, and a build record (settings, versions, sha256) for
  the manifest. ``derive_profiles``, ``plan_filename`` and ``build_settings`` are pure and
  tested on the CPU; the TensorRT calls are tested against a fake ``tensorrt`` module.
* **Run** (``TrtEngine``): deserialize, pick the profile that matches the batch, bind torch
  CUDA tensors by tensor name, ``execute_async_v3`` on a torch CUDA stream (no pycuda).

``tensorrt`` is imported lazily everywhere: this module imports without it, and
``trt_unavailable_reason()`` says in one line what is missing.

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
* Run (TensorRT 10 name-based I/O, migration guide 8.x -> 10.x): ``num_io_tensors``,
  ``get_tensor_name(i)``, ``get_tensor_mode``, ``get_tensor_dtype``,
  ``get_tensor_profile_shape(name, profile)``; context ``set_optimization_profile_async(i,
  stream)``, ``set_input_shape``, ``get_tensor_shape``, ``set_tensor_address(name, ptr)``,
  ``execute_async_v3(stream_handle)``. ``execute_v2``/bindings are gone from this path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdeploy.bundle import atomic_write_bytes
from mmdeploy.engines.base import Engine
from mmdeploy.engines.trt_errors import create_with_log, import_hint, import_problem
from mmdeploy.errors import MMDeployError

PRECISIONS = ("fp32", "fp16", "int8")
TIMING_CACHE = "trt/timing.cache"  # relative to the bundle root; one per bundle, shared by its plans
MIN_TRT_MAJOR = 10
_INSTALL_HINT = "pip install 'mmdeploy-mixsize[trt]' on a machine with an NVIDIA GPU"
_log = logging.getLogger("mmdeploy.trt")


# -- availability ----------------------------------------------------------------------------
def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _trt_import_problem() -> str:
    """"" if ``import tensorrt`` works and is new enough, else what is wrong with it."""
    try:
        import tensorrt as trt
    except Exception as exc:  # not installed, or the bindings without their native libraries (ImportError, OSError)
        return import_problem(exc)
    major = _major(getattr(trt, "__version__", "0"))
    if major < MIN_TRT_MAJOR:
        return f"TensorRT {trt.__version__} is too old (need >= {MIN_TRT_MAJOR})"
    return ""


def _missing() -> tuple[str, str]:
    """(what is missing, how to fix it); ("", "") when the ``trt`` engine can run here."""
    trt_problem = _trt_import_problem()
    gpu_problem = "" if _cuda_available() else "no CUDA GPU is visible to PyTorch"
    if trt_problem:
        return " and ".join(p for p in (trt_problem, gpu_problem) if p), import_hint(trt_problem, _INSTALL_HINT)
    if gpu_problem:
        return gpu_problem, f"run on a machine with an NVIDIA GPU and a CUDA build of PyTorch (this one is {torch.__version__}, CUDA {torch.version.cuda or 'none'})"
    return "", ""


def trt_unavailable_reason() -> str:
    """"" if the ``trt`` engine can run here, else one line saying what is missing and how to fix it."""
    problem, fix = _missing()
    return f"{problem} ({fix})" if problem else ""


def _require_trt_engine() -> None:
    problem, fix = _missing()
    if problem:
        raise MMDeployError(f"the trt engine is unavailable: {problem}", fix)


def _import_trt():
    problem = _trt_import_problem()
    if problem:
        raise MMDeployError(f"the trt engine is unavailable: {problem}", import_hint(problem, _INSTALL_HINT))
    import tensorrt as trt

    return trt


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


# -- pure planning: profiles, names, settings -------------------------------------------------
@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile for the image input: NCHW shapes TensorRT accepts and tunes for."""

    input_name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))

    def to_dict(self) -> dict:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


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


def build_settings(
    input_name: str,
    size: int,
    precision: str,
    batch_sizes: Sequence[int] = (1, 32),
    dynamic: bool = False,
    max_dynamic_size: int | None = None,
    workspace_gb: float = 4.0,
    timing_cache: Path | str | None = None,
    strongly_typed: bool = True,
    tf32: bool = False,
    channels: int = 3,
) -> dict:
    """What a plan is built with, as the manifest records it (JSON-ready)."""
    _check_precision(precision)
    if not workspace_gb > 0:
        raise MMDeployError(f"workspace must be positive, got {workspace_gb} GB", "pass e.g. --workspace-gb 4")
    profiles = derive_profiles(input_name, size, batch_sizes, dynamic, max_dynamic_size, channels)
    return {
        "size": int(size),
        "precision": precision,
        "precision_source": "graph" if strongly_typed else "builder_flag",
        "strongly_typed": bool(strongly_typed),
        "tf32": bool(tf32),
        "workspace_bytes": int(workspace_gb * (1 << 30)),
        "batch_sizes": sorted({int(b) for b in batch_sizes}),
        "dynamic": bool(dynamic),
        "profiles": [p.to_dict() for p in profiles],
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
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


def _make_logger(trt):
    """A TensorRT logger that keeps errors (for the exception) and sends warnings to logging."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(str(msg))
            elif severity == sev.WARNING:
                _log.warning("TensorRT: %s", msg)
            else:
                _log.debug("TensorRT: %s", msg)

    return _Logger()


def trt_versions(trt=None) -> dict:
    """TensorRT, CUDA and GPU identity, recorded with every plan (a plan only runs where these match)."""
    info = {"tensorrt": getattr(trt, "__version__", None), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cuda_driver": None, "gpu": None, "compute_capability": None}
    if _cuda_available():
        try:
            info["gpu"] = torch.cuda.get_device_name()
            info["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
        except Exception:  # a broken driver still lets the build record be written
            pass
    try:
        import pynvml  # nvidia-ml-py: the only public way to the driver release (e.g. 580.159)

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["cuda_driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    return info


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


def build_trt_plan(
    onnx_path: Path,
    plan_path: Path,
    size: int,
    precision: str,
    batch_sizes: Sequence[int] = (1, 32),
    dynamic: bool = False,
    workspace_gb: float = 4.0,
    timing_cache: Path | None = None,
    max_dynamic_size: int | None = None,
    tf32: bool = False,
) -> dict:
    """Build a TensorRT plan from ``onnx_path`` and write it atomically to ``plan_path``.

    ``precision`` must match the graph: an fp16 plan is built from the fp16 ONNX (converted
    upstream, fp32 I/O), since TensorRT >= 10 takes precision from the graph. ``tf32`` lets
    fp32 tensors use TF32 tensor cores (off by default, so that "fp32" means fp32). The timing
    cache at ``timing_cache`` is read when present and written back (atomically) after the
    build. Returns the build record for the manifest: settings, versions, seconds, sha256.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    _check_precision(precision)
    if not onnx_path.is_file():
        raise MMDeployError(f"no ONNX file at {onnx_path}", "run `mmdeploy export BUNDLE --engine onnx` first")
    graph_precision = _graph_precision(onnx_path)
    if graph_precision != precision:
        raise MMDeployError(
            f"{onnx_path.name} is an {graph_precision} graph but a {precision} plan was asked for (TensorRT >= 10 takes precision from the graph)",
            f"build from the {precision} ONNX (`mmdeploy export BUNDLE --engine onnx --precision {precision}`)",
        )
    trt = _import_trt()
    started = time.perf_counter()
    logger = _make_logger(trt)
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
    settings = build_settings(input_name, size, precision, batch_sizes, dynamic, max_dynamic_size, workspace_gb,
                              timing_cache, strongly_typed, tf32, channels)
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


def build_bundle_plan(bundle, size: int, precision: str = "fp32", onnx_path: Path | None = None, **options) -> dict:
    """Build size ``size``'s plan inside ``bundle`` and record it as artifact ``trt/<precision>``.

    Reads the size's ``onnx/<precision>`` artifact unless ``onnx_path`` is given, uses the
    bundle's timing cache, and sets the manifest entry that ``TrtEngine.from_bundle`` reads
    (the caller saves the manifest). ``options`` go to ``build_trt_plan``.
    """
    from mmdeploy.bundle import ONNX, TRT

    hint = f"run `mmdeploy export {bundle.root} --engine onnx --precision {precision}` first"
    if onnx_path is None:
        art = bundle.artifact(size, ONNX, precision)
        if not art:
            raise MMDeployError(f"no {precision} ONNX for size {size} in {bundle.root}", hint)
        onnx_path = bundle.artifact_path(art, hint)
    rel = bundle.fresh_name(plan_filename(size, precision))  # never over a plan the committed manifest lists
    options.setdefault("timing_cache", bundle.path(TIMING_CACHE))
    record = build_trt_plan(onnx_path, bundle.path(rel), size, precision, **options)
    if record["settings"].get("timing_cache"):
        record["settings"]["timing_cache"] = TIMING_CACHE  # bundle-relative, like every path in the manifest
    entry = {"plan": rel, **record}
    bundle.set_artifact(size, TRT, precision, entry)
    return entry


# -- run --------------------------------------------------------------------------------------
def _torch_dtype(trt, dt) -> torch.dtype:
    names = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32, "INT64": torch.int64,
             "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, dtype in names.items():
        member = getattr(trt.DataType, name, None)
        if member is not None and dt == member:
            return dtype
    raise MMDeployError(f"TensorRT tensor type {dt} has no torch equivalent here", "rebuild the plan with fp32 inputs and outputs")


class TrtEngine(Engine):
    """A deserialized TensorRT plan for one size; torch CUDA tensors in and out, one CUDA stream."""

    name = "trt"

    def __init__(self, plan_path: Path, size: int, precision: str = "fp32", device: str | None = None,
                 batch: int | None = None, build_versions: dict | None = None):
        super().__init__(size, precision, device or "cuda")
        self.plan_path = Path(plan_path)
        self.batch = batch
        self.build_versions = build_versions or {}

    @classmethod
    def from_bundle(cls, bundle, size: int, precision: str = "fp32", batch: int | None = None, device: str | None = None, **_) -> TrtEngine:
        from mmdeploy.bundle import TRT

        hint = f"run `mmdeploy export {bundle.root} --engine trt --precision {precision}` on a machine with TensorRT and an NVIDIA GPU"
        art = bundle.artifact(size, TRT, precision)
        if not art or not bundle.path(art.file).is_file():
            raise MMDeployError(f"no TensorRT {precision} plan for size {size} in {bundle.root}", hint)
        profiles = [int(b) for b in art.fields.get("profiles", [])]
        if batch is not None and profiles and batch not in profiles and not art.fields.get("dynamic"):
            raise MMDeployError(f"the size-{size} {precision} plan has profiles for batches {profiles}, not {batch}",
                                f"rebuild with that batch: `mmdeploy export {bundle.root} --engine trt --trt-batch {batch}`")
        _require_trt_engine()
        return cls(bundle.artifact_path(art, hint), size, precision, device=device, batch=batch, build_versions=art.fields.get("versions"))

    # lifecycle
    def activate(self) -> None:
        _require_trt_engine()
        import tensorrt as trt

        self._trt = trt
        self._logger = _make_logger(trt)
        self._runtime = create_with_log(trt.Runtime, self._logger, "Runtime")
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            built = self.build_versions
            raise MMDeployError(
                f"TensorRT {trt.__version__} cannot load {self.plan_path.name} (built with TensorRT {built.get('tensorrt', '?')} "
                f"on {built.get('gpu', '?')}): {'; '.join(self._logger.errors[-2:]) or 'no details'}",
                "plans are tied to a TensorRT version and GPU: rebuild with `mmdeploy export BUNDLE --engine trt`",
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise MMDeployError(f"{self.plan_path.name} has inputs {inputs} and outputs {outputs}; expected one of each",
                                "build the plan from a classifier's ONNX")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._in_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.output_name))
        self._profiles = [
            ProfileSpec(self.input_name, *(tuple(int(d) for d in s) for s in self._engine.get_tensor_profile_shape(self.input_name, i)))
            for i in range(self._engine.num_optimization_profiles)
        ]
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise MMDeployError(f"TensorRT could not create an execution context for {self.plan_path.name}",
                                "free GPU memory (another process may hold it) and retry")
        self._stream = torch.cuda.Stream(device=self.device)
        self._active_profile = 0
        self._shape: tuple[int, ...] | None = None
        super().activate()

    def deactivate(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.synchronize()
        # context before engine before runtime: each holds memory the next one owns
        for attr in ("_context", "_engine", "_runtime", "_stream"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        super().deactivate()

    def synchronize(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()

    # inference
    def _profile_for(self, shape: tuple[int, ...]) -> int:
        """The plan's profile for this input shape: an exact static one first, else a range that holds it."""
        for i, p in enumerate(self._profiles):
            if p.static and p.min == shape:
                return i
        for i, p in enumerate(self._profiles):
            if p.accepts(shape):
                return i
        batches = sorted(p.min[0] for p in self._profiles if p.static)
        raise MMDeployError(f"the size-{self.size} plan has no profile for input shape {list(shape)} (static batches {batches})",
                            "use one of those batch sizes, or rebuild with `mmdeploy export BUNDLE --engine trt --trt-batch N`")

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        ctx, stream = self._context, self._stream
        shape = tuple(int(d) for d in x.shape)
        profile = self._profile_for(shape)
        # the input may come from the caller's stream: ours must not read it before it is written
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            if profile != self._active_profile:
                if not ctx.set_optimization_profile_async(profile, stream.cuda_stream):
                    raise MMDeployError(f"TensorRT refused optimization profile {profile}", "rebuild the plan")
                self._active_profile, self._shape = profile, None
            if shape != self._shape:
                if not ctx.set_input_shape(self.input_name, shape):
                    raise MMDeployError(f"TensorRT refused input shape {list(shape)} for profile {profile}", "rebuild the plan")
                self._shape = shape
            inp = x.to(self.device, self._in_dtype, non_blocking=True).contiguous()
            out = torch.empty(tuple(int(d) for d in ctx.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device=self.device)
            ctx.set_tensor_address(self.input_name, inp.data_ptr())
            ctx.set_tensor_address(self.output_name, out.data_ptr())
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise MMDeployError(f"TensorRT execution failed for input shape {list(shape)}", "MMDEPLOY_DEBUG=1 shows TensorRT's log")
            return out.float().cpu()  # the copy waits on this stream, so `inp` and `out` outlive the kernels

    def describe(self) -> dict:
        info = {**super().describe(), "plan": os.fspath(self.plan_path)}
        if getattr(self, "_trt", None) is not None:
            info["tensorrt"] = self._trt.__version__
        if getattr(self, "_profiles", None):
            info["profiles"] = [p.to_dict() for p in self._profiles]
        return info
