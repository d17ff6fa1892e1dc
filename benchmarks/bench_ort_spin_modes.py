"""How should ONNX Runtime's default session stop spinning when it shares a process? Plain ONNX Runtime/OpenVINO calls.

Modes: ``default`` (no options: spins during a run and on after it), ``default nospin`` (session.intra_op.allow_spinning=0),
``default stop`` (session.force_spinning_stop=1), ``1t``/``2t`` (explicit threads, no spinning), ``2t spin`` (with
force_spinning_stop, mmdeploy's explicit spinning setting). Columns, median ms of the session's call over rounds (modes
shuffled per round): ``stream`` back-to-back block; ``gaps`` one call 5 ms after the last; ``shared`` its call with an
OpenVINO default call before it; ``ov after`` that OpenVINO call right after it (what spinning after a run costs the next engine).

    python benchmarks/bench_ort_spin_modes.py BUNDLE 16,24,32,48 1,32 7     (sizes, batches, rounds)
"""

import random
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import openvino as ov

B = sys.argv[1]


def sess(path, mode):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if mode.startswith("default"):
        if mode == "default nospin":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if mode == "default stop":
            so.add_session_config_entry("session.force_spinning_stop", "1")
    else:
        t = int(mode[0])
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "spin" in mode
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            so.add_session_config_entry("session.force_spinning_stop", "1")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    return lambda x: s.run(None, {n: x})


core = ov.Core()


def ovd(path, size, batch):
    m = core.read_model(path)
    m.reshape({m.inputs[0]: ov.PartialShape([batch, 3, size, size])})
    r = core.compile_model(m, "CPU").create_infer_request()
    return lambda x: r.infer({0: x}, share_inputs=True)


modes = ["default", "default nospin", "default stop", "1t", "2t", "2t spin"]
for size in map(int, sys.argv[2].split(",")):
    for prec in ("fp32", "int8"):
        for batch in map(int, sys.argv[3].split(",")):
            path = f"{B}/sizes/{size}/model{'.int8' if prec == 'int8' else ''}.onnx"
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            runs = {m: sess(path, m) for m in modes}
            other = ovd(f"{B}/sizes/{size}/model.onnx", size, batch)
            for r in list(runs.values()) + [other]:
                for _ in range(5):
                    r(x)
            res = {m: {"stream": [], "gaps": [], "shared": [], "ov after": []} for m in modes}
            order = list(modes)
            rng = random.Random(size)
            n = max(1, int(3e-3 / max(1e-5, min(0.05, (lambda t: (runs["1t"](x), time.perf_counter() - t)[1])(time.perf_counter())))))
            for _round in range(int(sys.argv[4])):
                rng.shuffle(order)
                for m in order:
                    r = runs[m]
                    r(x)
                    t = time.perf_counter()
                    for _ in range(n):
                        r(x)
                    res[m]["stream"].append((time.perf_counter() - t) / n * 1e3)
                    g = []
                    for _ in range(5):
                        time.sleep(0.005)
                        t = time.perf_counter()
                        r(x)
                        g.append(time.perf_counter() - t)
                    res[m]["gaps"].append(statistics.median(g) * 1e3)
                    a, b = [], []
                    for _ in range(n):
                        other(x)
                        t = time.perf_counter()
                        r(x)
                        t2 = time.perf_counter()
                        other(x)
                        t3 = time.perf_counter()
                        a.append(t2 - t)
                        b.append(t3 - t2)
                    res[m]["shared"].append(statistics.median(a) * 1e3)
                    res[m]["ov after"].append(statistics.median(b) * 1e3)
                    time.sleep(0.01)
            print(f"== {size}px {prec} b{batch} (calls/block {n})")
            print(f"   {'mode':<16}" + "".join(f"{k:>10}" for k in res[modes[0]]))
            for m in modes:
                print(f"   {m:<16}" + "".join(f"{statistics.median(v):10.3f}" for v in res[m].values()))
            sys.stdout.flush()
