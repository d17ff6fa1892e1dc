"""INT8 over fp32 at batch 1, per size: the fastest configuration of each precision, and what bounds the ratio.

Opens a bundle's per-size ``model.onnx`` and ``model.int8.onnx`` (``mmdeploy export B --engine ort --precision fp32
--precision int8``) and times, at batch 1, interleaved (each round: one block of back-to-back calls per configuration, at
least ``--block-ms`` long after one untimed call, shuffled, 10 ms idle between blocks; the figure is the median over
rounds of a block's mean):

- ``ort-default P``: ``onnxruntime.InferenceSession(file)``; ``ort-1t P``: the same with one intra-op thread;
- ``ov-default P``: ``compile_model(model, "CPU")`` (OpenVINO's default precision: bf16 on CPUs with native bf16, so
  "fp32" there is bf16 arithmetic); ``ov-f32 P``: the f32 inference-precision hint;
- ``mmdeploy ort P`` / ``mmdeploy ov P``: mmdeploy's engines with their default (untuned) settings;
- the per-call floor: a one-node graph (Identity on the 1x3xSxS input) through ``session.run``, OpenVINO's
  ``infer({0: x})``, ``set_input_tensor`` + ``infer()``, a copy into the request's own input + ``infer()`` (what
  mmdeploy's ov engine does at batch 1), and mmdeploy's two engines (fp32 names them, the graph has no precision).

Then, per precision, OpenVINO's per-layer counters (``PERF_COUNT``): the summed time of the convolution layers, the
part of a call no per-call saving can remove. Prints fastest fp32 / fastest int8 per size (and with fp32 meaning f32
arithmetic), and the same ratio for the convolution layers alone.

    python benchmarks/bench_int8_batch1.py /tmp/h26/b --sizes 16 24 32 48
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _identity_onnx(size: int, folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 3, size, size]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / f"identity_{size}.onnx"
    onnx.save(model, str(path))
    return path


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ov_request(path: Path, size: int, config: dict | None = None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape([1, 3, size, size])})
    return core.compile_model(model, "CPU", config or {}).create_infer_request()


def ov_dict_call(path: Path, size: int, config: dict | None = None):
    request = ov_request(path, size, config)

    def call(x):
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return call


def ov_tensor_call(path: Path, size: int, config: dict | None = None):
    import openvino as ov

    request = ov_request(path, size, config)

    def call(x):
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        request.infer()
        return request.get_output_tensor(0).data.copy()

    return call


def ov_copy_call(path: Path, size: int, config: dict | None = None):
    request = ov_request(path, size, config)
    buffer = request.get_input_tensor(0).data  # the request's own input memory, written in place each call

    def call(x):
        buffer[...] = x
        request.infer()
        return request.get_output_tensor(0).data.copy()

    return call


def mmdeploy_engine(kind: str, path: Path, size: int, precision: str):
    import torch

    if kind == "ort":
        from mmdeploy.engines.onnxruntime import OrtEngine

        engine = OrtEngine(path, size, precision, providers=["CPUExecutionProvider"])
    else:
        from mmdeploy.engines.openvino import OvEngine

        engine = OvEngine(path, size, precision)
    engine.activate()
    return lambda x: engine(torch.from_numpy(x))


def time_interleaved(calls: dict, x: np.ndarray, rounds: int, block_ms: float) -> dict[str, float]:
    """Median over rounds of each configuration's mean ms per call in a back-to-back block."""
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        order = list(calls)
        random.shuffle(order)
        for name in order:
            call = calls[name]
            call(x)  # wakes the threads up; not timed
            n, start = 0, time.perf_counter()
            while True:
                call(x)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed * 1e3 >= block_ms:
                    break
            samples[name].append(elapsed / n * 1e3)
            time.sleep(0.01)
    return {name: statistics.median(v) for name, v in samples.items()}


def ov_conv_us(path: Path, size: int, config: dict, calls: int = 200) -> float:
    """Summed mean time (us) of the executed convolution layers per call, from OpenVINO's per-layer counters."""
    request = ov_request(path, size, {**config, "PERF_COUNT": True})
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    totals: dict[str, float] = {}
    for i in range(calls + 20):
        request.infer({0: x})
        if i < 20:
            continue
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED and layer.node_type == "Convolution":
                totals[layer.node_name] = totals.get(layer.node_name, 0.0) + layer.real_time.total_seconds() * 1e6
    return sum(totals.values()) / calls


def bench_size(bundle: Path, size: int, rounds: int, block_ms: float, scratch: Path) -> dict:
    folder = bundle / "sizes" / str(size)
    files = {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"}
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    calls = {}
    for precision, path in files.items():
        calls[f"ort-default {precision}"] = ort_session(path)
        calls[f"ort-1t {precision}"] = ort_session(path, threads=1)
        calls[f"ov-default {precision}"] = ov_dict_call(path, size)
        calls[f"ov-f32 {precision}"] = ov_dict_call(path, size, f32)
        calls[f"mmdeploy ort {precision}"] = mmdeploy_engine("ort", path, size, precision)
        calls[f"mmdeploy ov {precision}"] = mmdeploy_engine("ov", path, size, precision)
    identity = _identity_onnx(size, scratch)
    calls["floor ort session.run"] = ort_session(identity)
    calls["floor ov infer(dict)"] = ov_dict_call(identity, size)
    calls["floor ov set_input_tensor+infer()"] = ov_tensor_call(identity, size)
    calls["floor ov copy-in+infer()"] = ov_copy_call(identity, size)
    calls["floor mmdeploy ort engine"] = mmdeploy_engine("ort", identity, size, "fp32")
    calls["floor mmdeploy ov engine"] = mmdeploy_engine("ov", identity, size, "fp32")
    x = np.random.default_rng(size).random((1, 3, size, size), dtype=np.float32)
    ms = time_interleaved(calls, x, rounds, block_ms)
    conv = {"f32": ov_conv_us(files["fp32"], size, f32), "bf16": ov_conv_us(files["fp32"], size, {}),
            "int8": ov_conv_us(files["int8"], size, {})}
    return {"ms": ms, "conv_us": conv}


def ort_profile(path: Path, size: int, scratch: Path, calls: int = 300) -> str:
    """ONNX Runtime's per-node profile of a default session (after its graph optimizations): nodes and time per op type.

    The profiler adds its own cost to every node (a profiled call lasts 2-4x an unprofiled one), so read shares, not us."""
    import collections
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / f"profile_{size}_{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(calls):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    time_by_op, count_by_op = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_by_op[e["args"]["op_name"]] += e["dur"]
            count_by_op[e["args"]["op_name"]] += 1
    total = sum(time_by_op.values())
    parts = [f"{op} x{count_by_op[op] // calls} {100 * t / total:.0f}%" for op, t in time_by_op.most_common()]
    return f"{sum(count_by_op.values()) // calls} nodes: " + ", ".join(parts)


def _fastest(ms: dict[str, float], precision: str, exclude: tuple[str, ...] = ()) -> tuple[str, float]:
    pool = {k: v for k, v in ms.items() if k.endswith(f" {precision}") and not k.startswith(("floor", *exclude))}
    name = min(pool, key=pool.get)
    return name, pool[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--block-ms", type=float, default=30.0)
    parser.add_argument("--ort-profile", action="store_true", help="also print ONNX Runtime's per-op-type profile of both files")
    args = parser.parse_args()
    import onnxruntime
    import openvino

    print(f"# onnxruntime {onnxruntime.__version__}, openvino {openvino.get_version()}; batch 1; median of {args.rounds} interleaved rounds "
          f"of >= {args.block_ms:g} ms back-to-back blocks; load average {Path('/proc/loadavg').read_text().split()[0]}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            results[size] = bench_size(args.bundle, size, args.rounds, args.block_ms, Path(scratch))
            print(f"\n## {size} px (ms per call)")
            for name, value in sorted(results[size]["ms"].items(), key=lambda kv: kv[1]):
                print(f"  {name:<36} {value:.4f}")
            if args.ort_profile:
                for precision, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
                    print(f"  ort profile {precision}: {ort_profile(args.bundle / 'sizes' / str(size) / file, size, Path(scratch))}")
    print("\n| size | fastest fp32 | ms | fastest int8 | ms | fp32/int8 | fastest f32 arithmetic | ms | f32/int8 | ov conv layers f32 / bf16 / int8 (us) | conv f32/int8 | conv bf16/int8 |")
    print("|---:|---|---:|---|---:|---:|---|---:|---:|---|---:|---:|")
    for size, r in results.items():
        ms, conv = r["ms"], r["conv_us"]
        fp32, int8 = _fastest(ms, "fp32"), _fastest(ms, "int8")
        f32 = _fastest(ms, "fp32", exclude=("ov-default",))  # OpenVINO's default runs the fp32 file in bf16 here
        print(f"| {size} | {fp32[0]} | {fp32[1]:.3f} | {int8[0]} | {int8[1]:.3f} | {fp32[1] / int8[1]:.2f} | {f32[0]} | {f32[1]:.3f} | "
              f"{f32[1] / int8[1]:.2f} | {conv['f32']:.0f} / {conv['bf16']:.0f} / {conv['int8']:.0f} | {conv['f32'] / conv['int8']:.2f} | "
              f"{conv['bf16'] / conv['int8']:.2f} |")


if __name__ == "__main__":
    main()
