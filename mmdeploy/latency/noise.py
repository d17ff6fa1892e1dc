"""Interference seen while timing: is the machine quiet enough for latencies to mean something?

A latency pass is bracketed by two :func:`sample` calls. Between them, the CPU time other
processes used on the cores this process may run on (from /proc/stat, minus this process's
own CPU time) says whether anything competed for the cores; the per-point spread p90/p50 says
whether the timings themselves wobbled. The load average is recorded for the reader only (it
is smoothed over a minute and counts this process too).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmdeploy.latency.threads import usable_cores

# Above these a pass is "busy": other processes used more than this fraction of the usable
# cores, or a point's p90 was more than this multiple of its p50. A quiet 2-core machine shows
# under 3% others and spreads under 1.3 for sub-millisecond calls.
MAX_OTHERS_CPU = 0.10
MAX_SPREAD = 1.6
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit


@dataclass
class CpuSample:
    wall: float
    own_cpu: float  # seconds, all threads of this process
    busy: int | None  # jiffies on the usable cores, None without /proc/stat
    total: int | None
    load1: float | None


def _proc_stat(cores: set[int] | None) -> tuple[int, int] | None:
    """Busy and total jiffies summed over ``cores`` (all CPUs if None)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        values = [int(v) for v in rest.split()[:8]]
        values += [0] * (8 - len(values))
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total else None


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def sample() -> CpuSample:
    stat = _proc_stat(_affinity())
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    return CpuSample(time.perf_counter(), time.process_time(), *(stat or (None, None)), load1)


@dataclass
class Interference:
    """What competed with a timing pass, and the verdict."""

    seconds: float
    cores: int
    others_cpu: float | None  # fraction of the usable cores' time other processes used (None: unknown)
    own_cpu: float  # this process's CPU seconds per wall second (its threads, spinning included)
    load1: float | None
    max_spread: float  # the largest p90/p50 over the pass's points
    busy: bool  # others above MAX_OTHERS_CPU, or some point's spread above MAX_SPREAD
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        """One phrase: how busy the machine was."""
        parts = []
        if self.others_cpu is not None:
            parts.append(f"other processes used {self.others_cpu:.0%} of the {self.cores} cores")
        parts.append(f"p90/p50 up to {self.max_spread:.1f}x")
        if self.load1 is not None:
            parts.append(f"load average {self.load1:.1f}")
        return ", ".join(parts)


def interference(before: CpuSample, after: CpuSample, spreads: list[float]) -> Interference:
    """Judge the pass between two samples; ``spreads`` are its points' p90/p50."""
    wall = max(after.wall - before.wall, 1e-9)
    own = after.own_cpu - before.own_cpu
    cores = usable_cores()
    others = None
    if before.busy is not None and after.busy is not None and after.total > before.total:
        ticks = after.total - before.total
        own_ticks = own * _CLOCK_TICKS
        others = min(1.0, max(0.0, (after.busy - before.busy) - own_ticks) / ticks)
    max_spread = max(spreads, default=1.0)
    reasons = []
    if others is not None and others > MAX_OTHERS_CPU:
        reasons.append(f"other processes used {others:.0%} of the cores (limit {MAX_OTHERS_CPU:.0%})")
    noisy_points = sum(s > MAX_SPREAD for s in spreads)
    if noisy_points:
        reasons.append(f"{noisy_points} of {len(spreads)} points had p90/p50 above {MAX_SPREAD:g}x")
    return Interference(wall, cores, others, own / wall, after.load1, max_spread, bool(reasons), reasons)


def point_is_noisy(p50: float, p90: float) -> bool:
    return p90 > MAX_SPREAD * p50


def machine_was_busy(seen: Interference) -> bool:
    """Other processes competed for the cores: every point of the pass is unreliable."""
    return seen.others_cpu is not None and seen.others_cpu > MAX_OTHERS_CPU
