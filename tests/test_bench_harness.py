"""benchmarks/bench_harness.py's timing patterns, run on fake engines and a virtual clock (no sleeping, no real engine):
each pattern times what its usage's requests meet, and the shared pattern charges a neighbour's slowdown to the
configuration that causes it; the isolated pattern's worker processes, on a tiny real ONNX file; the ratio's bootstrap
interval. Speed figures come from the script itself, never from here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
    per_round = {}
    pairs, alone = h.time_shared(runs, neighbour, X, rounds=3, calls=4, gap_ms=10.0, per_round=per_round)
    assert alone == pytest.approx(1.0)
    assert per_round["spinner"] == pytest.approx([2.2] * 3) and per_round["calm"] == pytest.approx([0.5] * 3), "a cost per round"
    own, after, cost = pairs["spinner"]
    assert (own, after, cost) == pytest.approx((0.2, 3.0, 2.2))
    assert pairs["calm"] == pytest.approx((0.5, 1.0, 0.5))
    assert min(pairs, key=lambda n: pairs[n][2]) == "calm", "ranked by cost, not by its own time"


class DippingNeighbour(FakeEngine):
    """N, which right after ``dipper`` takes ``dip_ms`` on its calls number ``dip_calls`` (counted after ``dipper``)."""

    def __init__(self, clock, ms, dipper, dip_ms, dip_calls):
        super().__init__(clock, "N", ms)
        self.dipper, self.dip_ms, self.dip_calls, self.seen = dipper, dip_ms, dip_calls, 0

    def __call__(self, x):
        if self.clock.last == self.dipper:
            self.seen += 1
            if self.seen in self.dip_calls:
                self.clock.now += self.dip_ms / 1000
                self.clock.last, self.clock.last_end = self.name, self.clock.now
                return x
        return super().__call__(x)


def test_a_round_whose_pairs_dip_below_the_neighbour_alone_keeps_the_ratio_sane(harness):
    h, clock = harness
    # "tiny" takes 0.2 ms; N takes 1 ms, but 0.5 ms after "tiny" through the 2nd round (its untimed call and 4 timed
    # calls after "tiny" are its 6th to 10th: the 1st to 5th were round 1's), so that round's pairs are 0.7 < 1 alone
    neighbour = DippingNeighbour(clock, 1.0, "tiny", 0.5, range(6, 11))
    runs = {"tiny": FakeEngine(clock, "tiny", 0.2), "calm": FakeEngine(clock, "calm", 0.5)}
    per_round = {}
    _, alone = h.time_shared(runs, neighbour, X, rounds=5, calls=4, gap_ms=10.0, per_round=per_round)
    assert alone == pytest.approx(1.0)
    assert sorted(per_round["tiny"]) == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2]), "floored at half its own 0.2 ms"
    median, low, high = h.ratio_interval(per_round["calm"], per_round["tiny"])
    assert median == pytest.approx(2.5) and 2.5 - 1e-9 <= low <= high <= 5.0 + 1e-9


def test_isolated_times_every_call_after_an_idle_gap_and_stream_back_to_back(harness):
    h, clock = harness
    # "hot" is fast only while its workers are awake; "steady" takes the same time either way
    runs = {"hot": FakeEngine(clock, "hot", 0.2, idle_ms=2.0), "steady": FakeEngine(clock, "steady", 0.8)}
    per_round = {}
    stream = h.time_blocks(runs, X, rounds=3, block_ms=5.0, gap_ms=10.0, per_round=per_round)
    assert stream == pytest.approx({"hot": 0.2, "steady": 0.8})
    assert per_round["hot"] == pytest.approx([0.2] * 3) and per_round["steady"] == pytest.approx([0.8] * 3), "a block mean per round"
    # an isolated turn (what each worker process runs): an untimed call, then each call a gap after the previous one
    turn = h._turn(runs["hot"], X, calls=4, gap_ms=10.0)
    assert turn["ms"] == pytest.approx([2.0] * 4) and turn["end"] - turn["start"] == pytest.approx(4 * 0.012 + 0.002)
    assert h._turn(runs["steady"], X, calls=4, gap_ms=10.0)["ms"] == pytest.approx([0.8] * 4)


def test_help_names_the_usage_patterns():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--usage {stream,isolated,shared}" in done.stdout and "--calls" in done.stdout


# -- isolated: one real process per configuration, on a tiny real ONNX file ----------------------------------------------


def _tiny_onnx(path: Path) -> Path:
    """A 3x3 conv and a mean over a 4x4 image, dynamic batch, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["y"], ["logits"], axes=[2, 3], keepdims=0)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_isolated_runs_each_configuration_in_its_own_process_one_turn_at_a_time(harness, tmp_path, monkeypatch):
    h, _ = harness
    monkeypatch.setattr(h, "_clock", __import__("time").perf_counter)  # real processes: the real clock
    monkeypatch.setattr(h, "_sleep", __import__("time").sleep)
    onnx = str(_tiny_onnx(tmp_path / "tiny.onnx"))
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    cell = {"size": 4, "batch": 2}
    specs = {"ort-default fp32": {**cell, "kind": "ort", "path": onnx, "spin": True},
             "ort-nospin fp32": {**cell, "kind": "ort", "path": onnx, "spin": False},
             "ort-default int8": {**cell, "kind": "ort", "path": str(tmp_path / "broken.onnx"), "spin": True}}
    per_round = {}
    with h.worker_processes(specs) as (workers, errors):
        ms = h.time_isolated(workers, rounds=3, calls=2, gap_ms=1.0, settle_ms=2.0, seed=1, per_round=per_round)
        spans = sorted(span for w in workers.values() for span in w.spans)
        pids = {w.proc.pid for w in workers.values()}
    assert os.getpid() not in pids and len(pids) == 2, "a process of its own per configuration"
    assert set(ms) == set(per_round) == {"ort-default fp32", "ort-nospin fp32"} and all(v > 0 for v in ms.values())
    assert all(len(r) == 3 for r in per_round.values()) and len(spans) == 6, "every configuration gets its turn per round"
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), "one process computes at a time"
    assert all(next_start - end >= 0.002 for (_, end), (next_start, _) in zip(spans, spans[1:])), "settle_ms between turns"
    assert all(_gone(pid) for pid in pids), "every worker has ended"
    assert list(errors) == ["ort-default int8"]
    message = errors["ort-default int8"]
    assert message.startswith("ort-default int8: ") and "\n" not in message and len(message) < 400


def test_a_worker_failing_mid_run_is_not_timed_and_the_others_keep_every_round(harness, tmp_path, monkeypatch):
    h, _ = harness
    monkeypatch.setattr(h, "_clock", __import__("time").perf_counter)
    monkeypatch.setattr(h, "_sleep", __import__("time").sleep)
    cell = {"size": 4, "batch": 2}
    calls = 2
    # the fake run is called 3 times to warm it, then 1 + calls times per turn: it raises on the first call of turn 2
    specs = {"ort-default fp32": {**cell, "kind": "ort", "path": str(_tiny_onnx(tmp_path / "tiny.onnx")), "spin": True},
             "fails": {**cell, "kind": "fake", "fail_on_call": 3 + (1 + calls) + 1},
             "steady": {**cell, "kind": "fake"}}
    args = SimpleNamespace(rounds=3, calls=calls, gap_ms=1.0, block_gap_ms=2.0)
    notes, per_round = {}, {}
    ms, unit = h._time_as("isolated", specs, args, None, 4, 2, notes, per_round, {})
    assert unit == "ms" and set(ms) == set(per_round) == {"ort-default fp32", "steady"}, "the failed one is dropped"
    assert all(len(r) == 3 for r in per_round.values()), "the others keep all their rounds"
    assert notes["fails"].startswith("NOT TIMED: fails: RuntimeError: fake failure on call 7")
    assert "\n" not in notes["fails"] and notes["steady"] == "fake"


def test_summary_table_keeps_a_column_for_a_skipped_cell():
    spec = importlib.util.spec_from_file_location("bench_harness", SCRIPT)
    h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h)
    slow = (1.2, 1.1, 1.3)
    summary = [(32, 1, None, None), (32, 8, slow, "ort-nospin fp32"), (48, 1, None, "mmdeploy ov fp32")]
    lines = h.summary_table([32, 48], [1, 8], summary)
    assert lines == ["| size | batch 1 | batch 8 |", "|---:|---:|---:|",
                     "| 32 | - | 1.20 [1.10-1.30] (ort-nospin fp32) |",
                     "| 48 | 1.00 | - |"]


def test_workers_end_when_the_parent_stops_mid_cell(harness, tmp_path):
    h, _ = harness
    spec = {"size": 4, "batch": 1, "kind": "ort", "path": str(_tiny_onnx(tmp_path / "tiny.onnx")), "spin": True}
    with pytest.raises(KeyboardInterrupt):
        with h.worker_processes({"ort-default fp32": spec}) as (workers, _):
            pid = workers["ort-default fp32"].proc.pid
            raise KeyboardInterrupt
    assert _gone(pid)


# -- the ratio's interval -----------------------------------------------------------------------------------------------


def test_ratio_interval_is_reproducible_and_counts_failures_apart_from_noise(harness):
    h, _ = harness
    rng = np.random.default_rng(3)
    fastest = list(1.0 + 0.05 * rng.random(15))
    noisy = [f * r for f, r in zip(fastest, 1.06 + 0.2 * (rng.random(15) - 0.5))]
    assert h.ratio_interval(noisy, fastest, seed=7) == h.ratio_interval(noisy, fastest, seed=7)
    assert h.ratio_text(h.ratio_interval(fastest, fastest)) == "1.00 [1.00-1.00]"
    assert h.ratio_text(None) == "1.00", "mmdeploy's best is the fastest: no interval"
    slow = h.ratio_interval([f * 1.2 for f in fastest], fastest)
    assert slow == pytest.approx((1.2, 1.2, 1.2))
    within = h.ratio_interval(noisy, fastest, seed=7)
    assert within[0] > 1.05 and within[1] <= 1.05 < within[2]
    lines = h.count_line([slow, within, None, h.ratio_interval(fastest, fastest)]).splitlines()
    assert lines == ["cells whose interval lies above 1.05: 1",
                     "cells whose median is above 1.05 but whose interval reaches 1.05 or below: 1"]
