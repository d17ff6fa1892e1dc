"""The second round of ``mmdeploy bench --tune``: the first pass's front runners re-timed, on fresh engines, in the
pattern of calls the engine will serve (its ``usage``), and the choice made from that round.

Why a second round. The first pass times every setting of every point interleaved (:mod:`mmdeploy.latency.bench`), a
hundred engines alive at once, one short block each in turn. Taking the fastest of many noisy medians picks the setting
that was lucky as often as the one that is fast (the winner's curse), and one compiled instance of a setting can be
10-15% off another of the same setting; the tuned choice then lost up to 14% to OpenVINO's plain defaults in an
independent harness (``benchmarks/bench_harness.py``, stream usage, batch 32). So the settings within
``SHORTLIST[0]`` of the fastest (at most ``SHORTLIST[1]``), plus the best of the settings a user would pick unasked (a
preset: ONNX Runtime's default session, OpenVINO's defaults or its throughput hint) and, where the front runner spins,
the best one that does not, are opened afresh and re-timed, only they, in the usage's own pattern:

- ``stream`` (requests back to back, the engine alone in its process): blocks of back-to-back calls, each after an
  idle gap, a longer one after a setting that spins (ONNX Runtime's workers spin on for about 35 ms after a run, and
  slowed the next setting's block, OpenVINO's by up to 1.5x, through a 10 ms gap);
- ``isolated`` (one request at a time, idle between, the engine alone in its process): turns, one setting at a time
  after the previous one's workers have stopped spinning, each call of a turn an idle gap after the previous one of
  the same setting (what counts is how fast its threads wake up, or whether they are still spinning);
- ``shared`` (other engines in the process): one call between two calls of another engine (the companion); the figure
  is the setting's median call plus the slowdown it leaves the companion's next call (:func:`charged`), because a
  setting that spins after its run slows the next engine more than itself.

The choice (:func:`choose_confirmed`): the library's defaults unless another setting is faster by more than
``SIMPLER_WITHIN`` and won significantly more of the round's paired rounds (a sign test); among those that do, the
simplest within ``SIMPLER_WITHIN`` of the fastest. Under ``shared`` a setting that spins counts ``SPIN_PENALTY`` slower.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import ExitStack, contextmanager
from math import comb

from mmdeploy.errors import MMDeployError
from mmdeploy.latency.threads import ThreadPolicy

USAGES = ("shared", "stream", "isolated")  # how the tuned engine will run; the first is the default
ALONE = ("stream", "isolated")  # the usages with the engine alone in its process: ONNX Runtime's default session may spin
SIMPLER_WITHIN = 0.02  # a setting this much slower than the fastest still wins if it is simpler
SPIN_PENALTY = 0.10  # under shared use, spinning wins only when more than this much faster (see choose)
SHORTLIST = (0.25, 4)  # the second round re-times the settings within 25% of the fastest of the first, at most 4 (+ a preset)
ROUNDS = {"stream": 15, "isolated": 12, "shared": 60}  # timed rounds per usage (after 2 of warm-up, isolated 1); isolated: TURN_CALLS calls per round
TURN_CALLS = 4  # isolated: timed calls per setting's turn, each GAP_MS after the previous one of the same setting
LONG_CALL_MS = 50.0  # isolated: from this call length on, one timed call per turn (a large model's round stays short)
SIGNIFICANCE = 0.05  # a setting replaces the preset only if it won so many paired rounds that chance gives that <= 5% of the time
POINT_BUDGET_S = 10.0  # a point's round stops after this long once MIN_ROUNDS are timed (a ResNet-50 call lasts 100x the demo's)
MIN_ROUNDS = 5
CHARGE_ABOVE = 0.03  # shared: a slowdown of the next engine above this share of its time is charged to the setting
GAP_MS = 10.0  # idle time before each block (stream) or call (isolated)
SPIN_SETTLE_MS = 50.0  # idle time after a spinning setting's stream block, and before every isolated turn (ONNX Runtime's workers spun on ~35 ms after a run)
BLOCK_MS = 5.0  # a stream block lasts at least this long: a steady stream, not the wake-up after the gap
WAKE_MS = 1.0  # untimed back-to-back calls before each stream block (the threads woken, the caches warm)


def check_usage(usage: str) -> None:
    if usage not in USAGES:
        raise MMDeployError(f"unknown usage {usage!r}", f"use --usage {' or --usage '.join(USAGES)}")


def choose(timings: dict[ThreadPolicy, float], spin_penalty: float = SPIN_PENALTY) -> ThreadPolicy:
    """The simplest setting within SIMPLER_WITHIN of the fastest (``timings``: ms by setting), a setting that may
    spin counted ``spin_penalty`` slower: spin-waiting workers take the cores from everything else between
    operators, and on a 2-core machine their gain turned into 5-10x slower runs whenever another engine or
    process ran beside them (measured in the round-robin bench), so spinning must win clearly to be chosen."""
    def cost(p: ThreadPolicy) -> float:
        return timings[p] * (1 + spin_penalty if p.spinning else 1)

    fastest = min(cost(p) for p in timings)
    simplest_first = sorted(timings, key=lambda p: (p.spinning, p.preset != "default", not p.preset, p.streams, p.threads, p.precision_hint))
    return next(p for p in simplest_first if cost(p) <= fastest * (1 + SIMPLER_WITHIN))


def shortlist(timings: dict[ThreadPolicy, float]) -> list[ThreadPolicy]:
    """What the second round re-times, from the first pass's ``timings``: the settings within SHORTLIST[0] of the fastest,
    fastest first, at most SHORTLIST[1]; then each preset not among them (the library's defaults, the reference of
    :func:`choose_confirmed`, and OpenVINO's throughput hint: what a user would pick unasked; in the isolated pattern
    the hint ran 1.3x faster than the defaults at 48 px int8 batch 32 though 5th of the first pass, within 1%);
    then, if every one of them spins, the fastest setting that does not. One setting alone needs no second round."""
    within, most = SHORTLIST
    fastest = min(timings.values())
    ranked = sorted(timings, key=timings.get)
    short = [p for p in ranked if timings[p] <= fastest * (1 + within)][:most]
    for kind in ("default", "throughput"):  # every preset: the choices a user makes unasked are always re-timed
        kind_ranked = [p for p in ranked if p.preset == kind]
        if kind_ranked and not any(p.preset == kind for p in short):
            short.append(kind_ranked[0])
    quiet = [p for p in ranked if not p.spinning]
    if quiet and all(p.spinning for p in short):
        short.append(quiet[0])
    return short


def confirm(make: dict[ThreadPolicy, object], usage: str, size: int, batch: int, companion=None,
            rounds: int | None = None) -> Confirmed:
    """The second round: median ms per setting of ``make`` (policy -> () -> Engine, opened afresh here) in ``usage``'s
    pattern (see the module's docstring), with each setting's figure per timed round (:class:`Confirmed`);
    ``companion`` (() -> Engine) is the other engine of the ``shared`` pattern."""
    check_usage(usage)
    rounds = rounds or ROUNDS[usage]
    if usage == "shared":
        if companion is None:
            raise ValueError("the shared pattern needs a companion engine")
        with companion() as other:  # X, N, X', N, ...: the companion's call after each setting is also the one before the next
            return _time_shared(make, size, batch, rounds, other)
    if usage == "isolated":
        return _time_turns(make, size, batch, rounds)
    return _time_blocks(make, size, batch, rounds)


def _time_shared(make: dict[ThreadPolicy, object], size: int, batch: int, rounds: int, companion) -> Confirmed:
    """``shared``: per setting, the median ms of its call plus what it costs ``companion`` called right after it
    (:func:`charged`); the settings called one by one, each followed by one companion call (X, N, X', N, ...), in a fresh
    shuffled order each round (a fixed order would give each setting the same predecessor every round, and the paired
    test would turn that into a win), after two rounds of warm-up. Per round, each setting's figure is its call plus
    the companion's next call minus the companion's least median after any setting: the median cost's form, so the
    spinning penalty scales the same quantity in the paired test as in the medians."""
    with _opened(make, size, batch) as (x, engines):
        own: dict[ThreadPolicy, list[float]] = {p: [] for p in engines}
        then: dict[ThreadPolicy, list[float]] = {p: [] for p in engines}
        for timed, order in _rounds(engines, rounds, warmup=2):
            for policy in order:
                start = time.perf_counter()
                engines[policy](x)
                middle = time.perf_counter()
                companion(x)
                if timed:
                    own[policy].append(1000.0 * (middle - start))
                    then[policy].append(1000.0 * (time.perf_counter() - middle))
        after = {p: statistics.median(t) for p, t in then.items()}
        least = min(after.values())
        per_round = {p: [a + b - least for a, b in zip(own[p], then[p])] for p in own}
        return Confirmed(charged({p: statistics.median(t) for p, t in own.items()}, after), per_round)


@contextmanager
def _opened(make: dict[ThreadPolicy, object], size: int, batch: int):
    """(the round's input batch, policy -> engine opened afresh from ``make``), every engine closed on the way out."""
    import torch

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with ExitStack() as stack:
        yield x, {policy: stack.enter_context(factory()) for policy, factory in make.items()}


def _rounds(engines: dict, rounds: int, warmup: int):
    """(whether the round is timed, the settings in a fresh shuffled order) for ``warmup`` untimed rounds and then
    ``rounds`` timed ones, stopping early at the point's time budget (:func:`_spent`, which counts two warm-up rounds)."""
    order, rng = list(engines), random.Random(0)
    started = time.perf_counter()
    for i in range(rounds + warmup):
        if _spent(i + 2 - warmup, started):
            return
        rng.shuffle(order)
        yield i >= warmup, order


def _spent(i: int, started: float) -> bool:
    """Whether the round about to start (``i``, counting the two warm-up rounds) may be skipped: MIN_ROUNDS are timed and
    the point has had POINT_BUDGET_S (a large model keeps the second round to seconds per point, not minutes)."""
    return i >= 2 + MIN_ROUNDS and time.perf_counter() - started > POINT_BUDGET_S


def charged(own: dict[ThreadPolicy, float], after: dict[ThreadPolicy, float]) -> dict[ThreadPolicy, float]:
    """Each setting's own ms plus the slowdown it leaves the engine that runs next (``after``: that engine's median ms
    right after it), measured from the least such median; a slowdown within CHARGE_ABOVE of that engine's time is the
    timing's noise and is not charged (the next engine can take 3x a setting's own time, and its noise drowned the
    settings' differences)."""
    least = min(after.values())
    return {p: own[p] + (after[p] - least if after[p] - least > CHARGE_ABOVE * least else 0.0) for p in own}


def _time_blocks(make: dict[ThreadPolicy, object], size: int, batch: int, rounds: int) -> Confirmed:
    """Median over rounds of the mean ms per call in a block of back-to-back calls lasting at least BLOCK_MS, each block
    after GAP_MS idle (SPIN_SETTLE_MS after a spinning setting's block) and WAKE_MS of untimed calls; the settings in a
    fresh shuffled order each round, after two warm-up rounds."""
    with _opened(make, size, batch) as (x, engines):
        calls, wake = {}, {}
        for policy, engine in engines.items():
            engine(x)
            start = time.perf_counter()
            engine(x)
            call_ms = max(1e-3, 1000.0 * (time.perf_counter() - start))
            calls[policy], wake[policy] = max(1, min(256, int(BLOCK_MS / call_ms) + 1)), max(1, min(64, int(WAKE_MS / call_ms)))
        times: dict[ThreadPolicy, list[float]] = {p: [] for p in engines}
        previous = None
        for timed, order in _rounds(engines, rounds, warmup=2):
            for policy in order:
                engine = engines[policy]
                time.sleep((SPIN_SETTLE_MS if previous is not None and previous.spinning else GAP_MS) / 1000)
                previous = policy
                for _ in range(wake[policy]):  # untimed: wakes the setting's threads, warms its caches after the previous setting
                    engine(x)
                start = time.perf_counter()
                for _ in range(calls[policy]):
                    engine(x)
                if timed:
                    times[policy].append(1000.0 * (time.perf_counter() - start) / calls[policy])
        return Confirmed({p: statistics.median(t) for p, t in times.items()}, times)


def _time_turns(make: dict[ThreadPolicy, object], size: int, batch: int, rounds: int) -> Confirmed:
    """``isolated``: per round, each setting in a fresh shuffled order takes a turn: SPIN_SETTLE_MS idle (whatever ran
    before has stopped spinning: the engine is alone in its process), one untimed call, then TURN_CALLS calls each
    GAP_MS after the previous one of the same setting, as its own requests would come; the round's figure is the turn's
    median call. One warm-up round. Timing the settings call by call instead let each call run 10 ms after another
    setting's, beside its still spinning workers, and found a spinning setting's own workers asleep. A setting whose
    call lasted LONG_CALL_MS or more in its last turn takes one timed call per turn and no untimed one (a large model:
    its threads' wake-up is noise beside such a call, and five calls per turn made a ResNet-50 point 5x longer)."""
    with _opened(make, size, batch) as (x, engines):
        times: dict[ThreadPolicy, list[float]] = {p: [] for p in engines}
        last: dict[ThreadPolicy, float] = {}
        for timed, order in _rounds(engines, rounds, warmup=1):
            for policy in order:
                engine = engines[policy]
                long_call = last.get(policy, 0.0) >= LONG_CALL_MS
                time.sleep(SPIN_SETTLE_MS / 1000)
                if not long_call:
                    engine(x)
                turn = []
                for _ in range(1 if long_call else TURN_CALLS):
                    time.sleep(GAP_MS / 1000)
                    start = time.perf_counter()
                    engine(x)
                    turn.append(1000.0 * (time.perf_counter() - start))
                last[policy] = statistics.median(turn)
                if timed:
                    times[policy].append(last[policy])
        return Confirmed({p: statistics.median(t) for p, t in times.items()}, times)


class Confirmed(dict):
    """The second round's result: median ms by setting (a dict), and ``rounds``: each setting's figure per timed round,
    the settings' lists aligned round by round (the same round's conditions), for :func:`choose_confirmed`'s paired test."""

    def __init__(self, medians: dict, rounds: dict[ThreadPolicy, list[float]]):
        super().__init__(medians)
        self.rounds = rounds


def wins_needed(n: int, alpha: float = SIGNIFICANCE) -> int:
    """The fewest wins out of ``n`` paired rounds that a fair coin reaches with probability <= ``alpha`` (one-sided sign
    test); n + 1 where even n wins of n do not (n < 5 at 5%)."""
    tail = 0.0
    for k in range(n, -1, -1):
        tail += comb(n, k) / 2**n
        if tail > alpha:
            return k + 1
    return 0


def choose_confirmed(confirmed: dict[ThreadPolicy, float], usage: str) -> ThreadPolicy:
    """The setting for one point from the second round's ``confirmed`` ms. The reference is the preset a user would pick
    unasked (OpenVINO's or ONNX Runtime's defaults; else the throughput hint; else the simplest setting); another setting
    replaces it only when it is faster in the round's medians by more than SIMPLER_WITHIN AND won enough of the paired
    rounds (:func:`wins_needed`: a sign test at SIGNIFICANCE) - the fastest of about five noisy medians is often only the
    luckiest, and such lucky choices lost 6-10% to OpenVINO's defaults in the independent harness (shared usage, batch 1).
    Among the settings that clear it, the simplest within SIMPLER_WITHIN of the fastest. Under ``shared`` (own time plus
    the slowdown charged for the companion) a spinning setting counts SPIN_PENALTY slower (a 3% win of a spinning setting
    there became 1.5x its isolated time beside OpenVINO in bench_harness.py). Without per-round figures (a plain dict):
    :func:`choose` on the medians."""
    check_usage(usage)
    penalty = SPIN_PENALTY if usage == "shared" else 0.0
    rounds = getattr(confirmed, "rounds", None)
    if not rounds:
        return choose(confirmed, penalty)
    cost = {p: confirmed[p] * (1 + penalty if p.spinning else 1.0) for p in confirmed}
    ref = reference(list(confirmed))
    wins = paired_wins(confirmed, usage)

    def clearly_faster(p: ThreadPolicy) -> bool:
        won, n = wins[p]
        return cost[p] < cost[ref] * (1 - SIMPLER_WITHIN) and won >= wins_needed(n)

    better = [p for p in confirmed if p != ref and clearly_faster(p)]
    if not better:
        return ref
    return choose({p: confirmed[p] for p in better}, penalty)


def paired_wins(confirmed: dict[ThreadPolicy, float], usage: str) -> dict[ThreadPolicy, tuple[int, int]]:
    """Per setting: (rounds it won against the reference of :func:`choose_confirmed`, rounds compared), the evidence
    stored with the choice; a tie counts as a loss (conservative); empty without per-round figures."""
    rounds = getattr(confirmed, "rounds", None)
    if not rounds:
        return {}
    penalty = SPIN_PENALTY if usage == "shared" else 0.0
    ref = reference(list(confirmed))
    n = min(len(rounds[p]) for p in confirmed)
    scale = lambda p: 1 + penalty if p.spinning else 1.0  # noqa: E731
    return {p: (sum(a * scale(p) < b * scale(ref) for a, b in zip(rounds[p][:n], rounds[ref][:n])), n)
            for p in confirmed if p != ref}


def reference(settings: list[ThreadPolicy]) -> ThreadPolicy:
    """What a setting must beat: the library's defaults, else its throughput hint, else the simplest setting."""
    for preset in ("default", "throughput"):
        found = [p for p in settings if p.preset == preset]
        if found:
            return min(found, key=lambda p: (p.spinning, p.precision_hint))
    return min(settings, key=lambda p: (p.spinning, p.streams, p.threads, p.precision_hint))
