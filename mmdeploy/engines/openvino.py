"""OpenVINO on the CPU: the per-size ONNX compiled per batch shape, fp32 or bf16, with a model cache.

Batch 1 (and small batches) compile with OpenVINO's latency hint: one stream using every
thread. Large batches compile with the throughput hint and one stream per thread; the batch
is split into equal parts that run side by side, one infer request per stream. Shapes are static
per compiled model (OpenVINO plans better for fixed shapes); compiled models are kept per
batch shape, and OpenVINO's model cache (``CACHE_DIR``) makes a recompile a blob load.

``fp32`` pins OpenVINO's inference precision to f32: on CPUs with native bf16 its default is
bf16, which would be measured under the wrong name. ``int8`` pins its non-quantized parts to f32
too, unless the tuned policy says ``precision_hint: cpu`` (OpenVINO's default for the CPU). A
policy with a ``preset`` compiles with OpenVINO's defaults (``default``: no hints) or its
throughput hint alone (``throughput``: the batch split over the requests OpenVINO asks for). ``bf16`` is refused where the CPU has no
native bf16 (OpenVINO would emulate it, slower than fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmdeploy.engines.base import Engine, InputMeta
from mmdeploy.engines.registry import engine_spec
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.threads import ThreadPolicy, usable_cores

PRECISIONS = engine_spec("ov").precisions  # int8: the per-size QDQ INT8 ONNX, quantized ops in int8, the rest in f32
CACHE_DIR = "ov_cache"  # in the bundle; OpenVINO owns the blob files in it
THROUGHPUT_MIN_BATCH = 8  # from this batch on, split the batch over streams (throughput hint)


def ov_unavailable_reason() -> str:
    try:
        import openvino  # noqa: F401
    except ImportError:
        # A default dependency where OpenVINO publishes wheels (Linux x86_64/aarch64, Windows x86-64, macOS arm64).
        return "openvino is not installed (pip install openvino, where it has wheels for this platform)"
    return ""


def _cpu_flags() -> set[str] | None:
    """The x86 CPU flags from /proc/cpuinfo, or None where there are none to read (another OS, another ISA)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), as OpenVINO and the CPU flags both say."""
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return False
    flags = _cpu_flags()
    return flags is None or bool(flags & {"avx512_bf16", "amx_bf16"})


def check_precision(precision: str) -> None:
    """Refuse, in one line, a precision the ov engine cannot serve well on this CPU."""
    if precision not in PRECISIONS:
        raise MMDeployError(f"the ov engine has no precision {precision!r}", "use --precision fp32, bf16 or int8 with --engine ov")
    if precision == "bf16" and not native_bf16():
        raise MMDeployError("this CPU has no native bf16 (AVX-512 BF16 or AMX), so OpenVINO bf16 would be emulated and slow",
                            "use --precision fp32 with --engine ov on this machine")


class OvEngine(Engine):
    name = "ov"

    def __init__(self, onnx_path: Path, size: int, precision: str = "fp32", threads: int | None = None,
                 cache_dir: Path | None = None, streams: int | None = None, throughput_min_batch: int = THROUGHPUT_MIN_BATCH,
                 policy: ThreadPolicy | None = None):
        super().__init__(size, precision, "cpu")
        self.onnx_path = Path(onnx_path)
        if policy is not None:  # tuned settings (or a candidate the tuner times): threads and streams together
            threads, streams = policy.threads, policy.streams
        self.threads = threads or usable_cores()
        self.streams = streams or self.threads
        self.policy = policy or ThreadPolicy(self.threads, False, "default", self.streams)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.throughput_min_batch = throughput_min_batch

    def compile_config(self, throughput: bool) -> dict:
        """The OpenVINO properties of one compiled model (also what the model cache keys on)."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        preset = self.policy.preset
        config = {}
        # fp32 and bf16 are pinned whatever the policy (a bf16 run must not be measured as fp32); int8's non-quantized
        # parts are pinned to f32 unless the policy leaves OpenVINO's default for this CPU (bf16 where native).
        if not (self.precision == "int8" and self.policy.precision_hint == "cpu"):
            config[hints.inference_precision] = ov.Type.bf16 if self.precision == "bf16" else ov.Type.f32
        if preset == "throughput":  # OpenVINO's throughput hint alone: it picks its streams and threads
            config[hints.performance_mode] = hints.PerformanceMode.THROUGHPUT
        elif not preset:  # "default": no hint at all
            config[hints.performance_mode] = hints.PerformanceMode.THROUGHPUT if throughput else hints.PerformanceMode.LATENCY
            config[props.inference_num_threads] = self.threads
            if throughput:
                config[props.num_streams] = self.streams
        if self.cache_dir is not None:
            config[props.cache_dir] = str(self.cache_dir)
        return config

    def _activate(self) -> None:
        reason = ov_unavailable_reason()
        if reason:
            raise MMDeployError(f"the ov engine is unavailable: {reason}", "install openvino, or use --engine ort")
        check_precision(self.precision)
        import openvino as ov

        self.core = ov.Core()
        try:
            graph_input = self.core.read_model(str(self.onnx_path)).inputs[0]
        except Exception as exc:  # noqa: BLE001  (OpenVINO raises its own RuntimeError types)
            raise MMDeployError(f"OpenVINO cannot read {self.onnx_path}: {str(exc).splitlines()[0][:160]}", "re-export the bundle") from None
        self._input = InputMeta(graph_input.get_any_name(), (None, 3, self.size, self.size))  # each batch compiles on first use, at this size
        self._compiled: dict[int, tuple] = {}
        self._input_buffers: dict[int, np.ndarray] = {}  # batch -> the single request's input tensor memory (batches run whole)

    def _deactivate(self) -> None:
        self._compiled = {}
        self._input_buffers = {}
        self.core = None

    def _input_metadata(self) -> InputMeta:
        return self._input

    def _plan(self, batch: int) -> tuple:
        """(compiled model, infer requests, part size) for one input batch, compiled on first use."""
        if batch in self._compiled:
            return self._compiled[batch]
        import openvino as ov

        preset = self.policy.preset
        throughput = batch >= self.throughput_min_batch and self.streams > 1 and not preset
        part = -(-batch // self.streams) if throughput else batch
        if preset == "throughput" and batch > 1:  # split over the infer requests OpenVINO's hint asks for
            part = -(-batch // self._optimal_requests())
        model = self.core.read_model(str(self.onnx_path))
        model.reshape({model.inputs[0]: ov.PartialShape([part, 3, self.size, self.size])})
        compiled = self.core.compile_model(model, "CPU", self.compile_config(throughput))
        # One infer request per stream, started together and waited on in turn: no Python callbacks
        # (they run on OpenVINO's threads and need the GIL, which a blocking wait can hold).
        requests = [compiled.create_infer_request() for _ in range(-(-batch // part))]
        self._compiled[batch] = (compiled, requests, part)
        if part == batch:
            self._input_buffers[batch] = requests[0].get_input_tensor(0).data
        return self._compiled[batch]

    def _optimal_requests(self) -> int:
        """How many infer requests OpenVINO's throughput hint wants here (read from a batch-1 compile of the model)."""
        import openvino as ov
        import openvino.properties as props

        model = self.core.read_model(str(self.onnx_path))
        model.reshape({model.inputs[0]: ov.PartialShape([1, 3, self.size, self.size])})
        compiled = self.core.compile_model(model, "CPU", self.compile_config(False))
        return max(1, int(compiled.get_property(props.optimal_number_of_infer_requests)))

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._infer_numpy(x.detach().cpu().numpy()))

    def _infer_numpy(self, values: np.ndarray) -> np.ndarray:
        n = values.shape[0]
        _, requests, part = self._plan(n)
        if part == n:
            # Written into the request's own input memory (which also converts dtype and layout), then a bare infer():
            # infer({0: arr}) wraps the input and builds a dict of every output on each call. On a 1-op graph that is
            # 17-18 us of fixed cost per call against 10 us (benchmarks/results/int8_batch1_quiet.txt), a tenth of a
            # 0.07-0.09 ms batch-1 call at 16 px.
            buffer = self._input_buffers[n]
            if values.shape != buffer.shape:  # numpy would broadcast a smaller input into the buffer silently
                raise MMDeployError(f"the ov engine for size {self.size} takes {tuple(buffer.shape)} inputs, got {tuple(values.shape)}",
                                    f"pass NCHW images resized to {self.size}x{self.size}")
            buffer[...] = values
            requests[0].infer()
            return requests[0].get_output_tensor(0).data.copy()
        arr = np.ascontiguousarray(values, dtype=np.float32)
        if len(requests) * part > n:  # the last part zero-padded to the compiled shape
            arr = np.concatenate([arr, np.zeros((len(requests) * part - n, *arr.shape[1:]), np.float32)])
        for i, request in enumerate(requests):
            request.start_async({0: arr[i * part : (i + 1) * part]}, share_inputs=True)
        outs = []
        for request in requests:
            request.wait()
            outs.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(outs)[:n]

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads, "streams": self.streams, "throughput_min_batch": self.throughput_min_batch,
                **{k: v for k, v in (("preset", self.policy.preset), ("precision_hint", self.policy.precision_hint)) if v},
                "cache_dir": str(self.cache_dir) if self.cache_dir else None}
