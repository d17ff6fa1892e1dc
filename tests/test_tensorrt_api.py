"""The fake ``tensorrt`` (fake_tensorrt.py) against the real TensorRT 10.x and 11.x Python API, so that tests
passing on the fake mean the engine works on the real bindings.

The real API is recorded in tests/data/tensorrt_api/tensorrt-<version>.json from NVIDIA's bindings wheels
(``bash tests/data/tensorrt_api/regenerate.sh``: enum members and values, properties, and the pybind11
signature of every method). Every public name the fake provides must exist there, with the same enum
value and the same parameter names, for the TensorRT major version the fake stands for.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from fake_tensorrt import FakeEnum, FakeTrt  # tests/ is on sys.path (rootdir conftest)

DATA = Path(__file__).parent / "data" / "tensorrt_api"
RECORDED = {int(p.stem.split("-")[1].split(".")[0]): p for p in sorted(DATA.glob("tensorrt-*.json"))}


def _real(major: int) -> dict:
    return json.loads(RECORDED[major].read_text())


def test_both_majors_are_recorded():
    assert set(RECORDED) == {10, 11}
    assert _real(10)["version"].startswith("10.") and _real(11)["version"].startswith("11.")


def test_recorded_facts_the_engine_relies_on():
    """Facts an earlier fake got wrong (enum values, removed calls), read from the real bindings."""
    ten, eleven = _real(10), _real(11)
    assert ten["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 1 and "EXPLICIT_BATCH" in ten["enums"]["NetworkDefinitionCreationFlag"]
    assert eleven["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 0 and "EXPLICIT_BATCH" not in eleven["enums"]["NetworkDefinitionCreationFlag"]
    assert "FP16" in ten["enums"]["BuilderFlag"] and "FP16" not in eleven["enums"]["BuilderFlag"]
    for api in (ten, eleven):
        assert "execute_v2" in api["classes"]["IExecutionContext"]["methods"]
        assert "execute_async_v2" not in api["classes"]["IExecutionContext"]["methods"]
        assert api["classes"]["ParserError"]["methods"]["code"][0]["returns"] == "ErrorCode"


def _fakes(major: int) -> list[FakeTrt]:
    """The fake in the configurations the tests use for this major version."""
    version = f"{major}.4.0"
    return [FakeTrt(version=version, parse_errors=("bad node",)), FakeTrt(version=version, strongly_typed=False, fp16_flag=False),
            FakeTrt(version=version, builder_fails="x", runtime_fails="x", set_shape_fails=True, timing_cache_fails=True)]


def _params(func) -> list[tuple[str, bool]]:
    sig = inspect.signature(func)
    return [(p.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _matches(fake_params: list[tuple[str, bool]], overloads: list[dict]) -> bool:
    """Same parameter names, in order, as one real overload (trailing real parameters must have defaults)."""
    for overload in overloads:
        real = [(name, has_default) for name, has_default in overload["params"] if not name.startswith("*")]
        names = [n for n, _ in fake_params]
        if [n for n, _ in real[: len(names)]] == names and all(d for _, d in real[len(names):]):
            return True
    return False


def _check_enum(problems: list[str], where: str, fake: FakeEnum, real: dict | None) -> None:
    if real is None:
        problems.append(f"{where} is not a real enum")
        return
    for member, value in fake.members().items():
        if member not in real:
            problems.append(f"{where}.{member} does not exist")
        elif real[member] != value:
            problems.append(f"{where}.{member} is {value} in the fake, {real[member]} in TensorRT")


def _check_class(problems: list[str], cls, real: dict | None, instances: list) -> None:
    name = cls.__name__
    if real is None:
        problems.append(f"class {name} does not exist")
        return
    for attr, value in vars(cls).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        if attr == "__init__" and (value is object.__init__ or not real["methods"].get("__init__")):
            continue  # a class Python code cannot construct in TensorRT: the fake's constructor is its own business
        if isinstance(value, FakeEnum):
            _check_enum(problems, f"{name}.{attr}", value, real["enums"].get(attr))
        elif callable(value):
            overloads = real["methods"].get(attr)
            if overloads is None:
                problems.append(f"{name}.{attr} does not exist")
            elif not _matches(_params(value), overloads):
                problems.append(f"{name}.{attr}{_params(value)} matches no real signature {[o['params'] for o in overloads]}")
        elif attr not in real["properties"]:
            problems.append(f"{name}.{attr} is not a real property")
    for obj in instances:
        for attr in vars(obj):
            if not attr.startswith("_") and attr not in real["properties"]:
                problems.append(f"{name} instances have {attr!r}, not a real property")


def _exercise(fake: FakeTrt) -> None:
    """Make one instance of each class, so that instance attributes are checked too."""
    m = fake.module
    logger = m.ILogger()
    try:
        builder, runtime = m.Builder(logger), m.Runtime(logger)
    except TypeError:  # the configuration whose factories return nullptr
        return
    network = builder.create_network(0)
    network.get_input(0)
    parser = m.OnnxParser(network, logger)
    if not parser.parse_from_file("model.onnx"):
        parser.get_error(0).code()
    builder.create_builder_config().create_timing_cache(b"")
    builder.create_optimization_profile()
    engine = runtime.deserialize_cuda_engine(b"FAKEPLAN" + json.dumps({"profiles": [], "out": "FLOAT"}).encode())
    engine.create_execution_context()


@pytest.mark.parametrize("major", [10, 11])
def test_every_name_and_signature_in_the_fake_is_real(major):
    real = _real(major)
    problems: list[str] = []
    for fake in _fakes(major):
        _exercise(fake)
        m = fake.module
        for attr, value in vars(m).items():
            if attr.startswith("__"):
                continue
            if isinstance(value, FakeEnum):
                _check_enum(problems, attr, value, real["enums"].get(attr))
            elif inspect.isclass(value):
                if value.__name__ != attr:
                    problems.append(f"tensorrt.{attr} is the fake class {value.__name__}")
            else:
                problems.append(f"tensorrt.{attr} is neither an enum nor a class in the fake")
            if attr not in real["enums"] and attr not in real["classes"] and attr not in real["functions"]:
                problems.append(f"tensorrt.{attr} does not exist")
        for cls in fake.classes:
            _check_class(problems, cls, real["classes"].get(cls.__name__), [o for o in fake.objects if type(o) is cls])
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_check_catches_drift():
    """The check itself fails on drift between fake and real (10.x flag values under an 11.x version, a removed API)."""
    fake = FakeTrt(version="11.4.0")
    problems: list[str] = []
    _check_enum(problems, "NetworkDefinitionCreationFlag", FakeEnum(fake, "N", EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
                _real(11)["enums"]["NetworkDefinitionCreationFlag"])
    assert problems == ["NetworkDefinitionCreationFlag.EXPLICIT_BATCH does not exist",
                        "NetworkDefinitionCreationFlag.STRONGLY_TYPED is 1 in the fake, 0 in TensorRT"]

    class IExecutionContext:
        def execute_async_v2(self, bindings, stream_handle):
            pass

        def set_tensor_address(self, name, ptr):
            pass

    problems = []
    _check_class(problems, IExecutionContext, _real(11)["classes"]["IExecutionContext"], [])
    assert any("execute_async_v2 does not exist" in p for p in problems)
    assert any("set_tensor_address" in p and "matches no real signature" in p for p in problems)
