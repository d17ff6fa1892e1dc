"""The machine a figure was measured on: CPU name, cores, library versions, GPU.

Latencies, tuned settings, OpenVINO's compiled-model cache and training's precision choice are only valid on the
machine that produced them; they record (and compare) what this module says.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

BENCH_PROTOCOL = 4  # bump when the timing protocol (mmdeploy.latency.bench) changes: older benches are not reused


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict:
    """Platform, Python, CPU, core count, torch threads and the versions of the engines' libraries (those installed)."""
    import torch

    env = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    for mod in ("onnxruntime", "onnx", "tensorrt", "openvino"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # not installed, or broken without a GPU
            pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def environment() -> dict:
    """Where the numbers came from: the timing protocol, the machine, the library versions."""
    return {"bench_protocol": BENCH_PROTOCOL, **describe_machine()}
