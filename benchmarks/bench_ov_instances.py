"""Same OpenVINO settings, different compiled instances: mmdeploy's ov engine with the "default" preset (int8: the CPU's
precision) from the bundle (with its model cache) and without the cache, against plain Core().compile_model with no hints,
with and without a CACHE_DIR; interleaved blocks of 5 calls, 15 shuffled rounds, median ms per call.

    python benchmarks/bench_ov_instances.py BUNDLE SIZE BATCH PRECISION      (e.g. /tmp/h26/b 24 32 int8)
"""

import random
import statistics
import sys
import time

import numpy as np
import openvino as ov
import torch

from mmdeploy.bundle import Bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.engines.openvino import OvEngine
from mmdeploy.latency.threads import ThreadPolicy

B = sys.argv[1]
size = int(sys.argv[2])
batch = int(sys.argv[3])
prec = sys.argv[4]
b = Bundle.open(B)
f = f"{B}/sizes/{size}/model{'.int8' if prec == 'int8' else ''}.onnx"
core = ov.Core()


def plain(cfg):
    m = core.read_model(f)
    m.reshape({m.inputs[0]: ov.PartialShape([batch, 3, size, size])})
    c = core.compile_model(m, "CPU", cfg)
    r = c.create_infer_request()
    return lambda x: r.infer({0: x}, share_inputs=True)


pol = ThreadPolicy(2, False, "tuned", 2, "default", "cpu" if prec == "int8" else "")
e1 = load_engine(b, "ov", size, prec, policy=pol).__enter__()
e2 = OvEngine(b.path(f"sizes/{size}/model{'.int8' if prec == 'int8' else ''}.onnx"), size, prec, policy=pol).__enter__()
runs = {
    "plain default": plain({}),
    "plain default+cache": plain({"CACHE_DIR": f"{B}/ov_cache"}),
    "mmdeploy (cache)": lambda x: e1(torch.from_numpy(x)),
    "mmdeploy no cache": lambda x: e2(torch.from_numpy(x)),
    "plain throughput": None,
}
del runs["plain throughput"]
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
for r in runs.values():
    for _ in range(5):
        r(x)
res = {k: [] for k in runs}
order = list(runs)
rng = random.Random(0)
for _ in range(15):
    rng.shuffle(order)
    for k in order:
        runs[k](x)
        t = time.perf_counter()
        n = 5
        for _ in range(n):
            runs[k](x)
        res[k].append((time.perf_counter() - t) / n * 1e3)
        time.sleep(0.01)
for k, v in res.items():
    print(f"{size}px b{batch} {prec} {k:<22} {statistics.median(v):.3f} ms")
