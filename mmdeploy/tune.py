"""Engine settings chosen by measurement (``mmdeploy bench --tune``), stored in the bundle.

For ONNX Runtime every combination of intra-op threads (1..usable cores) and spinning on/off
is timed, interleaved in one run, per size, precision and batch; for OpenVINO, threads
1..usable cores with one stream (latency hint) and, from batch 8, the batch split over one
stream per thread (throughput hint). The fastest wins, except that
a simpler setting (fewer threads, no spinning) within ``SIMPLER_WITHIN`` of it is preferred,
since it leaves more of the machine to everything else for no measurable loss. Engines
created from the bundle load these settings unless told otherwise. Settings tuned on another
machine (CPU model, usable cores, onnxruntime version) are not loaded.

The settings live in the bundle (``Bundle.engine_settings`` / ``set_engine_settings``); this
module reads them only through :func:`stored_policy` and writes them only in :func:`store_settings`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from mmdeploy.bundle.lock import reading_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.progress import Progress
from mmdeploy.threads import ThreadPolicy, ort_default_policy, usable_cores

SIMPLER_WITHIN = 0.02  # a setting this much slower than the fastest still wins if it is simpler
SPIN_PENALTY = 0.10  # spinning wins only when more than this much faster (see choose)


def machine_fingerprint() -> dict:
    """What makes settings (and latencies) transferable: the CPU, the cores, the libraries."""
    from mmdeploy.bench import environment

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
        return ThreadPolicy.from_dict(table[nearest], source="tuned")
    except (ValueError, TypeError):
        return default  # a hand-edited or foreign entry: ignore it rather than guess


def store_settings(bundle_dir: str | Path, chosen: dict[tuple[str, str, int, int], ThreadPolicy], evidence: dict) -> None:
    """Record the chosen settings (by engine, precision, size, batch) and how they were measured (under the bundle's lock)."""
    from mmdeploy.bundle import Bundle

    entry = {"machine": machine_fingerprint(), "evidence": evidence}
    for (engine, precision, size, batch), policy in sorted(chosen.items()):
        entry.setdefault(f"{engine}/{precision}", {}).setdefault(str(size), {})[str(batch)] = {
            "threads": policy.threads, "spinning": policy.spinning, **({"streams": policy.streams} if policy.streams > 1 else {})}
    with Bundle.update(bundle_dir) as bundle:
        bundle.set_engine_settings(entry)


def ort_candidates(cores: int | None = None) -> list[ThreadPolicy]:
    """Threads 1..usable cores, spinning off and on; simplest first."""
    cores = cores or usable_cores()
    return [ThreadPolicy(t, spin, "tuned") for t in range(1, cores + 1) for spin in (False, True)]


def ov_candidates(batch: int, cores: int | None = None) -> list[ThreadPolicy]:
    """Threads 1..usable cores in one stream; from batch 8 (the engine's split point) also one stream per thread."""
    from mmdeploy.engines.openvino import THROUGHPUT_MIN_BATCH

    cores = cores or usable_cores()
    single = [ThreadPolicy(t, False, "tuned") for t in range(1, cores + 1)]
    split = [ThreadPolicy(t, False, "tuned", t) for t in range(2, cores + 1)] if batch >= THROUGHPUT_MIN_BATCH else []
    return single + split


def choose(timings: dict[ThreadPolicy, float]) -> ThreadPolicy:
    """The simplest setting within SIMPLER_WITHIN of the fastest (``timings``: p50 ms by setting), a spinning
    setting counted SPIN_PENALTY slower: spin-waiting workers take the cores from everything else between
    operators, and on a 2-core machine their gain turned into 5-10x slower runs whenever another engine or
    process ran beside them (measured in the round-robin bench), so spinning must win clearly to be chosen."""
    def cost(p: ThreadPolicy) -> float:
        return timings[p] * (1 + SPIN_PENALTY if p.spinning else 1)

    fastest = min(cost(p) for p in timings)
    simplest_first = sorted(timings, key=lambda p: (p.spinning, p.streams, p.threads))
    return next(p for p in simplest_first if cost(p) <= fastest * (1 + SIMPLER_WITHIN))


@dataclass
class TuneResult:
    chosen: dict  # "ort/fp32/16/b1" -> ThreadPolicy
    timings: dict  # "ort/fp32/16/b1" -> {policy label: p50 ms}
    busy: bool  # the tuning run saw interference (its choice may not hold on a quiet machine)
    interference: str


@reading_bundle("bundle_dir")  # no writer sweeps what it reads; results merge under the lock
def tune_bundle(bundle_dir: str | Path, precisions: list[str] | None = None, sizes: list[int] | None = None,
                batches: list[int] | None = None, warmup: int = 3, iters: int = 15, noise_budget_s: float = 20.0,
                progress: Progress | None = None, engines: tuple[str, ...] | None = None) -> TuneResult:
    """Time every setting of each engine in ``engines`` (default: the registry's tunable ones) that runs here and has artifacts, per (precision, size, batch),
    and store the best in the bundle (ONNX Runtime: threads x spinning; OpenVINO: threads x streams)."""
    from mmdeploy.bench import BenchTarget, check_bench_fits, measure_with_interference
    from mmdeploy.bundle import ONNX, OV, Bundle
    from mmdeploy.engines import available_engines, serves
    from mmdeploy.engines.registry import tunable_engines

    engines = engines or tunable_engines()
    reasons = available_engines()
    if "ort" in engines and reasons["ort"] and not (set(engines) - {"ort"}):
        raise MMDeployError(f"cannot tune ONNX Runtime: {reasons['ort']}", "install onnxruntime, or bench without --tune")
    bundle = Bundle.open(bundle_dir)
    sizes = [int(s) for s in sizes] if sizes else bundle.sizes
    batches = batches or [1, 32]
    targets = []
    for precision in precisions or ["fp32"]:
        for s in sizes:
            if "ort" in engines and not reasons["ort"] and serves("ort", precision):
                art = bundle.artifact(s, ONNX, precision)
                if art and not art.static_batch:  # a fixed batch's other batches are padded: nothing fair to tune
                    targets += [BenchTarget(s, f"ort {pol.label}", precision, lambda s=s, p=precision, pol=pol: _ort(bundle, s, p, pol))
                                for pol in ort_candidates()]
            if "ov" in engines and not reasons["ov"] and serves("ov", precision) and bundle.artifact_usable(bundle.artifact(s, OV, precision)):
                for b in batches:
                    targets += [BenchTarget(s, f"ov {pol.label}", precision, lambda s=s, p=precision, pol=pol: _ov(bundle, s, p, pol), (b,))
                                for pol in ov_candidates(b)]
    if not targets:
        raise MMDeployError(f"nothing to tune in {bundle.root}: no per-size ONNX with a dynamic batch, no gated ov engine",
                            f"run `mmdeploy export {bundle.root} --engine ort` first")
    check_bench_fits(bundle, targets, batches)
    results, seen = measure_with_interference(targets, batches, warmup, iters, progress, noise_budget_s)
    by_point: dict[tuple, dict[ThreadPolicy, float]] = {}
    for r in results:
        policy = ThreadPolicy.from_dict(r.policy, source="tuned")
        by_point.setdefault((r.engine.split()[0], r.precision, r.size, r.batch), {})[policy] = r.p50_ms
    chosen = {k: choose(v) for k, v in by_point.items()}
    timings = {"/".join(map(str, k[:3])) + f"/b{k[3]}": {p.label: round(ms, 4) for p, ms in v.items()} for k, v in by_point.items()}
    store_settings(bundle_dir, chosen, {"timings_p50_ms": timings, "interference": seen.to_dict()})
    return TuneResult({"/".join(map(str, k[:3])) + f"/b{k[3]}": p for k, p in chosen.items()}, timings, seen.busy, seen.summary())


def _ort(bundle, size: int, precision: str, policy: ThreadPolicy):
    from mmdeploy.engines.onnxruntime import OrtEngine

    return OrtEngine.from_bundle(bundle, size, precision, policy=policy)


def _ov(bundle, size: int, precision: str, policy: ThreadPolicy):
    from mmdeploy.engines.openvino import OvEngine

    return OvEngine.from_bundle(bundle, size, precision, policy=policy)
