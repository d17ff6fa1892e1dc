"""Trustworthy latency: the noise detector, thread policies, ORT tuning, report marks and the gate's latency skip."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from test_report import _points, _report

from mmdeploy.engines.base import Engine
from mmdeploy.latency.bench import BenchTarget, measure_with_interference
from mmdeploy.latency.noise import MAX_OTHERS_CPU, CpuSample, interference, sample
from mmdeploy.latency.threads import ThreadPolicy, usable_cores
from mmdeploy.latency.trust import UNRELIABLE_MARK
from mmdeploy.latency.tune import choose, machine_fingerprint, stored_policy
from mmdeploy.report import compare_reports, format_gate, render_table

BURN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"


@pytest.fixture
def burners():
    """A CPU-burning process on every usable core (killed after the test; each also stops itself after 30 s)."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(usable_cores())]
    time.sleep(0.3)  # let them start spinning
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ---------------------------------------------------------------------------- the detector


def test_detector_does_not_count_this_process_and_flags_others():
    # Synthetic /proc/stat deltas: 1 s on 2 cores at 100 ticks/s = 200 ticks. This process used 0.9 s of CPU.
    quiet = interference(CpuSample(0.0, 0.0, 1000, 10000, 0.1), CpuSample(1.0, 0.9, 1000 + 92, 10200, 0.9), [1.05, 1.2])
    assert quiet.others_cpu == pytest.approx(0.01, abs=0.01) and not quiet.busy and quiet.reasons == []
    burner = interference(CpuSample(0.0, 0.0, 1000, 10000, 2.0), CpuSample(1.0, 0.9, 1000 + 200, 10200, 3.1), [1.05, 1.2])
    assert burner.others_cpu == pytest.approx(0.55, abs=0.01) and burner.busy
    assert "other processes used 55% of the" in burner.summary()
    spread = interference(CpuSample(0.0, 0.0, 1000, 10000, 0.1), CpuSample(1.0, 0.9, 1000 + 92, 10200, 0.1), [1.1, 2.5])
    assert spread.busy and "1 of 2 points had p90/p50 above" in spread.reasons[0]


def test_detector_flags_a_cpu_burning_process_beside_it(burners):
    before = sample()
    _busy_wait(0.6)  # this process's own work is not interference
    seen = interference(before, sample(), [1.0])
    assert seen.others_cpu is not None and seen.others_cpu > MAX_OTHERS_CPU and seen.busy


class _Spin(Engine):
    """A deterministic CPU workload standing in for a model: spins for a fixed time per image."""

    name = "spin"
    policy = ThreadPolicy(1, False, "default")

    def __init__(self, size, per_image_s: float = 0.0002):
        super().__init__(size)
        self.per_image_s = per_image_s

    def _infer(self, x):
        _busy_wait(self.per_image_s * x.shape[0])
        return torch.zeros(x.shape[0], 10)


def test_bench_marks_points_unreliable_and_retimes_when_a_burner_runs_beside_it(burners):
    # /proc/stat counts in 10 ms ticks: the pass must last many ticks to see the burners (20 calls x 5 ms = 0.1 s).
    targets = [BenchTarget(s, "spin", "fp32", lambda s=s: _Spin(s, per_image_s=0.005)) for s in (16, 24)]
    results, seen = measure_with_interference(targets, [1], warmup=1, iters=10, noise_budget_s=3.0)  # > one pass even when loaded
    assert seen.busy and all(not r.reliable for r in results)
    assert all(r.noise["passes"] >= 2 for r in results), "a busy pass is re-timed while the budget lasts"
    assert all(r.policy == {"threads": 1, "spinning": False, "source": "default", "streams": 1} for r in results)


def test_bench_keeps_points_reliable_when_the_detector_sees_a_quiet_machine(monkeypatch):
    # The machine this suite runs on may be shared, so "quiet" is synthetic: samples that show no other process.
    clock = iter(range(1000))
    monkeypatch.setattr("mmdeploy.latency.bench.sample", lambda: CpuSample(float(next(clock)), 0.0, 0, 100 * next(clock), 0.0))
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_SPREAD", float("inf"))  # spread is the real timer's, which a shared machine widens
    results, seen = measure_with_interference([BenchTarget(16, "spin", "fp32", lambda: _Spin(16))], [1, 2], warmup=1, iters=5,
                                              noise_budget_s=10)
    assert not seen.busy and all(r.reliable and r.noise["passes"] == 1 for r in results)


class _Counting(_Spin):
    calls = 0

    def _infer(self, x):
        type(self).calls += 1
        return super()._infer(x)


def test_short_calls_are_timed_in_back_to_back_blocks_and_long_ones_singly():
    from mmdeploy.latency.bench import BLOCK_MS, MAX_CALLS_PER_SAMPLE, calls_per_sample

    assert calls_per_sample(0.1) == 20 and calls_per_sample(BLOCK_MS) == 1 and calls_per_sample(30.0) == 1
    assert calls_per_sample(1e-6) == MAX_CALLS_PER_SAMPLE and calls_per_sample(0.0) == 1
    _Counting.calls = 0
    fast = [BenchTarget(16, "spin", "fp32", lambda: _Counting(16, per_image_s=0.0002))]
    (r,), _ = measure_with_interference(fast, [1], warmup=3, iters=4)
    k = r.noise["calls_per_sample"]
    assert 4 <= k <= 12, k  # about 2 ms / 0.2 ms (the busy-wait never runs shorter than asked)
    assert _Counting.calls == 3 + 4 * (k + 1), "warm-up, then per sample one untimed wake-up call and k timed calls"
    assert 0.2 <= r.p50_ms < 1.5 and r.iters == 4  # per call, not per block of k calls
    slow = [BenchTarget(16, "spin", "fp32", lambda: _Spin(16, per_image_s=0.003))]
    (r,), _ = measure_with_interference(slow, [1], warmup=1, iters=3)
    assert r.noise["calls_per_sample"] == 1 and r.p50_ms >= 3.0


# ---------------------------------------------------------------------------- report and gate


def _unreliable(points, labels):
    for p in points:
        if p.key.label in labels:
            p.extra.update(unreliable=True, noise={"spread": 3.2})
    return points


def test_gate_skips_latency_in_one_line_on_unreliable_points_and_still_gates_accuracy():
    baseline = _report()
    slow = _report(_unreliable(_points(**{"160/ort/fp16": (75.7, 30.0)}), {"160/ort/fp16", "224/torch/fp32"}))
    slow.environment["interference_summary"] = "other processes used 74% of the 2 cores, p90/p50 up to 3.2x"
    result = compare_reports(slow, baseline, max_acc_drop=0.5, max_latency_regress=0.15)
    assert result.passed and not result.failures, "a 10x relative latency measured on a busy machine does not fail the gate"
    skip = [line for line in format_gate(result).splitlines() if line.startswith("skip")]
    assert skip == ["skip  latency comparison skipped: the machine was busy while this run was benchmarked "
                    "(other processes used 74% of the 2 cores, p90/p50 up to 3.2x; 2 of 5 points unreliable, the reference among them); "
                    "accuracy still gated"]
    dropped = _report(_unreliable(_points(**{"160/ort/fp16": (70.0, 30.0)}), {"160/ort/fp16"}))
    failed = compare_reports(dropped, baseline, max_acc_drop=0.5, max_latency_regress=0.15)
    assert not failed.passed and [f.kind for f in failed.failures] == ["accuracy-drop"]
    # The same latency on a quiet machine is a regression.
    assert not compare_reports(_report(_points(**{"160/ort/fp16": (75.7, 30.0)})), baseline, 0.5, 0.15).passed


def test_report_marks_unreliable_points_and_warns_on_the_headline():
    from rich.console import Console

    report = _report(_unreliable(_points(), {"224/torch/fp32"}))
    console = Console(record=True, width=200, color_system=None)
    console.print(render_table(report))
    text = console.export_text()
    assert f"10.000 {UNRELIABLE_MARK}" in text and f"6.000 {UNRELIABLE_MARK}" not in text
    assert "Speed-up at iso-accuracy: UNRELIABLE (the reference was timed on a busy machine" in " ".join(text.split())
    clean = Console(record=True, width=200, color_system=None)
    clean.print(render_table(_report()))
    assert "UNRELIABLE" not in clean.export_text()


# ---------------------------------------------------------------------------- policies and tuning


def test_choose_prefers_the_simplest_setting_within_two_percent():
    one, one_spin, two = ThreadPolicy(1, False), ThreadPolicy(1, True), ThreadPolicy(2, False)
    assert choose({one: 1.01, one_spin: 1.0, two: 1.5}) == one
    assert choose({one: 1.08, one_spin: 1.0, two: 1.5}) == one, "spinning must win by more than SPIN_PENALTY"
    assert choose({one: 1.20, one_spin: 1.0, two: 1.5}) == one_spin
    assert choose({one: 2.0, one_spin: 1.9, two: 1.0}) == two


def test_stored_policy_nearest_batch_and_not_from_another_machine():
    table = {"16": {"1": {"threads": 1, "spinning": True}, "32": {"threads": 2, "spinning": False}}}
    settings = {"machine": machine_fingerprint(), "ort/fp32": table}  # a bundle's engine_settings
    assert stored_policy(settings, "ort", "fp32", 16, 1) == ThreadPolicy(1, True, "tuned")
    assert stored_policy(settings, "ort", "fp32", 16, 64) == ThreadPolicy(2, False, "tuned")
    assert stored_policy(settings, "ort", "fp32", 16, None).threads == 1  # no batch: latency's batch 1
    elsewhere = {"machine": {**machine_fingerprint(), "cpu": "another CPU"}, "ort/fp32": table}
    assert stored_policy(elsewhere, "ort", "fp32", 16, 1).source == "default"
    broken = {"machine": machine_fingerprint(), "ort/fp32": {"16": {"1": {"threads": "all"}}}}
    assert stored_policy(broken, "ort", "fp32", 16, 1).source == "default"
    assert stored_policy({}, "ort", "fp32", 16, 1).source == "default"  # never tuned


def test_torch_reference_runs_one_thread_and_restores_the_users_count():
    from mmdeploy.engines.torch_engine import TorchEngine

    before = torch.get_num_threads()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with TorchEngine(model, 8, device="cpu") as run:
        assert run.policy == ThreadPolicy(1, False, "default") and torch.get_num_threads() == 1
        run(torch.zeros(1, 3, 8, 8))
    assert torch.get_num_threads() == before


def test_gate_skips_latency_when_the_baseline_ran_on_another_cpu_or_timing_protocol():
    import dataclasses

    from mmdeploy.latency.bench import BENCH_PROTOCOL

    points = _points()
    slower = [dataclasses.replace(p, latency_ms=p.latency_ms * (1 if p.engine == "torch" else 3)) for p in points]
    env = {"cpu": "Some CPU", "cpu_count": 2, "bench_protocol": BENCH_PROTOCOL}
    base, new = _report(points), _report(slower)
    base.environment, new.environment = dict(env), dict(env)
    assert not compare_reports(new, base, 0.5, 0.15).passed, "same CPU and protocol: a 3x slower engine fails"
    for field, other in (("cpu", "Another CPU"), ("bench_protocol", BENCH_PROTOCOL - 1), ("cpu_count", 16)):
        new.environment = {**env, field: other}
        result = compare_reports(new, base, 0.5, 0.15)
        assert result.passed and result.latency_skipped.startswith("latency comparison skipped: the baseline was benchmarked with")
        assert "accuracy still gated" in format_gate(result).splitlines()[-2]


def test_ort_sessions_spin_only_inside_a_run():
    from mmdeploy.engines.onnxruntime import session_options

    spinning = session_options(2, spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1", "workers must not spin between runs"
    assert session_options(2, spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
