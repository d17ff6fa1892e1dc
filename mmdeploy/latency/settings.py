"""Reading the engine settings `mmdeploy bench --tune` stored in a bundle: the tuned policy for one point.

Below both the loader (``mmdeploy.engines.loader``, which hands a runner its tuned settings) and the tuner
(``mmdeploy.latency.tune``, which writes them and loads engines to time them), so that neither imports the other.
Settings tuned on another machine (CPU model, usable cores, library versions) are not loaded.
"""

from __future__ import annotations

import platform
from dataclasses import replace

from mmdeploy.latency.machine import environment
from mmdeploy.latency.threads import ThreadPolicy, ort_default_policy, usable_cores


def machine_fingerprint() -> dict:
    """What makes settings (and latencies) transferable: the CPU, the cores, the libraries."""
    env = environment()
    return {"bench_protocol": env.get("bench_protocol"), "host": platform.node(), "cpu": env.get("cpu"), "usable_cores": usable_cores(), "torch": env.get("torch"),
            "onnxruntime": env.get("onnxruntime"), "openvino": env.get("openvino"), "gpu": env.get("gpu")}


def stored_policy(settings: dict, engine: str, precision: str, size: int, batch: int | None,
                  default: ThreadPolicy | None = None) -> ThreadPolicy:
    """The tuned policy for the batch nearest ``batch`` (None: batch 1), or ``default`` (ONNX Runtime's if None).
    ``settings``: the bundle's ``engine_settings``."""
    default = default or ort_default_policy()
    table = settings.get(f"{engine}/{precision}", {}).get(str(size), {}) if isinstance(settings, dict) else {}
    if not table or not isinstance(table, dict) or settings.get("machine") != machine_fingerprint():
        return default
    want = batch or 1
    try:
        nearest = min(table, key=lambda b: (abs(int(b) - want), int(b)))
        policy = ThreadPolicy.from_dict(table[nearest], source="tuned")
    except (ValueError, TypeError):
        return default  # a hand-edited or foreign entry: ignore it rather than guess
    if engine == "ort" and policy.preset == "default" and settings.get("usage") not in ("stream", "isolated"):
        policy = replace(policy, spinning=False)  # tuned before the default session stopped spinning for shared use
    return policy
