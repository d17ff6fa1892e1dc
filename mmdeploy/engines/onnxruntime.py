"""ONNX Runtime: one tuned session per size; providers by availability (TensorRT EP, CUDA EP, CPU).

Sessions use full graph optimization, sequential execution with intra-op threads equal to
the cores this process may use, and, for the dynamic ONNX, free-dimension overrides that pin H and W to the
engine's size so ORT plans for fixed shapes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mmdeploy.engines.base import Engine, InputMeta
from mmdeploy.engines.tensor_names import BATCH_DIM, HEIGHT_DIM, WIDTH_DIM
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.threads import ThreadPolicy, ort_default_policy, usable_cores  # noqa: F401  (usable_cores: re-exported)

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_unavailable_reason() -> str:
    """"" if onnxruntime imports, else one line: not installed, or installed and broken (and what to run)."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # a missing package, or half of a mixed onnxruntime/onnxruntime-gpu install removed
        from mmdeploy.engines.ort_providers import installed_ort_distributions, mixed_install_problem

        dists = installed_ort_distributions()
        if not dists:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a CUDA machine)"
        fix = mixed_install_problem(dists) or f"reinstall it: `pip install --force-reinstall {dists[0]}`"
        return f"{dists[0]} is installed but does not import ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); {fix}"
    return ""


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """The providers to try, best first, among those this onnxruntime build has.

    The TensorRT EP is only tried when asked for (``MMDEPLOY_ORT_TRT=1`` or ``providers``):
    its first session builds an engine, which takes minutes, and the native ``trt`` engine
    is the way to TensorRT here. GPU providers the build lists but cannot load (CUDA/cuDNN
    missing) are dropped after one probe, which says so in one line; so ``device`` is right
    before activation too.
    """
    from mmdeploy.engines.ort_providers import usable_providers

    wanted = requested or [p for p in _PREFERRED if p != "TensorrtExecutionProvider" or os.environ.get("MMDEPLOY_ORT_TRT") == "1"]
    return list(usable_providers(tuple(wanted)).providers)


def _gpu_index() -> int:
    """The GPU torch uses in this process (under torchrun: this rank's), for ORT and the io binding alike."""
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _provider_entries(providers: list[str]) -> list:
    """Providers with options: GPU providers run on torch's current GPU, not always GPU 0."""
    gpu = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    return [(p, {"device_id": _gpu_index()}) if p in gpu else p for p in providers]


# Where each free-dimension override name sits in the NCHW input.
_DIM_POSITION = {BATCH_DIM: 0, HEIGHT_DIM: 2, WIDTH_DIM: 3}


# How a default session tuned for usage shared or isolated stops spinning: spin during a run, stop when it returns.
# Measured on a quiet 2-core AMD EPYC (benchmarks/results/ort_spin_modes_quiet.txt, 16-48 px, batch 1 and 32): the
# next engine (OpenVINO) ran as fast after it as after a session that never spins (48 px int8 batch 32: 7.0 ms, 12.7 ms
# after ORT's own default), while allow_spinning=0 made the session itself 5-95% slower (wake-ups between operators).
# The price: a wake-up per call when calls come back to back (+3% to +45% at batch 1, nothing at batch 32).
DEFAULT_SPIN_STOP = ("session.force_spinning_stop", "1")


def session_options(threads: int | None = None, fixed_dims: dict[str, int] | None = None, spinning: bool = False,
                    defaults: bool = False):
    """``defaults``: ONNX Runtime's own session (its thread count, its thread placement), only the free dimensions
    pinned; the session a user who never tuned gets, so `mmdeploy bench --tune` times it beside the explicit settings.
    With ``spinning`` it is exactly that (its workers spin during a run and on after it); without, its workers stop
    spinning once a run returns (:data:`DEFAULT_SPIN_STOP`), so it cannot take the cores from the next engine."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    for name, value in (fixed_dims or {}).items():
        so.add_free_dimension_override_by_name(name, value)
    if defaults:
        if not spinning:
            so.add_session_config_entry(*DEFAULT_SPIN_STOP)
        return so
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or usable_cores()
    so.inter_op_num_threads = 1
    # ORT's worker threads spin-wait between the operators of a run, and by default for a while after
    # it; on a few cores the spinning after a run steals the CPU from whatever runs next (another
    # engine in a round-robin benchmark, the rest of the app: p90/p50 of 3-10x measured here). So
    # spinning is off unless `mmdeploy bench --tune` measured it to be faster, and even then it stops
    # the moment a run returns.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


class OrtEngine(Engine):
    name = "ort"

    def __init__(self, onnx_path: Path, size: int, precision: str = "fp32", providers: list[str] | None = None,
                 threads: int | None = None, fixed_dims: dict[str, int] | None = None, variant: str = "per-size",
                 policy: ThreadPolicy | None = None):
        self.onnx_path = Path(onnx_path)
        self.providers = choose_providers(providers)
        device = "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        super().__init__(size, precision, device)
        self.policy = policy or (ThreadPolicy(threads, False, "user") if threads else ort_default_policy())
        self.threads = self.policy.threads
        self.fixed_dims = fixed_dims or {}
        self.variant = variant

    def _activate(self) -> None:
        import onnxruntime as ort

        so = session_options(self.policy.threads, self.fixed_dims, self.policy.spinning, defaults=self.policy.preset == "default")
        last_error = None
        for i in range(len(self.providers)):
            try:
                self.session = ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=_provider_entries(self.providers[i:]))
                break
            except Exception as exc:  # a provider whose libraries are missing fails here: fall back to the next
                last_error = exc
                warnings.warn(f"ONNX Runtime provider {self.providers[i]} failed ({str(exc).splitlines()[0][:120]}); trying the next", stacklevel=2)
        else:
            raise MMDeployError(f"ONNX Runtime cannot load {self.onnx_path}: {last_error}", "re-export the bundle")
        self.active_provider = self.session.get_providers()[0]
        self.device = "cuda" if self.active_provider != "CPUExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._outputs = [self.output_name]
        shape = self.session.get_inputs()[0].shape
        for name, value in self.fixed_dims.items():  # an override whose name the graph lacks does nothing, silently
            pos = _DIM_POSITION.get(name)
            if pos is not None and len(shape) == 4 and not isinstance(shape[pos], int):
                self.session = None
                raise MMDeployError(f"{self.onnx_path.name}: ONNX Runtime did not pin input dim {name!r} to {value} (the input is {shape})",
                                    "re-export the bundle with this mmdeploy (`mmdeploy export BUNDLE`)")
        if self.variant == "per-size" and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) and tuple(shape[2:]) != (self.size, self.size):
            self.session = None  # a manifest pointing this size at another size's file (ONNX Runtime would say INVALID_ARGUMENT)
            raise MMDeployError(f"{self.onnx_path.name} takes {shape[2]}x{shape[3]} images, not size {self.size}: the bundle lists another size's ONNX for it",
                                "re-export the bundle (`mmdeploy export BUNDLE`), or recalibrate into a new folder if its manifest was edited")
        self.fixed_batch = shape[0] if shape and isinstance(shape[0], int) else None
        self._input_shape = tuple(d if isinstance(d, int) else None for d in shape)  # a named free dim is dynamic

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        b = self.fixed_batch
        if b is None or x.shape[0] == b:
            return self._run(x)
        # A graph with a fixed batch (--static-batch): run it batch by batch, the last one zero-padded.
        outs = []
        for i in range(0, x.shape[0], b):
            part = x[i : i + b]
            n = part.shape[0]
            if n < b:
                part = torch.cat([part, part.new_zeros((b - n, *part.shape[1:]))])
            outs.append(self._run(part)[:n])
        return torch.cat(outs)

    def _input_metadata(self) -> InputMeta:
        return InputMeta(self.input_name, self._input_shape)

    def _infer_numpy(self, x: np.ndarray) -> np.ndarray:
        b = self.fixed_batch
        if self.device == "cpu" and x.dtype == np.float32 and x.flags.c_contiguous and (b is None or x.shape[0] == b):
            return self.session.run(self._outputs, {self.input_name: x})[0]  # no torch on the call path
        return super()._infer_numpy(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.device == "cuda" and torch.cuda.is_available():  # onnxruntime-gpu beside a CPU-only torch: no binding
            return self._infer_cuda(x)
        if x.dtype is torch.float32 and not x.requires_grad and x.is_contiguous() and x.device.type == "cpu":
            arr = x.numpy()  # the common case, without the conversions' calls: a batch-1 call lasts 0.07 ms at 16 px
        else:
            arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(self._outputs, {self.input_name: arr})[0])

    def _infer_cuda(self, x: torch.Tensor) -> torch.Tensor:
        """Bind torch CUDA memory directly: no host round trip for the input."""
        gpu = _gpu_index()
        x = x.to(torch.device("cuda", gpu), torch.float32).contiguous()
        # ORT runs on its own CUDA stream: it must not read x before torch's stream has written it.
        torch.cuda.current_stream(x.device).synchronize()
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", gpu, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", gpu)
        self.session.run_with_iobinding(binding)
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

    def describe(self) -> dict:
        return {**super().describe(), "provider": getattr(self, "active_provider", self.providers[0]), "variant": self.variant,
                "threads": self.policy.threads, "spinning": self.policy.spinning, **({"preset": self.policy.preset} if self.policy.preset else {})}
