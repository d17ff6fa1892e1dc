"""Engine settings chosen by measurement (``mmdeploy bench --tune``), stored in the bundle.

For ONNX Runtime every combination of intra-op threads (1..usable cores) and spinning on/off
is timed, interleaved in one run (the settings that spin in a run of their own, since their workers slow whatever
runs after them), per size, precision and batch; for OpenVINO, threads
1..usable cores with one stream (latency hint) and, from batch 8, the batch split over one
stream per thread (throughput hint). The settings any user would pick without tuning are
always among the candidates, so the choice is never slower than them in this measure: ONNX
Runtime's default session (no options), OpenVINO's defaults (no hints) and, from batch 8, its
throughput hint alone; for OpenVINO int8, each setting with the non-quantized parts pinned to
f32 and with the CPU's default precision (bf16 where native). The fastest wins, except that
a simpler setting (OpenVINO's defaults, fewer threads, no spinning) within ``SIMPLER_WITHIN``
of it is preferred, since it leaves more of the machine to everything else for no measurable loss.

How the engine will be used (``usage``: ``stream``, ``isolated`` or ``shared``, the default) decides the pattern of the
second round (:mod:`mmdeploy.latency.confirm`): the first pass's front runners, plus the best preset, are re-timed on
fresh engines the way they will be called, and the choice comes from that round. ``shared`` times ONNX Runtime's
default session with its spinning stopped after each run (it would take the cores from the next engine); ``stream``
and ``isolated`` (the engine alone in its process) time it as it comes. The usage is stored with the choice.
Engines created from the bundle load these settings unless told otherwise. Settings tuned on another
machine (CPU model, usable cores, onnxruntime version) are not loaded.

The settings live in the bundle (``Bundle.engine_settings`` / ``set_engine_settings``); this
module writes them only in :func:`store_settings`; they are read only through :func:`mmdeploy.latency.settings.stored_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mmdeploy.bundle.lock import reading_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.confirm import ALONE, USAGES, check_usage, choose, choose_confirmed, confirm, paired_wins, reference, shortlist  # noqa: F401  (choose: re-exported)
from mmdeploy.latency.settings import machine_fingerprint, stored_policy  # noqa: F401  (re-exported)
from mmdeploy.latency.threads import ThreadPolicy, ort_default_policy, usable_cores
from mmdeploy.progress import Progress

TUNE_METHOD = 3  # how settings are chosen (2: a second round in the usage's pattern; 3: the defaults kept unless beaten in a paired test); a run re-tunes when it changes

if TYPE_CHECKING:
    from mmdeploy.results import LatencyResult



def store_settings(bundle_dir: str | Path, chosen: dict[tuple[str, str, int, int], ThreadPolicy], evidence: dict,
                   usage: str = USAGES[0]) -> None:
    """Record the chosen settings (by engine, precision, size, batch), the usage they were chosen for and how they were
    measured (under the bundle's lock). A setting that is a library's defaults is stored as ``"preset": "default"``."""
    from mmdeploy.bundle import Bundle

    entry = {"machine": machine_fingerprint(), "usage": usage, "evidence": evidence}
    for (engine, precision, size, batch), policy in sorted(chosen.items()):
        entry.setdefault(f"{engine}/{precision}", {}).setdefault(str(size), {})[str(batch)] = {
            "threads": policy.threads, "spinning": policy.spinning, **({"streams": policy.streams} if policy.streams > 1 else {}),
            **({"preset": policy.preset} if policy.preset else {}), **({"precision_hint": policy.precision_hint} if policy.precision_hint else {})}
    with Bundle.update(bundle_dir) as bundle:
        bundle.set_engine_settings(entry)


def ort_candidates(cores: int | None = None, usage: str = USAGES[0]) -> list[ThreadPolicy]:
    """ONNX Runtime's default session, then threads 1..usable cores, spinning off and on; simplest first.

    ``stream`` and ``isolated`` (the engine alone in its process): the default session exactly as ONNX Runtime opens it;
    it spins (session.intra_op.allow_spinning defaults to 1) and goes on spinning after each run (about 35 ms), recorded
    as spinning: a request within that time finds its workers awake (isolated, 10 ms gaps, 32 px int8 batch 1: 0.53 ms
    against 0.64 spin-stopped in bench_harness.py). ``shared``: the default session with its workers' spinning stopped
    (``spinning: False``, see ``mmdeploy.engines.onnxruntime.session_options``): beside another engine, spinning after a
    run took the cores from the next engine (OpenVINO 2-9x slower right after it)."""
    cores = cores or usable_cores()
    explicit = [ThreadPolicy(t, spin, "tuned") for t in range(1, cores + 1) for spin in (False, True)]
    return [ThreadPolicy(cores, usage in ALONE, "tuned", preset="default")] + explicit


def ov_candidates(batch: int, cores: int | None = None, precision: str = "fp32") -> list[ThreadPolicy]:
    """OpenVINO's defaults; threads 1..usable cores in one stream; from batch 8 (the engine's split point) also one stream
    per thread and OpenVINO's throughput hint alone. For int8, each with f32 and with the CPU's default precision."""
    from mmdeploy.engines.openvino import THROUGHPUT_MIN_BATCH

    cores = cores or usable_cores()
    large = batch >= THROUGHPUT_MIN_BATCH
    explicit = [ThreadPolicy(t, False, "tuned") for t in range(1, cores + 1)]
    explicit += [ThreadPolicy(t, False, "tuned", t) for t in range(2, cores + 1)] if large else []
    presets = [ThreadPolicy(cores, False, "tuned", cores, "default")] + ([ThreadPolicy(cores, False, "tuned", cores, "throughput")] if large else [])
    if precision != "int8":
        return presets + explicit
    # a user's int8 model compiles with the CPU's default precision: the presets keep it, explicit settings try both
    return ([replace(p, precision_hint="cpu") for p in presets] + explicit + [replace(p, precision_hint="cpu") for p in explicit])


@dataclass
class TuneResult:
    chosen: dict  # "ort/fp32/16/b1" -> ThreadPolicy
    timings: dict  # "ort/fp32/16/b1" -> {policy label: p50 ms}
    busy: bool  # the tuning run saw interference (its choice may not hold on a quiet machine)
    interference: str
    usage: str = USAGES[0]  # what the choice was made for (see the module's docstring)
    confirmed_ms: dict | None = None  # "ort/fp32/16/b1" -> {policy label: median ms in the second round, the usage's pattern}


@reading_bundle("bundle_dir")  # no writer sweeps what it reads; results merge under the lock
def tune_bundle(bundle_dir: str | Path, precisions: list[str] | None = None, sizes: list[int] | None = None,
                batches: list[int] | None = None, warmup: int = 3, iters: int = 15, noise_budget_s: float = 20.0,
                progress: Progress | None = None, engines: tuple[str, ...] | None = None, usage: str = USAGES[0]) -> TuneResult:
    """Time every setting of each engine in ``engines`` (default: the registry's tunable ones) that runs here and has
    artifacts, per (precision, size, batch), and store the best for ``usage`` in the bundle (ONNX Runtime: default
    session, threads x spinning; OpenVINO: defaults, throughput hint, threads x streams, int8's precision hint)."""
    from mmdeploy.bundle import ONNX, OV, Bundle
    from mmdeploy.engines import available_engines, serves
    from mmdeploy.engines.registry import tunable_engines
    from mmdeploy.latency.bench import BenchTarget, check_bench_fits, measure_with_interference

    check_usage(usage)
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
                    targets += [(pol, BenchTarget(s, f"ort {pol.label}", precision, lambda s=s, p=precision, pol=pol: _ort(bundle, s, p, pol)))
                                for pol in ort_candidates(usage=usage)]
            if "ov" in engines and not reasons["ov"] and serves("ov", precision) and bundle.artifact_usable(bundle.artifact(s, OV, precision)):
                for b in batches:
                    targets += [(pol, BenchTarget(s, f"ov {pol.label}", precision, lambda s=s, p=precision, pol=pol: _ov(bundle, s, p, pol), (b,)))
                                for pol in ov_candidates(b, precision=precision)]
    if not targets:
        raise MMDeployError(f"nothing to tune in {bundle.root}: no per-size ONNX with a dynamic batch, no gated ov engine",
                            f"run `mmdeploy export {bundle.root} --engine ort` first")
    check_bench_fits(bundle, [t for _, t in targets], batches)
    # The settings that spin are timed in a pass of their own: their workers go on spinning after each run and slowed
    # every engine timed after them (OpenVINO at 2 threads ran as at 1, 8.4 ms instead of 4.5 at 48 px batch 32 int8).
    results, passes = [], []
    for group in ([t for p, t in targets if not p.spinning], [t for p, t in targets if p.spinning]):
        if group:
            timed, seen = measure_with_interference(group, batches, warmup, iters, progress, noise_budget_s)
            results += timed
            passes.append(seen)
    seen = max(passes, key=lambda s: (s.busy, s.others_cpu or 0.0, s.max_spread))  # the busier pass speaks for the tuning
    by_point: dict[tuple, dict[ThreadPolicy, float]] = {}
    for r in results:
        policy = ThreadPolicy.from_dict(r.policy, source="tuned")
        by_point.setdefault((r.engine.split()[0], r.precision, r.size, r.batch), {})[policy] = r.p50_ms
    name = lambda k: "/".join(map(str, k[:3])) + f"/b{k[3]}"  # noqa: E731
    chosen, confirmed, won, against = {}, {}, {}, {}
    with (progress or Progress()).task(f"second round ({usage} pattern): {len(by_point)} points' front runners", len(by_point)) as advance:
        for key, timed in by_point.items():
            engine, precision, size, batch = key
            factory = _ort if engine == "ort" else _ov
            short = shortlist(timed)
            if len(short) == 1:
                chosen[key] = short[0]
            else:
                companion = _companion(bundle, engine, precision, size) if usage == "shared" else None
                retimed = confirm({p: (lambda p=p: factory(bundle, size, precision, p)) for p in short}, usage, size, batch, companion)
                confirmed[name(key)] = {p.label: round(ms, 4) for p, ms in retimed.items()}
                chosen[key] = choose_confirmed(retimed, usage)
                won[name(key)] = {p.label: list(w) for p, w in paired_wins(retimed, usage).items()}
                against[name(key)] = reference(list(retimed)).label
            advance(1)
    timings = {name(k): {p.label: round(ms, 4) for p, ms in v.items()} for k, v in by_point.items()}
    evidence = {"timings_p50_ms": timings, "confirmed_ms": confirmed, "confirm_pattern": usage,
                "confirmed_reference": against, "confirmed_wins": won, "interference": seen.to_dict()}
    store_settings(bundle_dir, chosen, evidence, usage)
    return TuneResult({name(k): p for k, p in chosen.items()}, timings, seen.busy, seen.summary(), usage, confirmed)


def _companion(bundle, engine: str, precision: str, size: int):
    """() -> the other engine of the shared pattern: OpenVINO as a user opens it (no hints: bf16 on a CPU with native
    bf16) on this size's fp32 file, where there is one (the layout that collapsed spinning ONNX Runtime sessions; the
    neighbour of benchmarks/bench_harness.py), else a non-spinning ONNX Runtime session."""
    from mmdeploy.bundle import OV
    from mmdeploy.engines.openvino import OvEngine, native_bf16

    record = bundle.artifact(size, OV, "fp32")
    if bundle.artifact_usable(record):
        plain = ThreadPolicy(usable_cores(), False, "tuned", usable_cores(), "default")
        return lambda: OvEngine(bundle.path(record.file), size, "bf16" if native_bf16() else "fp32", policy=plain)
    return lambda: _ort(bundle, size, precision if engine == "ort" else "fp32", ort_default_policy())


def _ort(bundle, size: int, precision: str, policy: ThreadPolicy):
    from mmdeploy.engines.loader import load_engine

    return load_engine(bundle, "ort", size, precision, policy=policy)


def _ov(bundle, size: int, precision: str, policy: ThreadPolicy):
    from mmdeploy.engines.loader import load_engine

    return load_engine(bundle, "ov", size, precision, policy=policy)


@dataclass
class BenchSummary:
    """What ``mmdeploy bench`` measured: latencies, the machine they were taken on, what was skipped and why, and the
    ONNX Runtime settings chosen first when tuning was asked for (``mmdeploy.latency.tune.TuneResult``, else None)."""

    results: list[LatencyResult]
    environment: dict
    skipped: list[str]
    tuned: object = None


def tune_and_bench(
    bundle_dir: str | Path,
    engines: list[str] | None = None,
    precisions: list[str] | None = None,
    sizes: list[int] | None = None,
    batches: list[int] | None = None,
    warmup: int = 10,
    iters: int = 50,
    tune: bool = False,
    noise_budget_s: float = 30.0,
    progress: Progress | None = None,
    usage: str = "shared",
) -> BenchSummary:
    """``mmdeploy bench``: with ``tune``, first choose ONNX Runtime's threads and spinning and OpenVINO's threads and
    streams per size and batch by measurement (stored in the bundle; engines then use them), then
    :func:`mmdeploy.latency.bench.bench_bundle`. It lives here, above both the tuner and the timing it calls."""
    from mmdeploy.latency.bench import bench_bundle

    check_usage(usage)  # refused with or without --tune: a typo must not pass silently
    tuned = None
    if tune:
        from mmdeploy.engines.registry import tunable_engines

        tunable = tuple(e for e in (engines or tunable_engines()) if e in tunable_engines()) or ("ort",)
        tuned = tune_bundle(bundle_dir, precisions, sizes, batches, noise_budget_s=noise_budget_s, progress=progress, engines=tunable,
                            usage=usage)
    results, env, skipped = bench_bundle(bundle_dir, engines, precisions, sizes, batches, warmup, iters, progress=progress,
                                         noise_budget_s=noise_budget_s)
    return BenchSummary(results, env, skipped, tuned)
