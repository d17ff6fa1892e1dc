"""One latency protocol for every engine: warm-up, synchronized timing, round-robin, percentiles.

Points are timed round-robin (one call of each, then again), so drift of a shared machine
hits every point alike, and reports compare latencies as ratios measured in the same run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdeploy.bundle.lock import reading_bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.machine import BENCH_PROTOCOL, environment  # noqa: F401  (BENCH_PROTOCOL: re-exported)
from mmdeploy.latency.noise import Interference, interference, machine_was_busy, point_is_noisy, sample
from mmdeploy.latency.threads import ThreadPolicy
from mmdeploy.progress import Progress
from mmdeploy.results import LatencyResult
from mmdeploy.stats import median_interval


@dataclass
class BenchTarget:
    size: int
    engine: str
    precision: str
    make_engine: Callable  # () -> Engine
    only_batches: tuple[int, ...] | None = None  # e.g. an ONNX with a fixed batch: time only that batch


def _percentile(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(size: int, engine: str, precision: str, batch: int, times_ms: list[float], device: str, threads: int) -> LatencyResult:
    s = sorted(times_ms)
    p50 = _percentile(s, 0.5)
    return LatencyResult(size, engine, precision, batch, p50, _percentile(s, 0.9), _percentile(s, 0.99), statistics.fmean(s),
                         1000.0 * batch / p50, len(s), device, threads, p50_ci_ms=list(median_interval(s)))


def measure_latency(
    targets: list[BenchTarget],
    batches: list[int],
    warmup: int = 10,
    iters: int = 50,
    progress: Progress | None = None,
    noise_budget_s: float = 0.0,
) -> list[LatencyResult]:
    """Time every (target, batch) ``iters`` times, in rounds of one sample each (shuffled per round), after ``warmup`` rounds.

    A sample of a call shorter than :data:`BLOCK_MS` is the mean of back-to-back calls (see
    :func:`calls_per_sample`); percentiles are over samples."""
    return measure_with_interference(targets, batches, warmup, iters, progress, noise_budget_s)[0]


def measure_with_interference(
    targets: list[BenchTarget],
    batches: list[int],
    warmup: int = 10,
    iters: int = 50,
    progress: Progress | None = None,
    noise_budget_s: float = 0.0,
) -> tuple[list[LatencyResult], Interference]:
    """:func:`measure_latency`, watching for interference; a busy pass is re-timed while ``noise_budget_s`` lasts.

    The quietest pass is kept whole (ratios between points come from one pass). Points of a
    pass during which other processes used the cores, or whose own p90/p50 is too wide, come
    back with ``reliable=False``.
    """
    progress = progress or Progress()
    if iters < 1 or warmup < 0 or not batches or min(batches) < 1:
        raise MMDeployError("--iters must be >= 1, --warmup >= 0 and batches >= 1", "e.g. --batch 1 --batch 32 --iters 50")
    engines = []
    try:
        for t in targets:
            engines.append(t.make_engine().__enter__())
        gen = torch.Generator().manual_seed(0)
        cells = [(t, e, b, torch.randn(b, 3, t.size, t.size, generator=gen)) for t, e in zip(targets, engines) for b in batches
                 if t.only_batches is None or b in t.only_batches]
        started = time.perf_counter()
        best = None
        for attempt in range(1, 1000):
            before = sample()
            times, reps = _timed_pass(cells, engines, warmup if attempt == 1 else min(warmup, 2), iters, progress, attempt)
            summaries = [summarize(t.size, t.engine, t.precision, b, ts, e.device, _policy(e).threads) for (t, e, b, _), ts in zip(cells, times)]
            seen = interference(before, sample(), [r.p90_ms / r.p50_ms for r in summaries])
            score = (seen.others_cpu or 0.0, seen.max_spread)
            if best is None or score < best[0]:
                best = (score, summaries, seen, reps)
            if not seen.busy or time.perf_counter() - started >= noise_budget_s:
                break
    finally:
        for e in engines:
            e.__exit__(None, None, None)
    _, results, seen, reps = best
    machine_busy = machine_was_busy(seen)
    for r, (_, e, _, _), k in zip(results, cells, reps):
        r.policy = _policy(e).to_dict()
        r.reliable = not machine_busy and not point_is_noisy(r.p50_ms, r.p90_ms)
        r.noise = {"spread": round(r.p90_ms / r.p50_ms, 3), "others_cpu": None if seen.others_cpu is None else round(seen.others_cpu, 4),
                   "load1": seen.load1, "passes": attempt, "calls_per_sample": k}
    return results, seen


# A call shorter than this is timed in back-to-back blocks: a sample is the mean of ``k`` calls
# lasting at least BLOCK_MS, after one untimed call that wakes the engine's threads and caches up
# after the previous point ran. Single sub-millisecond calls measure the timer, the scheduler's
# wake-up and the last point's cache footprint as much as the engine (p90/p50 of 2-6x on a quiet
# machine); blocks measure what a caller issuing requests back to back gets.
BLOCK_MS = 2.0
MAX_CALLS_PER_SAMPLE = 64


def calls_per_sample(warm_ms: float) -> int:
    """How many back-to-back calls one sample averages, from a warm call's time in ms."""
    if warm_ms <= 0 or warm_ms >= BLOCK_MS:
        return 1
    return min(MAX_CALLS_PER_SAMPLE, math.ceil(BLOCK_MS / warm_ms))


def _timed_pass(cells, engines, warmup: int, iters: int, progress: Progress, attempt: int) -> tuple[list[list[float]], list[int]]:
    """Per cell: ``iters`` samples in ms per call, and the calls each sample averaged."""
    times: list[list[float]] = [[] for _ in cells]
    warm: list[list[float]] = [[] for _ in cells]
    title = f"timing {len(cells)} points" if attempt == 1 else f"re-timing {len(cells)} points (machine busy, pass {attempt})"
    with progress.task(title, (max(warmup, 1) + iters) * len(cells)) as advance:
        for _ in range(max(warmup, 1)):
            for i, (_, e, _, x) in enumerate(cells):
                start = time.perf_counter()
                e(x)
                e.synchronize()
                warm[i].append(1000.0 * (time.perf_counter() - start))
                advance(1)
        reps = [calls_per_sample(statistics.median(w[len(w) // 2:])) for w in warm]
        order_gen = torch.Generator().manual_seed(1)
        for _ in range(iters):
            # Each round times every point once, in a fresh seeded order: neither drift nor the
            # after-effects of the previous point (cold caches after a big batch) favour a point.
            for i in torch.randperm(len(cells), generator=order_gen).tolist():
                _, e, _, x = cells[i]
                k = reps[i]
                if k > 1:
                    e(x)
                    e.synchronize()
                start = time.perf_counter()
                for _ in range(k):
                    e(x)
                e.synchronize()
                times[i].append(1000.0 * (time.perf_counter() - start) / k)
                advance(1)
    return times, reps


def _policy(engine) -> ThreadPolicy:
    # A GPU engine (TensorRT) drives the device from this one host thread; it has no CPU pool to set.
    return getattr(engine, "policy", None) or ThreadPolicy(1, False, "gpu engine" if engine.device.startswith("cuda") else "unknown")


@reading_bundle("bundle_dir")  # no writer sweeps what it reads; results merge under the lock
def bench_bundle(
    bundle_dir: str | Path,
    engines: list[str] | None = None,
    precisions: list[str] | None = None,
    sizes: list[int] | None = None,
    batches: list[int] | None = None,
    warmup: int = 10,
    iters: int = 50,
    progress: Progress | None = None,
    noise_budget_s: float = 30.0,
) -> tuple[list[LatencyResult], dict, list[str]]:
    """Latency of every (size, engine, precision) the bundle can run; results go into the manifest.

    Each engine runs under its thread policy (ONNX Runtime: the settings `--tune` stored, per
    batch); a pass that saw interference is re-timed while ``noise_budget_s`` lasts, and points
    still noisy are stored with ``reliable: false``.

    Returns (results, environment, skipped-with-reason lines)."""
    from mmdeploy.bundle import Bundle
    from mmdeploy.engines import available_engines, check_choices, serves
    from mmdeploy.engines.loader import load_engine
    from mmdeploy.engines.registry import engine_names, engine_spec
    from mmdeploy.writable import ensure_writable

    check_choices(engines, precisions)
    bundle = Bundle.open(bundle_dir)
    ensure_writable(bundle.root)  # before the timing, not after
    sizes = [int(s) for s in sizes] if sizes else bundle.sizes
    for s in sizes:
        bundle.size(s)  # refuses a size the bundle lacks
    batches = batches or [1, 32]
    reasons = available_engines()
    wanted = engines or list(engine_names())
    targets, skipped = [], []
    for name in wanted:
        if reasons[name]:
            if engines:
                skipped.append(f"{name}: {reasons[name]}")
            continue
        for prec in precisions or ["fp32"]:
            if not serves(name, prec):
                continue
            for s in sizes:
                if not has_artifact(bundle, name, s, prec):
                    if engines or name != "torch":  # an engine that works here but was not exported: say so
                        skipped.append(f"{name} {prec} at {s}: " + (f"torch has no {prec} here" if name == "torch" else
                                       f"not exported (run `mmdeploy export {bundle.root} --engine {name} --precision {prec}`)"))
                    continue
                fixed = _static_batch(bundle, name, s, prec)
                if fixed is not None and fixed not in batches:
                    skipped.append(f"{name} {prec} at {s}: its ONNX has a fixed batch of {fixed} (pass --batch {fixed})")
                    continue
                if engine_spec(name).tunable and fixed is None:  # settings are tuned per batch: one engine per batch
                    targets += [BenchTarget(s, name, prec, lambda s=s, n=name, p=prec, b=b: load_engine(bundle, n, s, p, tuned_batch=b), (b,))
                                for b in batches]
                else:
                    targets.append(BenchTarget(s, name, prec, lambda s=s, n=name, p=prec: load_engine(bundle, n, s, p), None if fixed is None else (fixed,)))
    if not targets:
        raise MMDeployError(f"nothing to benchmark in {bundle.root}", "; ".join(skipped) or "export the bundle first")
    check_bench_fits(bundle, targets, batches)
    results, seen = measure_with_interference(targets, batches, warmup, iters, progress, noise_budget_s)
    env = {**environment(), "interference": seen.to_dict(), "interference_summary": seen.summary()}
    with Bundle.update(bundle_dir) as current:  # read-modify-write under the lock: a concurrent eval keeps its results
        for r in results:
            if current.has_size(r.size) and current.point_fingerprint(r.key) == bundle.point_fingerprint(r.key):
                current.record_latency(r)
        current.set_bench_environment(env)
    return results, env, skipped


def check_bench_fits(bundle, targets: list[BenchTarget], batches: list[int]) -> None:
    """Refuse, before any timing, batches that would not fit in memory (``--batch 1000000`` is otherwise killed by the
    kernel): every point's random input batch is held at once, and one forward pass at the largest batch runs at a time.
    The same estimate as calibrate's and eval's (:func:`mmdeploy.models.fit.check_model_fits`), against host memory."""
    from mmdeploy.models.fit import check_model_fits

    batches = [b for b in batches if b >= 1]  # the others are refused by the timing's own checks
    if not batches or not targets:
        return
    largest = max(batches)
    held = sum(4 * 3 * t.size * t.size * b for t in targets for b in batches if t.only_batches is None or b in t.only_batches)
    check_model_fits(bundle.build_model(None), sorted({t.size for t in targets}), largest, "cpu", held_per_image=-(-held // largest))


def _static_batch(bundle, engine: str, size: int, precision: str) -> int | None:
    """The fixed batch of an ONNX exported with --static-batch (other batches would be padded), else None."""
    from mmdeploy.bundle import ONNX
    from mmdeploy.engines.registry import artifact_of

    art = bundle.artifact(size, ONNX, precision) if artifact_of(engine) == ONNX else None
    return art.static_batch if art else None


def has_artifact(bundle, engine: str, size: int, precision: str) -> bool:
    if engine == "torch":
        from mmdeploy.engines import torch_runs

        return torch_runs(precision)
    from mmdeploy.engines.registry import artifact_of  # ort runs the ONNX itself; trt and ov have their own entries

    art = bundle.artifact(size, artifact_of(engine), precision)
    return art is not None and bundle.path(art.file).exists()
