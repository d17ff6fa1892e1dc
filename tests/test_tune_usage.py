"""Tuning for how the engine is used: the defaults a user would pick are candidates, "default" is stored and loaded as
a session with no options, the first pass's front runners and the best preset are re-timed in the usage's pattern and
the choice comes from that second round (a spinning setting counted slower when shared). Mechanisms only: no timing
asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mmdeploy.bundle import Bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.errors import MMDeployError
from mmdeploy.latency.confirm import SPIN_PENALTY, USAGES, choose_confirmed, confirm, shortlist
from mmdeploy.latency.threads import ThreadPolicy
from mmdeploy.latency.tune import ort_candidates, ov_candidates, store_settings, stored_policy

ROOT = Path(__file__).resolve().parents[1]
HAVE_OV = importlib.util.find_spec("openvino") is not None

ORT_DEFAULT = ThreadPolicy(2, True, "tuned", preset="default")
QUIET = ThreadPolicy(1, False, "tuned")
SPIN = ThreadPolicy(2, True, "tuned")


def test_the_defaults_a_user_would_pick_are_always_candidates():
    ort = ort_candidates(cores=2, usage="stream")
    assert ort[0].preset == "default" and ort[0].spinning, "ONNX Runtime's default session spins, and is recorded so"
    assert ort[0].label == "default" and sum(p.preset == "default" for p in ort) == 1 and len(ort) == 1 + 4
    one = ov_candidates(1, cores=2)
    assert [p.preset for p in one] == ["default", "", ""], "batch 1: OpenVINO's defaults, no throughput split"
    big = ov_candidates(32, cores=2)
    assert {"default", "throughput"} <= {p.preset for p in big} and ThreadPolicy(2, False, "tuned", 2) in big
    assert not any(p.precision_hint for p in big), "fp32 stays pinned to f32 whatever the setting"
    int8 = ov_candidates(32, cores=2, precision="int8")
    assert {(p.preset, p.precision_hint) for p in int8 if p.preset} == {("default", "cpu"), ("throughput", "cpu")}
    explicit = [p for p in int8 if not p.preset]
    assert {p.precision_hint for p in explicit} == {"", "cpu"} and len(explicit) == 2 * 3, "each setting with f32 and the CPU's default"


def test_the_default_session_stops_spinning_unless_tuned_for_a_process_of_its_own():
    by_usage = {usage: ort_candidates(cores=2, usage=usage)[0] for usage in USAGES}
    assert set(USAGES) == {"shared", "stream", "isolated"} and USAGES[0] == "shared"
    assert by_usage["stream"].spinning and by_usage["stream"].preset == "default", "stream: ONNX Runtime's default as it comes"
    assert by_usage["isolated"].spinning, "isolated: alone in its process, a request within ~35 ms finds the workers awake"
    assert not by_usage["shared"].spinning, "beside other engines: no spin after a run"
    assert ort_candidates(cores=2) == ort_candidates(cores=2, usage="shared"), "shared is the default"


def test_policy_round_trips_its_preset_and_hint_and_old_records_still_load():
    p = ThreadPolicy(2, False, "tuned", 2, "throughput", "cpu")
    assert ThreadPolicy.from_dict(p.to_dict()) == p and p.label == "throughput cpu precision"
    assert "preset" not in QUIET.to_dict(), "a policy without a preset keeps its old recorded form"
    assert ThreadPolicy.from_dict({"threads": 2, "spinning": False}).preset == ""
    with pytest.raises(ValueError):
        ThreadPolicy.from_dict({"threads": 2, "spinning": False, "preset": "fastest"})


def test_usage_decides_what_spinning_must_prove():
    collapsed = {ORT_DEFAULT: 4.1, QUIET: 0.35}  # second round, shared: each call plus the other engine's next call
    assert choose_confirmed(collapsed, "shared") == QUIET, "a spinner that collapses beside another engine loses"
    held = {ORT_DEFAULT: 0.31, QUIET: 0.35}
    assert choose_confirmed(held, "shared") == ORT_DEFAULT, "a spinner that still wins clearly when shared keeps its place"
    barely = {ORT_DEFAULT: 0.34, QUIET: 0.35}
    assert 0.06 < SPIN_PENALTY and choose_confirmed(barely, "shared") == QUIET, "a 3% win in the shared pattern is not enough to spin"
    assert choose_confirmed(barely, "stream") == ORT_DEFAULT, "stream: the engine is alone, the fastest wins"
    close = {ThreadPolicy(2, False, "tuned"): 0.300, ThreadPolicy(2, False, "tuned", 2, "default"): 0.305}
    assert choose_confirmed(close, "stream").preset == "default", "a preset within SIMPLER_WITHIN of the fastest is preferred"
    with pytest.raises(MMDeployError, match="unknown usage"):
        choose_confirmed(held, "batchy")


def test_the_second_round_re_times_the_front_runners_the_best_preset_and_a_quiet_rival():
    two, two_streams = ThreadPolicy(2, False, "tuned"), ThreadPolicy(2, False, "tuned", 2)
    ov_default = ThreadPolicy(2, False, "tuned", 2, "default")
    first = {two: 1.00, two_streams: 1.02, QUIET: 1.40, ov_default: 1.30, SPIN: 3.0}
    assert shortlist(first) == [two, two_streams, ov_default], "within 25% of the fastest, then the best preset however far"
    spinners = {SPIN: 0.20, ThreadPolicy(1, True, "tuned"): 0.21, ORT_DEFAULT: 0.22, QUIET: 0.40}
    assert shortlist(spinners) == [SPIN, ThreadPolicy(1, True, "tuned"), ORT_DEFAULT, QUIET], "every front runner spins: the best quiet one too"
    many = {ThreadPolicy(t, False, "tuned", s): 1.0 + 0.01 * (t + s) for t in (1, 2, 3) for s in (1, 2, 3)}
    assert len(shortlist(many)) == 4 and len(shortlist({QUIET: 1.0})) == 1, "at most 4 front runners; one setting alone is kept"


class _Logged:
    """A fake engine that logs its calls in a shared list."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __enter__(self):
        self.log.append(f"open {self.name}")
        return self

    def __exit__(self, *exc):
        self.log.append(f"close {self.name}")
        return False

    def __call__(self, x):
        self.log.append(self.name)
        return x


def test_shared_pattern_calls_the_other_engine_around_every_timed_call():
    log: list[str] = []
    out = confirm({ORT_DEFAULT: lambda: _Logged("spin", log), QUIET: lambda: _Logged("quiet", log)}, "shared", 8, 1,
                  companion=lambda: _Logged("ov", log), rounds=3)
    assert set(out) == {ORT_DEFAULT, QUIET} and all(ms >= 0 for ms in out.values())
    calls = [c for c in log if not c.startswith(("open", "close"))]
    pairs = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert len(pairs) == 2 * (3 + 2) and all(pair[1] == "ov" for pair in pairs), "each setting's call between two of the other engine's"
    rounds = [sorted(pair[0] for pair in pairs[i:i + 2]) for i in range(0, len(pairs), 2)]
    assert rounds == [["quiet", "spin"]] * 5, "every setting once per round"
    assert len({tuple(pair[0] for pair in pairs[i:i + 2]) for i in range(0, len(pairs), 2)}) == 2, "the order is shuffled per round"
    assert log[0] == "open ov" and log[-1] == "close ov" and sum(c.startswith("close") for c in log) == 3, "every engine closed"
    with pytest.raises(ValueError, match="companion"):
        confirm({QUIET: lambda: _Logged("quiet", log)}, "shared", 8, 1)


def test_shared_charges_a_setting_what_it_costs_the_next_engine_beyond_the_noise():
    from mmdeploy.latency.confirm import CHARGE_ABOVE, charged

    two = ThreadPolicy(2, False, "tuned")
    own = {SPIN: 0.10, QUIET: 0.14, two: 0.13}
    after = {SPIN: 0.30, QUIET: 0.20, two: 0.20 * (1 + CHARGE_ABOVE / 2)}  # the companion takes 0.20 ms undisturbed
    cost = charged(own, after)
    assert cost[SPIN] == pytest.approx(0.20) and cost[QUIET] == 0.14, "the spinner pays the 0.10 ms it leaves the next engine"
    assert cost[two] == 0.13, "a slowdown inside the noise of the next engine's time is not charged"
    assert choose_confirmed(cost, "shared") == two


@pytest.mark.parametrize("usage", ["stream", "isolated", "shared"])
def test_a_slow_model_stops_the_round_at_the_time_budget(monkeypatch, usage):
    import mmdeploy.latency.confirm as confirm_module

    log: list[str] = []
    started_rounds = []
    real_spent = confirm_module._spent

    def spent(i, started):
        stop = real_spent(i, started)
        started_rounds.extend([] if stop else [i])
        return stop

    monkeypatch.setattr(confirm_module, "POINT_BUDGET_S", 0.0)  # every call "too slow": only the minimum is timed
    monkeypatch.setattr(confirm_module, "_spent", spent)
    monkeypatch.setattr(confirm_module.time, "sleep", lambda s: None)
    out = confirm({QUIET: lambda: _Logged("quiet", log)}, usage, 8, 1, companion=lambda: _Logged("ov", log), rounds=50)
    assert set(out) == {QUIET} and out[QUIET] >= 0
    first = 1 if usage == "isolated" else 0  # isolated warms up for one round (its turns are long), asked as round 1
    assert started_rounds == list(range(first, 2 + confirm_module.MIN_ROUNDS)), "warm-up and MIN_ROUNDS timed, not the 50 asked"
    assert all(len(r) == confirm_module.MIN_ROUNDS for r in out.rounds.values())


def test_stream_pattern_times_blocks_each_after_an_idle_gap_and_a_wake_up_call(monkeypatch):
    import mmdeploy.latency.confirm as confirm_module

    log: list[str] = []
    monkeypatch.setattr(confirm_module.time, "sleep", lambda s: log.append(f"gap {s * 1000:.0f}"))
    out = confirm({QUIET: lambda: _Logged("quiet", log), SPIN: lambda: _Logged("spin", log)}, "stream", 8, 1, rounds=3)
    assert set(out) == {QUIET, SPIN}
    body = [c for c in log if not c.startswith(("open", "close"))][4:]  # after two calls each that size the blocks
    blocks, current = [], None
    for c in body:
        if c.startswith("gap"):
            current = []
            blocks.append(current)
        else:
            current.append(c)
    assert len(blocks) == 2 * (3 + 2) and all(len(b) >= 2 and len(set(b)) == 1 for b in blocks), \
        "each block: one setting only, untimed wake-up calls then the timed calls, after an idle gap"
    assert sorted(b[0] for b in blocks) == ["quiet"] * 5 + ["spin"] * 5
    gaps = [c for c in body if c.startswith("gap")]
    after_spin = [gaps[i + 1] for i, b in enumerate(blocks[:-1]) if b[0] == "spin"]
    assert after_spin and set(after_spin) == {f"gap {confirm_module.SPIN_SETTLE_MS:.0f}"}, "a spinning setting's workers settle first"
    assert gaps[0] == f"gap {confirm_module.GAP_MS:.0f}"


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    from conftest import randomize_bn

    from mmdeploy.calib.workflow import calibrate_to_bundle
    from mmdeploy.export.workflow import export_bundle
    from mmdeploy.models import create_model

    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("tune_usage")
    torch.manual_seed(0)
    ckpt = tmp / "r8.pth"
    torch.save({"model": "resnet", "config": "{'depth': 8}", "state_dict": randomize_bn(create_model("cifar_resnet8")).state_dict()}, ckpt)
    out = tmp / "bundle"
    calibrate_to_bundle(ckpt, [16], ROOT / "calib" / "train", out, batches=2, batch_size=16)
    export_bundle(out, "ort", ["fp32"], parity_count=8, dynamic=False)
    return out


def test_a_stored_default_loads_a_session_with_no_thread_or_spinning_option(ort_bundle):
    from mmdeploy.engines.onnxruntime import session_options

    store_settings(ort_bundle, {("ort", "fp32", 16, 1): ORT_DEFAULT, ("ort", "fp32", 16, 32): QUIET}, {"timings_p50_ms": {}}, "stream")
    bundle = Bundle.open(ort_bundle)
    assert bundle.engine_settings["ort/fp32"]["16"]["1"]["preset"] == "default" and bundle.engine_settings["usage"] == "stream"
    assert stored_policy(bundle.engine_settings, "ort", "fp32", 16, 1) == ORT_DEFAULT
    engine = load_engine(bundle, "ort", 16, "fp32", tuned_batch=1)
    assert engine.policy.preset == "default" and engine.describe()["preset"] == "default"
    plain = session_options(2, {"batch": 1}, True, defaults=True)
    assert plain.intra_op_num_threads == 0 and plain.inter_op_num_threads == 0, "ONNX Runtime chooses its own threads"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # no spinning entry: ONNX Runtime's default applies
        plain.get_session_config_entry("session.intra_op.allow_spinning")
    tuned = session_options(1, None, False)
    assert tuned.intra_op_num_threads == 1 and tuned.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with engine:
        assert engine(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    assert load_engine(bundle, "ort", 16, "fp32", tuned_batch=32).policy == QUIET


def test_a_default_session_for_shared_use_stops_spinning_when_its_run_returns(ort_bundle):
    from mmdeploy.engines.onnxruntime import DEFAULT_SPIN_STOP, session_options

    stopped = session_options(2, None, False, defaults=True)
    assert DEFAULT_SPIN_STOP == ("session.force_spinning_stop", "1"), "the mechanism measured in ort_spin_modes_quiet.txt"
    assert stopped.get_session_config_entry("session.force_spinning_stop") == "1" and stopped.intra_op_num_threads == 0
    raw = session_options(2, None, True, defaults=True)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        raw.get_session_config_entry("session.force_spinning_stop")
    # a bundle tuned for shared use before this change stored the default as spinning: it loads with spinning stopped
    store_settings(ort_bundle, {("ort", "fp32", 16, 1): ORT_DEFAULT}, {"timings_p50_ms": {}}, "shared")
    bundle = Bundle.open(ort_bundle)
    assert bundle.engine_settings["ort/fp32"]["16"]["1"]["spinning"] is True
    engine = load_engine(bundle, "ort", 16, "fp32", tuned_batch=1)
    assert engine.policy.preset == "default" and not engine.policy.spinning
    with engine:
        assert engine.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    assert stored_policy({**bundle.engine_settings, "usage": "stream"}, "ort", "fp32", 16, 1).spinning, "stream keeps it"
    assert stored_policy({**bundle.engine_settings, "usage": "isolated"}, "ort", "fp32", 16, 1).spinning, "so does isolated"
    assert stored_policy({**bundle.engine_settings, "ov/fp32": bundle.engine_settings["ort/fp32"]}, "ov", "fp32", 16, 1).spinning, \
        "only ONNX Runtime's default session is changed"


def test_isolated_pattern_gives_each_setting_turns_of_gapped_calls_after_the_previous_one_settles(monkeypatch):
    import mmdeploy.latency.confirm as confirm_module

    log: list[str] = []
    monkeypatch.setattr(confirm_module.time, "sleep", lambda s: log.append(f"gap {s * 1000:.0f}"))
    out = confirm({QUIET: lambda: _Logged("quiet", log), SPIN: lambda: _Logged("spin", log)}, "isolated", 8, 1, rounds=3)
    assert set(out) == {QUIET, SPIN} and all(len(r) == 3 for r in out.rounds.values()), "a figure per setting and timed round"
    calls = [c for c in log if not c.startswith(("open", "close"))]
    settle, gap, k = f"gap {confirm_module.SPIN_SETTLE_MS:.0f}", f"gap {confirm_module.GAP_MS:.0f}", confirm_module.TURN_CALLS
    turns = [calls[i:i + 2 + 2 * k] for i in range(0, len(calls), 2 + 2 * k)]
    assert len(turns) == 2 * (3 + 1), "one warm-up round, then three, a turn per setting each"
    for turn in turns:
        name = turn[1]
        assert turn == [settle, name] + [gap, name] * k, "settle, one untimed call, then calls of the SAME setting each after a gap"
    assert sum(c.startswith("close") for c in log) == 2


def _rounds(**figures):
    """A second round's result with per-round figures: name -> list of ms."""
    import statistics

    from mmdeploy.latency.confirm import Confirmed
    by = {POLICIES[n]: f for n, f in figures.items()}
    return Confirmed({p: statistics.median(f) for p, f in by.items()}, by)


OV_DEFAULT = ThreadPolicy(2, False, "tuned", preset="default", precision_hint="cpu")
OV_THROUGHPUT = ThreadPolicy(2, False, "tuned", 2, "throughput", "cpu")
OV_1T = ThreadPolicy(1, False, "tuned")
POLICIES = {"default": OV_DEFAULT, "throughput": OV_THROUGHPUT, "one": OV_1T, "spin": SPIN}


def test_wins_needed_is_a_one_sided_sign_test():
    from mmdeploy.latency.confirm import wins_needed

    assert wins_needed(4) == 5, "four rounds can never show it at 5%"
    assert (wins_needed(5), wins_needed(12), wins_needed(15)) == (5, 10, 12)
    assert 36 <= wins_needed(60) <= 39 and wins_needed(1000) < 540


def test_the_defaults_stay_unless_another_setting_wins_the_paired_rounds_clearly():
    from mmdeploy.latency.confirm import paired_wins

    lucky = _rounds(default=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], one=[0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.93])
    assert lucky[OV_1T] < lucky[OV_DEFAULT] * 0.95, "faster by the median..."
    assert choose_confirmed(lucky, "stream") == OV_DEFAULT, "...but it won 4 rounds of 7: the defaults stay"
    assert paired_wins(lucky, "stream") == {OV_1T: (4, 7)}
    clear = _rounds(default=[1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0], one=[0.9, 1.0, 0.85, 0.9, 1.0, 0.9, 0.92])
    assert choose_confirmed(clear, "stream") == OV_1T, "won all 7: it replaces the defaults"
    small = _rounds(default=[1.0] * 7, one=[0.99] * 7)
    assert choose_confirmed(small, "stream") == OV_DEFAULT, "every round, but by 1%: inside SIMPLER_WITHIN, the defaults stay"
    batch = _rounds(default=[2.0] * 6, throughput=[1.6] * 6, one=[1.62] * 6)
    assert choose_confirmed(batch, "stream") == OV_THROUGHPUT, "among those that beat the defaults, the simplest within 2%"
    assert choose_confirmed(dict(lucky), "stream") == OV_1T, "without per-round figures: the medians decide, as before"


def test_a_spinning_setting_must_win_its_paired_rounds_with_the_penalty_when_shared():
    spin = _rounds(default=[1.0] * 8, spin=[0.93] * 8)
    assert choose_confirmed(spin, "stream") == SPIN
    assert choose_confirmed(spin, "shared") == OV_DEFAULT, "shared: 7% faster is not faster once spinning counts 10% slower"


class _Clocked:
    """A fake engine whose call lasts ``ms`` on a virtual clock (``clock``: a one-item list of seconds)."""

    def __init__(self, ms: float, clock: list):
        self.ms, self.clock = ms, clock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, x):
        self.clock[0] += self.ms / 1000
        return x


def test_shared_rounds_carry_the_charged_cost_so_the_spin_penalty_scales_the_same_thing(monkeypatch):
    import mmdeploy.latency.confirm as confirm_module

    clock = [0.0]
    monkeypatch.setattr(confirm_module.time, "perf_counter", lambda: clock[0])
    default = ThreadPolicy(2, False, "tuned", preset="default")
    out = confirm({SPIN: lambda: _Clocked(0.50, clock), default: lambda: _Clocked(0.60, clock)}, "shared", 8, 1,
                  companion=lambda: _Clocked(3.0, clock), rounds=10)
    assert out[SPIN] == pytest.approx(0.50) and out[default] == pytest.approx(0.60), "the companion's 3 ms after both: nothing charged"
    assert out.rounds[SPIN] == pytest.approx([0.50] * 10), "per round: own + the companion's next call - its least median"
    assert choose_confirmed(out, "shared") == SPIN, "0.50 x 1.1 = 0.55 < 0.60: the spinner wins every round and the median"


def test_isolated_turns_of_a_large_model_take_one_call_each(monkeypatch):
    import mmdeploy.latency.confirm as confirm_module

    clock, calls = [0.0], []
    monkeypatch.setattr(confirm_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(confirm_module.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    class Slow(_Clocked):
        def __call__(self, x):
            calls.append(self.ms)
            return super().__call__(x)

    big = confirm_module.LONG_CALL_MS * 2
    out = confirm({QUIET: lambda: Slow(big, clock), SPIN: lambda: Slow(1.0, clock)}, "isolated", 8, 1, rounds=3)
    assert out.rounds[QUIET] == pytest.approx([big] * 3) and out.rounds[SPIN] == pytest.approx([1.0] * 3)
    k = confirm_module.TURN_CALLS
    assert calls.count(big) == (1 + k) + 3, "the warm-up turn finds the call long: then one timed call per turn"
    assert calls.count(1.0) == (1 + k) * 4, "a short call keeps its untimed call and TURN_CALLS timed ones"


def test_tune_stores_the_defaults_when_a_lucky_setting_loses_the_paired_rounds(ort_bundle, monkeypatch):
    import mmdeploy.latency.tune as tune
    from mmdeploy.latency.confirm import Confirmed

    def fake_confirm(make, usage, size, batch, companion=None, rounds=None):
        default = next(p for p in make if p.preset == "default")
        lucky = next(p for p in make if not p.preset)
        by = {default: [1.0] * 8, lucky: [0.8, 1.2] * 4}  # faster by the median below, but wins half the rounds
        return Confirmed({default: 1.0, lucky: 0.9}, by)

    monkeypatch.setattr(tune, "confirm", fake_confirm)
    monkeypatch.setattr(tune, "shortlist", lambda timed: [QUIET, next(p for p in timed if p.preset == "default")])
    result = tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], warmup=0, iters=1, noise_budget_s=0, engines=("ort",), usage="stream")
    assert result.chosen["ort/fp32/16/b1"].preset == "default"
    evidence = Bundle.open(ort_bundle).engine_settings["evidence"]
    assert evidence["confirmed_reference"] == {"ort/fp32/16/b1": "default"}
    assert evidence["confirmed_wins"] == {"ort/fp32/16/b1": {"1t": [4, 8]}}


def test_shortlist_always_carries_the_library_defaults():
    throughput = ThreadPolicy(2, False, "tuned", 2, "throughput", "cpu")
    default = ThreadPolicy(2, False, "tuned", preset="default", precision_hint="cpu")
    timed = {OV_1T: 1.0, throughput: 1.05, ThreadPolicy(2, False, "tuned"): 1.1, default: 2.0}
    short = shortlist(timed)
    assert default in short and throughput in short, "the defaults join even when another preset made the cut"
    crowded = {ThreadPolicy(t, False, "tuned", st): 1.0 + 0.01 * t + 0.001 * st for t in (1, 2) for st in (1, 2)}
    short = shortlist({**crowded, default: 1.001, throughput: 1.2})
    assert throughput in short and default in short and len(short) == 4 + 1, "the throughput hint joins a full shortlist too"


def test_every_pattern_returns_its_per_round_figures(monkeypatch):
    import mmdeploy.latency.confirm as confirm_module

    monkeypatch.setattr(confirm_module.time, "sleep", lambda s: None)
    for usage in USAGES:
        log: list[str] = []
        out = confirm({QUIET: lambda: _Logged("quiet", log), SPIN: lambda: _Logged("spin", log)}, usage, 8, 1,
                      companion=lambda: _Logged("ov", log), rounds=5)
        assert {p: len(r) for p, r in out.rounds.items()} == {QUIET: 5, SPIN: 5}, usage
        assert all(ms >= 0 for r in out.rounds.values() for ms in r) or usage == "shared", usage


@pytest.mark.parametrize("usage", ["isolated", "stream"])
def test_tune_chooses_from_the_second_round_not_the_first_pass(ort_bundle, monkeypatch, usage):
    import mmdeploy.latency.tune as tune

    seen = []

    def fake_confirm(make, usage_, size, batch, companion=None, rounds=None):
        seen.append((usage_, size, batch, len(make), companion))
        slowest = max(make, key=lambda p: (p.threads, p.spinning, p.preset))
        return {p: (0.1 if p == slowest else 1.0) for p in make}  # the second round turns the order around

    monkeypatch.setattr(tune, "confirm", fake_confirm)
    monkeypatch.setattr(tune, "shortlist", lambda timed: sorted(timed, key=lambda p: (p.threads, p.spinning, p.preset))[:3])
    result = tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], warmup=0, iters=1, noise_budget_s=0, engines=("ort",), usage=usage)
    assert seen == [(usage, 16, 1, 3, None)] and result.usage == usage
    picked = result.chosen["ort/fp32/16/b1"]
    assert result.confirmed_ms["ort/fp32/16/b1"][picked.label] == 0.1, "the fastest of the second round wins, not of the first pass"
    settings = Bundle.open(ort_bundle).engine_settings
    assert settings["usage"] == usage and settings["evidence"]["confirmed_ms"] == result.confirmed_ms
    assert settings["evidence"]["confirm_pattern"] == usage and "default" in result.timings["ort/fp32/16/b1"]


def test_run_takes_the_usage_from_its_flag_or_the_config(tmp_path, cli):
    from mmdeploy.config import config_problems
    from mmdeploy.pipeline import ModelRun, _tune_and_bench

    assert config_problems({"bench": {"usage": "stream"}}) == []
    assert any("usage" in p for p in config_problems({"bench": {"usage": "batchy"}}))
    bad = cli("run", "--usage", "batchy", "--out", str(tmp_path / "runs"))
    assert bad.exit_code == 1 and "unknown usage 'batchy'" in bad.stdout + bad.stderr and not (tmp_path / "runs").exists()

    got = []

    class Tuned:
        busy = False

    def fake_tune(bundle_dir, precisions, **kw):
        got.append(kw["usage"])
        return Tuned()

    class FakeBundle:
        engine_settings: dict = {}

        def artifact_keys(self):
            return {}

        def latencies(self):
            return []

        def step_key(self, step):
            return None

    import mmdeploy.pipeline as pipeline

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(pipeline.Bundle, "open", staticmethod(lambda d: FakeBundle()))
    monkeypatch.setattr(pipeline, "_mark", lambda *a: None)
    monkeypatch.setattr("mmdeploy.latency.tune.tune_bundle", fake_tune)
    monkeypatch.setattr("mmdeploy.latency.bench.bench_bundle", lambda *a, **k: None)
    try:
        for b, want in (({"batches": [1], "usage": "isolated"}, "isolated"), ({"batches": [1]}, "shared")):
            _tune_and_bench(ModelRun("m", tmp_path), tmp_path, ["ort"], ["fp32"], b, set(), None, lambda m: None)
            assert got[-1] == want
    finally:
        monkeypatch.undo()


def test_tune_records_its_usage_and_the_shared_round(ort_bundle, monkeypatch):
    import mmdeploy.latency.tune as tune

    calls = []

    def fake_confirm(make, usage, size, batch, companion=None, rounds=None):
        calls.append((sorted(p.label for p in make), usage, size, batch, companion is not None))
        return {p: (5.0 if p.spinning else 1.0) for p in make}  # spinning collapses when shared

    monkeypatch.setattr(tune, "confirm", fake_confirm)
    monkeypatch.setattr(tune, "shortlist", lambda timed: [SPIN, QUIET])
    result = tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], warmup=0, iters=1, noise_budget_s=0, engines=("ort",))
    assert result.usage == "shared" and calls == [(["1t", "2t spin"], "shared", 16, 1, True)], "shared: with a companion engine"
    assert result.chosen["ort/fp32/16/b1"] == QUIET and result.confirmed_ms["ort/fp32/16/b1"] == {"2t spin": 5.0, "1t": 1.0}
    assert "default" in result.timings["ort/fp32/16/b1"], "the default session was timed with the rest"
    default = next(p for p in tune.ort_candidates(usage="shared") if p.preset)
    assert not default.spinning, "shared: the default session is timed spin-stopped"
    settings = Bundle.open(ort_bundle).engine_settings
    assert settings["usage"] == "shared" and settings["evidence"]["confirmed_ms"] == result.confirmed_ms
    with pytest.raises(MMDeployError, match="unknown usage"):
        tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], engines=("ort",), usage="batchy")


def test_settings_that_spin_are_timed_apart_from_the_rest(ort_bundle, monkeypatch):
    import mmdeploy.latency.bench as bench
    import mmdeploy.latency.tune as tune

    real, groups = bench.measure_with_interference, []

    def spy(targets, *args, **kwargs):
        groups.append(sorted(t.engine for t in targets))
        return real(targets, *args, **kwargs)

    monkeypatch.setattr(bench, "measure_with_interference", spy)
    monkeypatch.setattr(tune, "shortlist", lambda timed: [min(timed, key=timed.get)])
    result = tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], warmup=0, iters=1, noise_budget_s=0, engines=("ort",), usage="stream")
    assert groups == [["ort 1t", "ort 2t"], ["ort 1t spin", "ort 2t spin", "ort default"]], "stream: the default session spins too"
    assert set(result.timings["ort/fp32/16/b1"]) == {"1t", "2t", "1t spin", "2t spin", "default"}, "one table from both passes"


def test_the_real_second_round_runs_on_real_engines(ort_bundle):
    import mmdeploy.latency.tune as tune

    result = tune.tune_bundle(ort_bundle, ["fp32"], [16], [1], warmup=0, iters=2, noise_budget_s=0, engines=("ort",), usage="stream")
    confirmed = result.confirmed_ms["ort/fp32/16/b1"]
    assert len(confirmed) >= 2 and "default" in confirmed and all(ms > 0 for ms in confirmed.values())
    assert result.chosen["ort/fp32/16/b1"].label in confirmed, "the choice is one of the settings re-timed"


def test_bench_usage_flag_is_stored_and_a_typo_refused(ort_bundle, cli):
    result = cli("bench", ort_bundle, "--tune", "--engine", "ort", "--usage", "stream", "--size", "16", "--batch", "1",
                 "--iters", "1", "--warmup", "0", "--noise-budget", "0")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert Bundle.open(ort_bundle).engine_settings["usage"] == "stream" and "for usage stream" in " ".join(result.stdout.split())
    bad = cli("bench", ort_bundle, "--engine", "ort", "--usage", "batchy", "--iters", "1")
    assert bad.exit_code == 1 and "unknown usage 'batchy'" in bad.stdout + bad.stderr


@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_ov_presets_compile_with_no_hints_or_the_throughput_hint_alone(tmp_path):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    from mmdeploy.engines.openvino import OvEngine

    def config(precision, policy):
        return OvEngine(tmp_path / "m.onnx", 16, precision, policy=policy).compile_config(False)

    plain = config("int8", ThreadPolicy(2, False, "tuned", 2, "default", "cpu"))
    assert plain == {}, "OpenVINO's defaults: no hint, no threads, the CPU's own precision"
    assert config("fp32", ThreadPolicy(2, False, "tuned", 2, "default")) == {hints.inference_precision: ov.Type.f32}
    hinted = config("int8", ThreadPolicy(2, False, "tuned", 2, "throughput", "cpu"))
    assert hinted == {hints.performance_mode: hints.PerformanceMode.THROUGHPUT}, "the hint alone picks streams and threads"
    pinned = config("int8", ThreadPolicy(1, False, "tuned"))
    assert pinned[hints.inference_precision] == ov.Type.f32 and pinned[props.inference_num_threads] == 1
