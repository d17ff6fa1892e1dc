"""A fake ``tensorrt`` module for CPU tests: TensorRT 10.x/11.x names, values and signatures only.

Every public name the fake provides (module attributes, enum members and their values, class
methods with their parameter names, instance properties) is checked against the real bindings'
API recorded in ``tests/data/tensorrt_api/`` by ``tests/test_tensorrt_api.py``, so it cannot drift.
Classes carry the real class names (``IBuilderConfig``, ``ICudaEngine``, ...) for that check; the
fake's own state is in ``_underscored`` attributes.

Its "kernel" reads and writes the bound memory through the array interfaces, so the engine's
pointer, shape, dtype and profile handling is checked for real, on the CPU and on a CUDA device.
Failures real TensorRT can produce are options: a ``Builder``/``Runtime`` whose native factory
returns nullptr (pybind11 raises TypeError after TensorRT logged why), ``set_shape`` raising
RuntimeError, ``create_timing_cache`` returning None, parser errors with ``ErrorCode`` codes.
"""

from __future__ import annotations

import contextlib
import json
import types

import numpy as np
import torch

SIZE = 16

# Real values (tests/data/tensorrt_api/tensorrt-*.json): 10.x still has EXPLICIT_BATCH (ignored), 11.x has only
# STRONGLY_TYPED = 0 (always on) and no FP16/INT8 builder flags.
_NET_FLAGS = {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 11: {"STRONGLY_TYPED": 0}}
_BUILDER_FLAGS = {10: {"FP16": 0, "DEBUG": 2, "TF32": 6}, 11: {"DEBUG": 2, "TF32": 6}}
_DATA_TYPES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "BF16": 7, "INT64": 8}
_ERROR_CODES = {"SUCCESS": 0, "INTERNAL_ERROR": 1, "INVALID_NODE": 6, "UNSUPPORTED_NODE": 8}
NULLPTR = "pybind11::init(): factory function returned nullptr"


class FakeEnum:
    """Enum-like: reading a member is recorded, a member the version lacks is an AttributeError."""

    def __init__(self, owner: FakeTrt, name: str, **members):
        self._owner, self._name, self._members = owner, name, members

    def __getattr__(self, item):
        if item.startswith("_") or item not in self._members:
            raise AttributeError(f"tensorrt.{self._name} has no {item}")
        self._owner.touched.add(f"{self._name}.{item}")
        return self._members[item]

    def members(self) -> dict[str, int]:
        return dict(self._members)


def _wrap(ptr: int, shape, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A tensor over memory TensorRT was handed by address (what a kernel would see)."""
    typestr = {torch.float32: "<f4", torch.float16: "<f2"}[dtype]
    if device == "cpu":
        holder = types.SimpleNamespace(__array_interface__={"shape": tuple(shape), "typestr": typestr, "data": (ptr, False), "version": 3})
        return torch.from_numpy(np.asarray(holder))
    iface = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, False), "version": 2, "strides": None}
    return torch.as_tensor(type("CudaBuf", (), {"__cuda_array_interface__": iface})(), device=device)


def fake_kernel(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3)) * 2.0 + 1.0


class FakeTrt:
    """Builds a ``tensorrt`` module stand-in. ``calls`` lists (api, args) in call order; ``objects`` every instance made."""

    def __init__(self, version="10.13.0", strongly_typed=True, fp16_flag=None, input_shape=(-1, 3, SIZE, SIZE),
                 parse_errors=(), build_fails=False, out_dtype="FLOAT", foreign_cache=False, device="cpu",
                 builder_fails=None, runtime_fails=None, set_shape_fails=False, timing_cache_fails=False):
        self.calls: list[tuple[str, tuple]] = []
        self.touched: set[str] = set()
        self.objects: list[object] = []
        self.major = major = int(version.split(".")[0])
        fake = self
        net_flags = {k: v for k, v in _NET_FLAGS[min(max(major, 10), 11)].items() if strongly_typed or k != "STRONGLY_TYPED"}
        builder_flags = dict(_BUILDER_FLAGS[min(max(major, 10), 11)])
        if fp16_flag is False:
            builder_flags.pop("FP16", None)
        m = types.ModuleType("tensorrt")
        m.__version__ = version
        m.NetworkDefinitionCreationFlag = FakeEnum(self, "NetworkDefinitionCreationFlag", **net_flags)
        m.BuilderFlag = FakeEnum(self, "BuilderFlag", **builder_flags)
        m.MemoryPoolType = FakeEnum(self, "MemoryPoolType", WORKSPACE=0)
        m.TensorIOMode = FakeEnum(self, "TensorIOMode", NONE=0, INPUT=1, OUTPUT=2)
        m.DataType = FakeEnum(self, "DataType", **_DATA_TYPES)
        m.ErrorCode = FakeEnum(self, "ErrorCode", **_ERROR_CODES)

        def rec(name, *args):
            fake.calls.append((name, args))

        class _Made:
            def __new__(cls, *a, **k):
                obj = super().__new__(cls)
                fake.objects.append(obj)
                return obj

        class ILogger(_Made):
            Severity = FakeEnum(self, "ILogger.Severity", INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

            def __init__(self):
                pass

            def log(self, severity, msg):  # overridden by the engine's logger
                pass

        def _factory_failure(what: str, logger, message: str | None):
            """Real TensorRT logs why through the given logger, then pybind11 raises on the nullptr."""
            rec(what)
            if message is not None:
                if message:
                    logger.log(ILogger.Severity.ERROR, message)
                raise TypeError(NULLPTR)

        class ITensor(_Made):
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class INetworkDefinition(_Made):
            num_inputs = 1

            def get_input(self, index):
                return ITensor("images", input_shape)

        class ParserError(_Made):
            def __init__(self, node, desc):
                self._node, self._desc = node, desc

            def node(self):
                return self._node

            def desc(self):
                return self._desc

            def code(self):
                return m.ErrorCode.UNSUPPORTED_NODE

        class OnnxParser(_Made):
            def __init__(self, network, logger):
                rec("OnnxParser", network, logger)
                self.num_errors = 0

            def parse_from_file(self, model):
                rec("parse_from_file", model)
                self.num_errors = len(parse_errors)
                return not parse_errors

            def get_error(self, index):
                return ParserError(index + 3, parse_errors[index])

        class ITimingCache(_Made):
            def __init__(self, blob):
                self._blob = bytes(blob)

            def serialize(self):
                rec("serialize")
                return memoryview(self._blob + b"|tuned")  # a buffer, as IHostMemory is

        class IOptimizationProfile(_Made):
            def set_shape(self, input, min, opt, max):  # noqa: A002  (the real parameter names)
                rec("set_shape", input, tuple(min), tuple(opt), tuple(max))
                if set_shape_fails:
                    raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
                self._shape = (input, tuple(min), tuple(opt), tuple(max))

        class IBuilderConfig(_Made):
            def __init__(self):
                self._profiles, self._cache = [], None

            def set_memory_pool_limit(self, pool, pool_size):
                rec("set_memory_pool_limit", pool, pool_size)

            def set_flag(self, flag):
                rec("set_flag", flag)

            def clear_flag(self, flag):
                rec("clear_flag", flag)

            def add_optimization_profile(self, profile):
                rec("add_optimization_profile")
                self._profiles.append(profile._shape)
                return len(self._profiles) - 1

            def create_timing_cache(self, serialized_timing_cache):
                rec("create_timing_cache", bytes(serialized_timing_cache))
                if timing_cache_fails:
                    return None  # the native call returned nullptr
                return ITimingCache(serialized_timing_cache)

            def set_timing_cache(self, cache, ignore_mismatch):
                rec("set_timing_cache", cache._blob, ignore_mismatch)
                if foreign_cache and cache._blob:
                    return False
                self._cache = cache
                return True

            def get_timing_cache(self):
                rec("get_timing_cache")
                return self._cache

        class Builder(_Made):
            def __init__(self, logger):
                _factory_failure("Builder", logger, builder_fails)
                self._logger = logger

            def create_network(self, flags=0):
                rec("create_network", flags)
                return INetworkDefinition()

            def create_builder_config(self):
                rec("create_builder_config")
                return IBuilderConfig()

            def create_optimization_profile(self):
                rec("create_optimization_profile")
                return IOptimizationProfile()

            def build_serialized_network(self, network, config):
                rec("build_serialized_network", network, config)
                if build_fails:
                    self._logger.log(ILogger.Severity.ERROR, "out of memory in tactic selection")
                    return None
                return b"FAKEPLAN" + json.dumps({"profiles": config._profiles, "out": out_dtype}).encode()

        class IExecutionContext(_Made):
            def __init__(self, engine):
                self._engine, self._profile, self._shape, self._addr = engine, 0, None, {}

            def set_optimization_profile_async(self, profile_index, stream_handle):
                rec("set_optimization_profile_async", profile_index, stream_handle)
                assert isinstance(stream_handle, int)
                self._profile, self._shape = profile_index, None
                return True

            def set_input_shape(self, name, shape):
                rec("set_input_shape", name, tuple(shape))
                _, lo, _, hi = self._engine._profiles[self._profile]
                ok = name == "images" and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
                self._shape = tuple(shape) if ok else None
                return ok

            def get_tensor_shape(self, name):
                assert name == "logits" and self._shape is not None
                return (self._shape[0], self._shape[1])

            def set_tensor_address(self, name, memory):
                rec("set_tensor_address", name)
                self._addr[name] = memory
                return True

            def execute_async_v3(self, stream_handle):
                rec("execute_async_v3", stream_handle)
                assert self._shape is not None and set(self._addr) == {"images", "logits"}
                out_dtype_t = torch.float16 if self._engine._out == "HALF" else torch.float32
                with contextlib.ExitStack() as stack:
                    if device != "cpu":
                        stack.enter_context(torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)))
                    x = _wrap(self._addr["images"], self._shape, torch.float32, device)
                    out = _wrap(self._addr["logits"], self._shape[:2], out_dtype_t, device)
                    out.copy_(fake_kernel(x))
                return True

            def execute_v2(self, bindings):  # real in 10.x and 11.x (synchronous); the engine must use execute_async_v3
                raise AssertionError("execute_v2 used; this engine runs asynchronously on its stream with execute_async_v3")

        class ICudaEngine(_Made):
            def __init__(self, payload):
                self._profiles = [tuple(p) for p in payload["profiles"]]
                self._out = payload["out"]
                self.num_io_tensors = 2
                self.num_optimization_profiles = len(self._profiles)

            def get_tensor_name(self, index):
                return ("images", "logits")[index]

            def get_tensor_mode(self, name):
                return {"images": m.TensorIOMode.INPUT, "logits": m.TensorIOMode.OUTPUT}[name]

            def get_tensor_dtype(self, name):
                return m.DataType.FLOAT if name == "images" else getattr(m.DataType, self._out)

            def get_tensor_profile_shape(self, name, profile_index):
                assert name == "images"
                return [list(s) for s in self._profiles[profile_index][1:]]

            def create_execution_context(self):
                rec("create_execution_context")
                return IExecutionContext(self)

        class Runtime(_Made):
            def __init__(self, logger):
                _factory_failure("Runtime", logger, runtime_fails)

            def deserialize_cuda_engine(self, serialized_engine):
                rec("deserialize_cuda_engine")
                data = bytes(serialized_engine)
                return ICudaEngine(json.loads(data[len(b"FAKEPLAN"):])) if data.startswith(b"FAKEPLAN") else None

        m.ILogger, m.Builder, m.OnnxParser, m.Runtime = ILogger, Builder, OnnxParser, Runtime
        self.classes = [ILogger, ITensor, INetworkDefinition, ParserError, OnnxParser, ITimingCache, IOptimizationProfile,
                        IBuilderConfig, Builder, IExecutionContext, ICudaEngine, Runtime]
        self.module = m

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def args(self, name: str) -> list[tuple]:
        return [c[1] for c in self.calls if c[0] == name]
