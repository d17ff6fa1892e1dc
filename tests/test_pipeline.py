"""bench protocol, the report from a bundle, `mmdeploy run` (reuse, gate), and the CLI gate's exit code."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mmdeploy.bundle import Bundle
from mmdeploy.engines.base import Engine
from mmdeploy.latency.bench import BenchTarget, measure_latency, summarize
from mmdeploy.pipeline import run_pipeline
from mmdeploy.report import load_report

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(Engine):
    name = "fake"

    def __init__(self, size, log):
        super().__init__(size)
        self.log = log
        self.syncs = 0

    def _infer(self, x):
        self.log.append((self.size, x.shape[0]))
        end = time.perf_counter() + 0.0025  # longer than bench.BLOCK_MS: one call per sample, so rounds are easy to read
        while time.perf_counter() < end:
            pass
        return torch.zeros(x.shape[0], 10)

    def synchronize(self):
        self.syncs += 1


def test_bench_is_round_robin_with_warmup_and_sync():
    log: list = []
    engines = {}

    def make(s):
        engines[s] = _Recorder(s, log)
        return engines[s]

    targets = [BenchTarget(s, "fake", "fp32", lambda s=s: make(s)) for s in (16, 24)]
    results = measure_latency(targets, batches=[1, 4], warmup=2, iters=3)
    cells = [(16, 1), (16, 4), (24, 1), (24, 4)]
    assert log[:8] == cells * 2, "warm-up rounds first"
    rounds = [log[8 + 4 * i : 12 + 4 * i] for i in range(3)]
    assert all(sorted(r) == cells for r in rounds), "every point exactly once per timed round"
    assert len({tuple(r) for r in rounds}) > 1, "the order is shuffled between rounds"
    assert {(r.size, r.batch) for r in results} == set(cells) and all(r.iters == 3 for r in results)
    assert all(e.syncs == 2 * 2 + 3 * 2 for e in engines.values()), "synchronized after each warm-up and each timed call"
    assert not any(e.active for e in engines.values()), "engines deactivated"


def test_percentiles():
    r = summarize(16, "x", "fp32", 8, [float(v) for v in range(1, 101)], "cpu", 2)
    assert r.p50_ms == pytest.approx(50.5) and r.p90_ms == pytest.approx(90.1) and r.p99_ms == pytest.approx(99.01)
    assert r.throughput == pytest.approx(8 * 1000 / 50.5)


def _tiny_run(tmp: Path, sections: str, baseline: bool = True) -> Path:
    """A random-BN cifar_resnet8 checkpoint and a run config for it on the shipped images, plus ``sections``."""
    from conftest import randomize_bn

    from mmdeploy.models import create_model

    torch.manual_seed(0)
    torch.save({"model": "resnet", "config": "{'depth': 8}", "state_dict": randomize_bn(create_model("cifar_resnet8")).state_dict()}, tmp / "r8.pth")
    cfg = tmp / "run.toml"
    cfg.write_text(f"""
out = "out"
[data]
calibration = "{ROOT / 'calib/train'}"
validation = "{ROOT / 'calib/val'}"
[[model]]
name = "tiny"
checkpoint = "r8.pth"
""" + ('baseline = "baseline/report.json"\n' if baseline else "") + sections)
    return cfg


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("run"), """[calibrate]
sizes = [16, 24]
batches = 2
batch_size = 16
[export]
engines = ["ort"]
[bench]
batches = [1, 4]
warmup = 1
iters = 3
noise_budget_s = 0
[report]
max_latency_regress = "1000%"
""")


@pytest.fixture
def quiet(monkeypatch):
    """Judge every bench quiet: these tests are about reuse and gating, and the machine running them may be shared."""
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_OTHERS_CPU", 1.0)
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_SPREAD", float("inf"))


def test_run_pipeline_then_reuse_then_gate(demo_config, quiet):
    first = run_pipeline(demo_config, log=lambda m: None)
    run = first.models[0]
    assert run.steps == {"calibrate": "ran", "export": "ran", "eval": "ran", "tune": "ran", "bench": "ran"}
    for kind in ("json", "csv", "md", "png"):
        assert run.files[kind].exists()
    report = load_report(run.files["json"])
    assert {(p.size, p.engine) for p in report.points} == {(16, "torch"), (24, "torch"), (16, "ort"), (24, "ort")}
    stored = Bundle.open(run.bundle)
    accuracies, latencies = stored.accuracies(), stored.latencies()
    assert {a.calibrated for a in accuracies} == {True, False} and {lat.batch for lat in latencies} == {1, 4}

    second = run_pipeline(demo_config, log=lambda m: None)
    assert set(second.models[0].steps.values()) == {"reused"}

    baseline = demo_config.parent / "baseline"
    baseline.mkdir()
    (baseline / "report.json").write_text(run.files["json"].read_text())
    assert run_pipeline(demo_config, gate=True, log=lambda m: None).passed
    data = json.loads(run.files["json"].read_text())
    data["points"][0]["top1"] += 5.0  # the baseline was better: the new report must fail the gate
    (baseline / "report.json").write_text(json.dumps(data))
    gated = run_pipeline(demo_config, gate=True, log=lambda m: None)
    assert not gated.passed
    assert any(f.kind == "accuracy-drop" for f in gated.models[0].gate.findings)


def test_run_fresh_reruns_bench_and_a_busy_or_foreign_bench_is_not_reused(demo_config, quiet, monkeypatch, cli):
    from mmdeploy.errors import MMDeployError

    run_pipeline(demo_config, log=lambda m: None)
    assert set(run_pipeline(demo_config, log=lambda m: None).models[0].steps.values()) == {"reused"}
    fresh = run_pipeline(demo_config, log=lambda m: None, fresh=["bench"]).models[0]
    assert fresh.steps == {"calibrate": "reused", "export": "reused", "eval": "reused", "tune": "reused", "bench": "ran"}
    assert run_pipeline(demo_config, log=lambda m: None, fresh=["all"]).models[0].steps["eval"] == "ran"
    with pytest.raises(MMDeployError, match="--fresh export"):
        run_pipeline(demo_config, log=lambda m: None, fresh=["export"])
    refused = cli("run", demo_config, "--fresh", "calibrate")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1 and "--fresh calibrate" in refused.stderr

    # A bench taken while the machine was busy is stored as unreliable and measured again next time.
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_OTHERS_CPU", -1.0)
    busy = run_pipeline(demo_config, log=lambda m: None, fresh=["bench"]).models[0]
    assert all(p.extra.get("unreliable") for p in busy.report.points)
    assert all(p.extra.get("unreliable") is True for p in load_report(busy.files["json"]).points), "the mark survives report.json"
    assert run_pipeline(demo_config, log=lambda m: None).models[0].steps["bench"] == "ran"
    monkeypatch.setattr("mmdeploy.latency.noise.MAX_OTHERS_CPU", 1.0)
    run_pipeline(demo_config, log=lambda m: None)
    # Another CPU (or library version, or host): tuned settings and bench are not reused.
    import mmdeploy.latency.tune

    real = mmdeploy.latency.tune.machine_fingerprint
    monkeypatch.setattr("mmdeploy.latency.tune.machine_fingerprint", lambda: {**real(), "cpu": "another CPU"})
    moved = run_pipeline(demo_config, log=lambda m: None).models[0]
    assert (moved.steps["tune"], moved.steps["bench"]) == ("ran", "ran")
    monkeypatch.setattr("mmdeploy.latency.tune.machine_fingerprint", real)
    run_pipeline(demo_config, log=lambda m: None, fresh=["tune"])


def test_report_cli_gate_exit_code(demo_config, cli):
    bundle = demo_config.parent / "out" / "tiny"
    run_pipeline(demo_config, log=lambda m: None)
    ok = cli("report", bundle, "--baseline", bundle / "report.json", "--max-latency-regress", "1000%")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    old = demo_config.parent / "old.json"
    data = json.loads((bundle / "report.json").read_text())
    data["points"].append({**data["points"][0], "size": 99})  # a point the new report lacks fails the gate
    old.write_text(json.dumps(data))
    bad = cli("report", bundle, "--baseline", old, "--max-latency-regress", "1000%")
    assert bad.exit_code == 1 and "missing" in bad.stdout
    picked = cli("report", bundle, "--pick", "--min-accuracy", "0")
    assert picked.exit_code == 0 and "deploy:" in picked.stdout


def test_report_gate_reads_a_baseline_that_is_the_bundles_own_report_before_rewriting_it(demo_config, cli):
    bundle = demo_config.parent / "out" / "tiny"
    run_pipeline(demo_config, log=lambda m: None)
    data = json.loads((bundle / "report.json").read_text())
    for point in data["points"]:
        point["top1"] += 5.0  # the committed report was better than what the bundle now measures
    (bundle / "report.json").write_text(json.dumps(data))
    gated = cli("report", bundle, "--baseline", bundle / "report.json", "--max-latency-regress", "1000%")
    assert gated.exit_code == 1 and "accuracy-drop" in gated.stdout


def test_report_names_what_is_missing_when_no_point_has_both_measurements(demo_config, cli, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    run_pipeline(demo_config, log=lambda m: None)
    shutil.copytree(demo_config.parent / "out" / "tiny", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["sizes"].values():
        entry["metrics"]["latency"] = {k: v for k, v in entry["metrics"]["latency"].items() if k.startswith("ort/")}
        entry["metrics"]["accuracy"] = {k: v for k, v in entry["metrics"]["accuracy"].items() if k.startswith("torch/")}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = cli("report", bundle)
    assert result.exit_code == 1 and "no point has both accuracy and batch-1 latency" in result.stderr


def test_report_warns_when_accuracies_come_from_different_image_sets(demo_config, tmp_path):
    import shutil

    from mmdeploy.report import report_bundle

    bundle = tmp_path / "b"
    run_pipeline(demo_config, log=lambda m: None)
    shutil.copytree(demo_config.parent / "out" / "tiny", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sizes"]["16"]["metrics"]["accuracy"]["ort/fp32"]["data_fingerprint"] = "another-folder"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="different image sets"):
        report_bundle(bundle)


def test_bench_cli_tunes_then_times_each_point_under_its_recorded_settings(demo_config, cli):
    bundle = demo_config.parent / "out" / "tiny"
    run_pipeline(demo_config, log=lambda m: None)
    result = cli("bench", bundle, "--tune", "--engine", "torch", "--engine", "ort", "--size", "16", "--batch", "1", "--iters", "3",
                 "--warmup", "0", "--noise-budget", "0")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # rich wraps long lines at the terminal width, wherever the figures put the break
    assert "tuned settings: ort/fp32/16/b1" in out and "\\n" not in out and "interference:" in out
    manifest = json.loads((bundle / "manifest.json").read_text())
    ort = manifest["sizes"]["16"]["metrics"]["latency"]["ort/fp32/b1"]
    tuned = manifest["engine_settings"]["ort/fp32"]["16"]["1"]
    assert ort["policy"] == {"streams": 1, **tuned, "source": "tuned"}, "the engine loaded the settings --tune stored"
    assert manifest["sizes"]["16"]["metrics"]["latency"]["torch/fp32/b1"]["policy"] == {"threads": 1, "spinning": False, "source": "default", "streams": 1}
    assert {"spread", "others_cpu", "load1", "passes"} <= set(ort["noise"]) and isinstance(ort["reliable"], bool)


def test_run_skips_a_size_whose_int8_fails_its_gate_and_remembers_it(tmp_path, quiet, monkeypatch):
    from mmdeploy.export.parity import DEFAULT_TOLERANCES, Tolerance

    cfg = _tiny_run(tmp_path, """[calibrate]
sizes = [16, 24]
batches = 2
batch_size = 16
[export]
engines = ["ort"]
precisions = ["fp32", "int8"]
int8_images = 16
[bench]
batches = [1]
warmup = 1
iters = 2
tune = false
noise_budget_s = 0
""", baseline=False)
    # An INT8 gate no quantized model can pass (more than 100% top-1 agreement): every size is refused.
    monkeypatch.setitem(DEFAULT_TOLERANCES, "int8", Tolerance(atol=0.1, rtol=0.5, min_top1_agreement=1.01))
    logged: list[str] = []
    first = run_pipeline(cfg, log=logged.append)
    assert {k for k in first.skipped_engines} == {"tiny int8 at 16", "tiny int8 at 24"}
    assert all("parity gate failed" in v for v in first.skipped_engines.values())
    assert any("int8 at size 16 not deployed" in m for m in logged)
    points = {(p.size, p.engine, p.precision) for p in first.models[0].report.points}
    assert (16, "ort", "fp32") in points and not any(prec == "int8" for _, _, prec in points)
    calls: list = []
    import mmdeploy.export.workflow as workflow

    original = workflow.export_bundle
    monkeypatch.setattr(workflow, "export_bundle", lambda *a, **k: calls.append(k.get("sizes")) or original(*a, **k))
    second = run_pipeline(cfg, log=lambda m: None)
    assert [c for c in calls if c] == [], "an unchanged bundle does not quantize and gate the refused sizes again"
    assert "earlier run" in second.skipped_engines["tiny int8 at 16"] and set(second.models[0].steps.values()) == {"reused"}


def test_a_baseline_point_this_machine_cannot_serve_is_noted_not_failed():
    from mmdeploy.pipeline import _excuse_unserved
    from mmdeploy.report import Finding, GateResult
    from mmdeploy.results import PointKey

    def gate():
        findings = [Finding(PointKey(16, "ov", "bf16"), "missing-point", 80.0, None, "in the baseline, missing from the new report"),
                    Finding(PointKey(16, "ort", "int8"), "missing-point", 80.0, None, "in the baseline, missing from the new report"),
                    Finding(PointKey(24, "ort", "int8"), "missing-point", 80.0, None, "in the baseline, missing from the new report")]
        return GateResult(False, findings, 3)

    excused = _excuse_unserved(gate(), "m", {"ov bf16": "this CPU has no native bf16", "m int8 at 16": "parity gate failed"})
    assert [f.kind for f in excused.findings] == ["not-served-here", "not-served-here", "missing-point"]
    assert not excused.passed and "no native bf16" in excused.findings[0].message
    assert _excuse_unserved(gate(), "m", {"ov": "openvino is not installed", "m int8 at 16": "x", "m int8 at 24": "y"}).passed
    assert not _excuse_unserved(gate(), "other", {"m int8 at 16": "x", "m int8 at 24": "y", "ov": "z"}).passed


def test_run_config_passes_every_mapped_field_to_the_keyword_its_command_uses(tmp_path, quiet, monkeypatch, cli):
    """Every config field that a step's command passes to its library call as a keyword reaches that call from `run` too."""
    import inspect

    from conftest import STEP_FUNCTIONS, step_function

    from mmdeploy.export.parity import Tolerance
    from mmdeploy.flagmap import SECTION_STEP, schema_flags
    from mmdeploy.pipeline import load_config

    sections = """arch = "cifar_resnet8"
arch_kwargs = {num_classes = 10}
preprocess = "cifar"
mean = [0.49, 0.48, 0.45]
std = [0.25, 0.24, 0.26]
train_size = 16
unsafe_allow_pickle = false
[calibrate]
sizes = [16]
batches = 2
batch_size = 16
augment = false
seed = 1
device = "cpu"
[export]
engines = ["ort"]
precisions = ["fp32"]
int8_method = "minmax"
int8_images = 16
atol = 0.01
rtol = 0.01
min_agreement = 0.9
dynamic = false
check_size = 40
static_batch = 8
trt_batches = [1, 8]
workspace_gb = 1.0
[eval]
batch_size = 8
limit = 40
device = "cpu"
[bench]
batches = [8]
warmup = 1
iters = 2
tune = false
noise_budget_s = 0
[report]
batch = 8
reference = "16/torch/fp32"
tolerance = 1.0
pick = true
min_accuracy = 0
"""
    cfg = _tiny_run(tmp_path, sections, baseline=False)
    calls: dict[str, list[dict]] = {}
    for command, path in STEP_FUNCTIONS.items():
        real = step_function(command)

        def recording(*args, _real=real, _command=command, **kwargs):
            calls.setdefault(_command, []).append(inspect.signature(_real).bind(*args, **kwargs).arguments)
            return _real(*args, **kwargs)

        monkeypatch.setattr(path.replace(":", "."), recording)
    run = run_pipeline(cfg, log=lambda m: None).models[0]
    config, _ = load_config(cfg)
    checked = 0
    for section, key, flag in schema_flags():
        if flag.keyword and SECTION_STEP.get(section) == flag.command:
            values = config[section][0] if section == "model" else config[section]
            assert key in values, f"this test's config should set {section}.{key}"
            for call in calls[flag.command]:
                assert call.get(flag.keyword) == values[key], f"{section}.{key} reached {flag.command} as {call.get(flag.keyword)!r}"
            checked += 1
    assert checked >= 20
    assert calls["export"][0]["tolerances"] == {"fp32": Tolerance(0.01, 0.01, 0.9)}
    # ... and did what it says: no dynamic ONNX, 40 images evaluated, the report's reference and a pick.
    bundle = Bundle.open(run.bundle)
    assert bundle.artifact(None, "onnx", "fp32") is None and bundle.artifact(16, "onnx", "fp32") is not None
    assert {a.images for a in bundle.accuracies()} == {40}
    assert run.report.reference.label == "16/torch/fp32" and run.pick is not None and run.pick.batch == 8

    again = cli("run", cfg)
    assert again.exit_code == 0 and "tiny: deploy: size 16" in " ".join(again.stdout.split()), again.stderr
    cfg.write_text(cfg.read_text().replace("limit = 40", "limit = 48"))
    changed = run_pipeline(cfg, log=lambda m: None).models[0]
    assert changed.steps["eval"] == "ran" and changed.steps["calibrate"] == changed.steps["export"] == "reused"
    assert {a.images for a in Bundle.open(run.bundle).accuracies()} == {48}
