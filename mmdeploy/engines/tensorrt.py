"""Native TensorRT at run time: the ``trt`` engine (``TrtEngine``) runs a plan built by ``export/tensorrt.py``.

Deserialize the plan, pick the optimization profile that matches the batch, bind torch CUDA
tensors by tensor name, ``execute_async_v3`` on a torch CUDA stream (no pycuda). Whether TensorRT
can run here, and the identity recorded with each plan, come from ``engines/trt_probe.py``;
``tensorrt`` is imported lazily, so this module imports without it.

API facts this code relies on (TensorRT 10 name-based I/O, NVIDIA's migration guide 8.x -> 10.x):
``num_io_tensors``, ``get_tensor_name(i)``, ``get_tensor_mode``, ``get_tensor_dtype``,
``get_tensor_profile_shape(name, profile)``; context ``set_optimization_profile_async(i,
stream)``, ``set_input_shape``, ``get_tensor_shape``, ``set_tensor_address(name, ptr)``,
``execute_async_v3(stream_handle)``. ``execute_v2``/bindings are gone from this path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdeploy.engines.base import Engine, InputMeta
from mmdeploy.engines.trt_errors import create_with_log
from mmdeploy.engines.trt_probe import make_logger, require_trt_engine
from mmdeploy.errors import MMDeployError


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

    # lifecycle
    def _activate(self) -> None:
        require_trt_engine()
        import tensorrt as trt

        self._trt = trt
        self._logger = make_logger(trt)
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

    def _deactivate(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.synchronize()
        # context before engine before runtime: each holds memory the next one owns
        for attr in ("_context", "_engine", "_runtime", "_stream"):
            if hasattr(self, attr):
                setattr(self, attr, None)

    def synchronize(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()

    def _input_metadata(self) -> InputMeta:
        # a dim is fixed where every profile pins it to one value; the batch usually ranges over the profiles
        lows = [min(p.min[i] for p in self._profiles) for i in range(4)]
        highs = [max(p.max[i] for p in self._profiles) for i in range(4)]
        return InputMeta(self.input_name, tuple(lo if lo == hi else None for lo, hi in zip(lows, highs, strict=True)))

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

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
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
