"""benchmarks/bench_harness.py's timing patterns, run on fake engines and a virtual clock (no sleeping, no real engine):
each pattern times what its usage's requests meet, and the shared pattern charges a neighbour's slowdown to the
configuration that causes it. Speed figures come from the script itself, never from here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_harness.py"
X = np.zeros((1, 3, 2, 2), np.float32)


class Clock:
    """Virtual time in seconds; remembers which fake engine ran last and when it returned."""

    def __init__(self):
        self.now, self.last, self.last_end = 0.0, None, -1.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeEngine:
    """Takes ``ms`` per call; ``after``: ms it takes instead right after the named engine; ``idle_ms``: ms it takes
    instead when nothing ran in the last millisecond (its workers went to sleep)."""

    def __init__(self, clock: Clock, name: str, ms: float, after: dict | None = None, idle_ms: float | None = None):
        self.clock, self.name, self.ms, self.after, self.idle_ms = clock, name, ms, after or {}, idle_ms

    def __call__(self, x):
        c = self.clock
        ms = self.after.get(c.last, self.ms)
        if self.idle_ms is not None and c.now - c.last_end > 1e-3:
            ms = self.idle_ms
        c.now += ms / 1000
        c.last, c.last_end = self.name, c.now
        return x


@pytest.fixture
def harness(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clock = Clock()
    monkeypatch.setattr(module, "_clock", lambda: clock.now)
    monkeypatch.setattr(module, "_sleep", clock.sleep)
    return module, clock


def test_shared_cost_charges_the_neighbours_slowdown_to_the_configuration_that_causes_it(harness):
    h, clock = harness
    # "spinner" is the fastest alone but keeps the cores: the neighbour takes 3 ms after it instead of 1 ms; right after
    # its own call it takes 1.4 ms (as OpenVINO did at batch 1), so its undisturbed time is the 1 ms after "calm"
    neighbour = FakeEngine(clock, "N", 1.0, after={"spinner": 3.0, "N": 1.4})
    runs = {"spinner": FakeEngine(clock, "spinner", 0.2), "calm": FakeEngine(clock, "calm", 0.5)}
    pairs, alone = h.time_shared(runs, neighbour, X, rounds=3, calls=4, gap_ms=10.0)
    assert alone == pytest.approx(1.0)
    own, after, cost = pairs["spinner"]
    assert (own, after, cost) == pytest.approx((0.2, 3.0, 2.2))
    assert pairs["calm"] == pytest.approx((0.5, 1.0, 0.5))
    assert min(pairs, key=lambda n: pairs[n][2]) == "calm", "ranked by cost, not by its own time"


def test_isolated_times_every_call_after_an_idle_gap_and_stream_back_to_back(harness):
    h, clock = harness
    # "hot" is fast only while its workers are awake; "steady" takes the same time either way
    runs = {"hot": FakeEngine(clock, "hot", 0.2, idle_ms=2.0), "steady": FakeEngine(clock, "steady", 0.8)}
    stream = h.time_blocks(runs, X, rounds=3, block_ms=5.0, gap_ms=10.0)
    isolated = h.time_isolated(runs, X, rounds=3, calls=4, gap_ms=10.0)
    assert stream == pytest.approx({"hot": 0.2, "steady": 0.8})
    assert isolated == pytest.approx({"hot": 2.0, "steady": 0.8})


def test_help_names_the_usage_patterns():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--usage {stream,isolated,shared}" in done.stdout and "--calls" in done.stdout
