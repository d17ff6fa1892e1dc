"""Engine settings chosen by measurement (``mmdeploy bench --tune``), stored in the bundle.

For ONNX Runtime every combination of intra-op threads (1..usable cores) and spinning on/off
is timed, interleaved in one run, per size, precision and batch; for OpenVINO, threads
1..usable cores with one stream (latency hint) and, from batch 8, the batch split over one
stream per thread (throughput hint). The settings any user would pick without tuning are
always among the candidates, so the choice is never slower than them in this measure: ONNX
Runtime's default session (no options), OpenVINO's defaults (no hints) and, from batch 8, its
throughput hint alone; for OpenVINO int8, each setting with the non-quantized parts pinned to
f32 and with the CPU's default precision (bf16 where native). The fastest wins, except that
a simpler setting (OpenVINO's defaults, fewer threads, no spinning) within ``SIMPLER_WITHIN``
of it is preferred, since it leaves more of the machine to everything else for no measurable loss.

How the engine will be used (``usage``) decides what spinning must prove. ``stream``: requests
back to back in a process of its own; the fastest wins, ONNX Runtime's default session as it comes (spinning after
each run). ``isolated``: one engine per process, requests one at a time with idle gaps; the settings within 25% of
the fastest back to back are re-timed one call after an idle gap each (:func:`gapped_check`), and the fastest there
wins. ``shared`` and ``isolated`` time ONNX Runtime's default session with its spinning stopped after each run (it
would take the cores from the next engine, or burn them until the next request). ``shared`` (the default, and how
``mmdeploy bench`` runs every engine in one process): a winner whose workers spin (ONNX
Runtime's default session spins too) is re-timed against the fastest non-spinning setting with
another engine called between its calls, and kept only if the pair (its call and the other
engine's next call) still takes SPIN_PENALTY less time than with the non-spinning setting (spinning on few
cores has turned a 0.3 ms run into 3-4 ms beside OpenVINO, and slowed OpenVINO after it). The usage is stored with the choice.
Engines created from the bundle load these settings unless told otherwise. Settings tuned on another
machine (CPU model, usable cores, onnxruntime version) are not loaded.

The settings live in the bundle (``Bundle.engine_settings`` / ``set_engine_settings``); this
module writes them only in :func:`store_settings`; they are read only through :func:`mmdeploy.latency.settings.stored_policy`.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mmdeploy.bundle.lock import reading_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.settings import machine_fingerprint, stored_policy  # noqa: F401  (re-exported)
from mmdeploy.latency.threads import ThreadPolicy, ort_default_policy, usable_cores
from mmdeploy.progress import Progress

if TYPE_CHECKING:
    from mmdeploy.results import LatencyResult

SIMPLER_WITHIN = 0.02  # a setting this much slower than the fastest still wins if it is simpler
SPIN_PENALTY = 0.10  # spinning wins only when more than this much faster (see choose)
USAGES = ("shared", "stream", "isolated")  # how the tuned engine will run (see the module's docstring); the first is the default
SHARED_ITERS = 40  # calls per setting in the shared-process check
GAP_MS = 10.0  # isolated usage: idle time before each timed call (a request arriving after the workers went idle)
GAP_ITERS = 15  # calls per setting in the isolated (gapped) re-timing
GAP_SHORTLIST = (0.25, 4)  # isolated usage re-times the settings within 25% of the fastest back to back, at most 4


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

    ``stream``: the default session exactly as ONNX Runtime opens it; it spins (session.intra_op.allow_spinning defaults
    to 1) and goes on spinning after each run, recorded as spinning. ``shared`` and ``isolated``: the default session with
    its workers' spinning stopped (``spinning: False``, see ``mmdeploy.engines.onnxruntime.session_options``): beside
    another engine, spinning after a run took the cores from the next engine (OpenVINO 2-9x slower right after it), and
    with idle gaps between requests it only burns the cores until the next request wakes the workers anyway."""
    cores = cores or usable_cores()
    explicit = [ThreadPolicy(t, spin, "tuned") for t in range(1, cores + 1) for spin in (False, True)]
    return [ThreadPolicy(cores, usage == "stream", "tuned", preset="default")] + explicit


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


def choose(timings: dict[ThreadPolicy, float], spin_penalty: float = SPIN_PENALTY) -> ThreadPolicy:
    """The simplest setting within SIMPLER_WITHIN of the fastest (``timings``: p50 ms by setting), a setting that may
    spin counted ``spin_penalty`` slower: spin-waiting workers take the cores from everything else between
    operators, and on a 2-core machine their gain turned into 5-10x slower runs whenever another engine or
    process ran beside them (measured in the round-robin bench), so spinning must win clearly to be chosen
    (unless the shared-process check of :func:`choose_for_usage` decides instead)."""
    def cost(p: ThreadPolicy) -> float:
        return timings[p] * (1 + spin_penalty if p.spinning else 1)

    fastest = min(cost(p) for p in timings)
    simplest_first = sorted(timings, key=lambda p: (p.spinning, p.preset != "default", p.streams, p.threads, p.precision_hint))
    return next(p for p in simplest_first if cost(p) <= fastest * (1 + SIMPLER_WITHIN))


def spinner_and_rival(timings: dict[ThreadPolicy, float]) -> tuple[ThreadPolicy, ThreadPolicy | None]:
    """The stream winner (no spin penalty) and, if it may spin, the best setting that does not (None if it does not spin
    or every candidate spins): the two the shared-process check times."""
    winner = choose(timings, 0.0)
    quiet = {p: t for p, t in timings.items() if not p.spinning}
    return winner, (choose(quiet, 0.0) if winner.spinning and quiet else None)


def choose_for_usage(timings: dict[ThreadPolicy, float], usage: str, shared_ms: dict[ThreadPolicy, float] | None = None,
                     gapped_ms: dict[ThreadPolicy, float] | None = None) -> ThreadPolicy:
    """The setting for one point. ``stream``: the fastest back to back. ``isolated``: the fastest of ``gapped_ms``
    (one call after an idle gap, see :func:`gapped_check`; without it, as ``stream``). ``shared``: a winner that spins
    keeps its place only if, with another engine in the process (``shared_ms``: its call plus the other engine's next
    call, see :func:`shared_check`), it still beats the best non-spinning setting by SPIN_PENALTY; without that
    check, spinning must win by SPIN_PENALTY back to back."""
    if usage not in USAGES:
        raise MMDeployError(f"unknown usage {usage!r}", f"use one of {', '.join(USAGES)}")
    if usage == "isolated" and gapped_ms:
        return choose(gapped_ms, 0.0)
    if usage in ("stream", "isolated"):
        return choose(timings, 0.0)
    winner, rival = spinner_and_rival(timings)
    if rival is None:
        return winner
    if not shared_ms or winner not in shared_ms or rival not in shared_ms:
        return choose(timings)
    # by SPIN_PENALTY, not SIMPLER_WITHIN: "2t spin" that won this check by 3% (ort int8, 16 px, batch 32) ran 1.5x its
    # isolated time in bench_harness.py beside OpenVINO, and slowed OpenVINO 1.6x (benchmarks/results/bench_harness_quiet.txt)
    return winner if shared_ms[winner] * (1 + SPIN_PENALTY) <= shared_ms[rival] else rival


def _time_interleaved(make: dict[ThreadPolicy, object], size: int, batch: int, iters: int, before, after=None) -> dict[ThreadPolicy, float]:
    """Median ms per setting of ``engine(x)`` plus ``after(x)``, with ``before(x)`` untimed ahead of each call; the
    engines of ``make`` (policy -> () -> Engine) interleaved call by call, after two rounds of warm-up."""
    import torch

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with ExitStack() as stack:
        engines = {policy: stack.enter_context(factory()) for policy, factory in make.items()}
        times: dict[ThreadPolicy, list[float]] = {p: [] for p in engines}
        for i in range(iters + 2):
            for policy, engine in engines.items():
                before(x)
                start = time.perf_counter()
                engine(x)
                if after is not None:
                    after(x)
                if i >= 2:  # two rounds of warm-up
                    times[policy].append(1000.0 * (time.perf_counter() - start))
        return {p: statistics.median(t) for p, t in times.items()}


def shared_check(make: dict[ThreadPolicy, object], companion, size: int, batch: int, iters: int = SHARED_ITERS) -> dict[ThreadPolicy, float]:
    """Median ms of one call of each engine in ``make`` (policy -> () -> Engine) plus the call of ``companion`` (() -> Engine:
    another engine in this process) that follows it, the settings interleaved call by call: the layout of a process
    serving several models, or of `mmdeploy bench`'s round robin. The pair is timed because a setting that spins after
    its run slows the next engine more than itself (measured: OpenVINO 2-5x slower after a default ORT session)."""
    with companion() as other:
        return _time_interleaved(make, size, batch, iters, before=other, after=other)


def gap_shortlist(timings: dict[ThreadPolicy, float]) -> list[ThreadPolicy]:
    """The settings the isolated usage re-times with gaps: those within GAP_SHORTLIST[0] of the fastest back to back,
    fastest first, at most GAP_SHORTLIST[1] (a setting much slower back to back does not win by waking up faster)."""
    within, most = GAP_SHORTLIST
    fastest = min(timings.values())
    return sorted((p for p, t in timings.items() if t <= fastest * (1 + within)), key=timings.get)[:most]


def gapped_check(make: dict[ThreadPolicy, object], size: int, batch: int, iters: int = GAP_ITERS, gap_ms: float = GAP_MS) -> dict[ThreadPolicy, float]:
    """Median ms of one call of each engine in ``make`` (policy -> () -> Engine) made ``gap_ms`` after the previous
    call of any of them, the settings interleaved call by call: requests that arrive one at a time to a process of its
    own, where what counts is how fast the engine's threads wake up, not how fast it runs back to back."""
    return _time_interleaved(make, size, batch, iters, before=lambda _x: time.sleep(gap_ms / 1000))


@dataclass
class TuneResult:
    chosen: dict  # "ort/fp32/16/b1" -> ThreadPolicy
    timings: dict  # "ort/fp32/16/b1" -> {policy label: p50 ms}
    busy: bool  # the tuning run saw interference (its choice may not hold on a quiet machine)
    interference: str
    usage: str = USAGES[0]  # what the choice was made for (see the module's docstring)
    shared_ms: dict | None = None  # "ort/fp32/16/b1" -> {policy label: median ms with another engine in the process}
    gapped_ms: dict | None = None  # isolated usage: "ort/fp32/16/b1" -> {policy label: median ms of a call after an idle gap}


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

    if usage not in USAGES:
        raise MMDeployError(f"unknown usage {usage!r}", f"use one of {', '.join(USAGES)}")
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
                                for pol in ort_candidates(usage=usage)]
            if "ov" in engines and not reasons["ov"] and serves("ov", precision) and bundle.artifact_usable(bundle.artifact(s, OV, precision)):
                for b in batches:
                    targets += [BenchTarget(s, f"ov {pol.label}", precision, lambda s=s, p=precision, pol=pol: _ov(bundle, s, p, pol), (b,))
                                for pol in ov_candidates(b, precision=precision)]
    if not targets:
        raise MMDeployError(f"nothing to tune in {bundle.root}: no per-size ONNX with a dynamic batch, no gated ov engine",
                            f"run `mmdeploy export {bundle.root} --engine ort` first")
    check_bench_fits(bundle, targets, batches)
    results, seen = measure_with_interference(targets, batches, warmup, iters, progress, noise_budget_s)
    by_point: dict[tuple, dict[ThreadPolicy, float]] = {}
    for r in results:
        policy = ThreadPolicy.from_dict(r.policy, source="tuned")
        by_point.setdefault((r.engine.split()[0], r.precision, r.size, r.batch), {})[policy] = r.p50_ms
    name = lambda k: "/".join(map(str, k[:3])) + f"/b{k[3]}"  # noqa: E731
    chosen, shared, gapped = {}, {}, {}
    for key, timed in by_point.items():
        engine, precision, size, batch = key
        factory = _ort if engine == "ort" else _ov
        winner, rival = spinner_and_rival(timed)
        if usage == "shared" and rival is not None:  # a spinning winner must hold with another engine in the process
            checked = shared_check({p: (lambda p=p: factory(bundle, size, precision, p)) for p in (winner, rival)},
                                   _companion(bundle, engine, precision, size), size, batch)
            shared[name(key)] = {p.label: round(ms, 4) for p, ms in checked.items()}
            chosen[key] = choose_for_usage(timed, usage, checked)
        elif usage == "isolated" and len(shortlist := gap_shortlist(timed)) > 1:  # requests one at a time, idle between
            checked = gapped_check({p: (lambda p=p: factory(bundle, size, precision, p)) for p in shortlist}, size, batch)
            gapped[name(key)] = {p.label: round(ms, 4) for p, ms in checked.items()}
            chosen[key] = choose_for_usage(timed, usage, gapped_ms=checked)
        else:
            chosen[key] = choose_for_usage(timed, usage)
    timings = {name(k): {p.label: round(ms, 4) for p, ms in v.items()} for k, v in by_point.items()}
    evidence = {"timings_p50_ms": timings, "shared_check_ms": shared, "gapped_check_ms": gapped, "interference": seen.to_dict()}
    store_settings(bundle_dir, chosen, evidence, usage)
    return TuneResult({name(k): p for k, p in chosen.items()}, timings, seen.busy, seen.summary(), usage, shared, gapped)


def _companion(bundle, engine: str, precision: str, size: int):
    """() -> the engine that shares the process in the shared check: OpenVINO's default engine of this size where there
    is one (the layout that collapsed spinning ONNX Runtime sessions), else a non-spinning ONNX Runtime session."""
    from mmdeploy.bundle import OV
    from mmdeploy.latency.threads import ov_default_policy

    if engine == "ort":
        for p in (precision, "fp32"):
            if bundle.artifact_usable(bundle.artifact(size, OV, p)):
                return lambda p=p: _ov(bundle, size, p, ov_default_policy())
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

    if usage not in USAGES:  # refused with or without --tune: a typo must not pass silently
        raise MMDeployError(f"unknown usage {usage!r}", f"use --usage {' or --usage '.join(USAGES)}")
    tuned = None
    if tune:
        from mmdeploy.engines.registry import tunable_engines

        tunable = tuple(e for e in (engines or tunable_engines()) if e in tunable_engines()) or ("ort",)
        tuned = tune_bundle(bundle_dir, precisions, sizes, batches, noise_budget_s=noise_budget_s, progress=progress, engines=tunable,
                            usage=usage)
    results, env, skipped = bench_bundle(bundle_dir, engines, precisions, sizes, batches, warmup, iters, progress=progress,
                                         noise_budget_s=noise_budget_s)
    return BenchSummary(results, env, skipped, tuned)
