"""The ov engine (OpenVINO on the CPU): matches torch, the gate at fp32 and bf16, the model cache, bf16 refusal, wiring."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmdeploy.bundle import OV, Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.engines.loader import load_engine
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import Tolerance
from mmdeploy.export.workflow import export_bundle
from mmdeploy.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calib" / "train"
HAVE_OV = importlib.util.find_spec("openvino") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed (pip install -e '.[openvino]')")


def _native_bf16() -> bool:
    from mmdeploy.engines.openvino import native_bf16

    return native_bf16()


needs_bf16 = pytest.mark.skipif(not HAVE_OV or not _native_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)")


def _precisions() -> list[str]:
    return ["fp32", "bf16"] if HAVE_OV and _native_bf16() else ["fp32"]


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory):
    from conftest import randomize_bn

    if not HAVE_OV:
        pytest.skip("openvino is not installed (pip install -e '.[openvino]')")
    tmp = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    ckpt = tmp / "r8.pth"
    torch.save({"model": "resnet", "config": "{'depth': 8}", "state_dict": randomize_bn(create_model("cifar_resnet8")).state_dict()}, ckpt)
    out = tmp / "bundle"
    calibrate_to_bundle(ckpt, [16, 24], CALIB, out, batches=2, batch_size=16)
    summary = export_bundle(out, "ov", _precisions(), parity_count=8, dynamic=False)
    return out, summary


def _blobs(bundle: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (bundle / "ov_cache").iterdir()}


@needs_ov
def test_ov_engine_matches_torch_at_batch_1_and_a_split_padded_batch(ov_bundle):
    from mmdeploy.engines.openvino import OvEngine

    out, _ = ov_bundle
    bundle = Bundle.open(out)
    model = bundle.build_model(24).eval()
    x = torch.randn(9, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    # 9 images over 2 streams: parts of 5, the last one zero-padded; the padding must not leak into the result
    with OvEngine(bundle.path("sizes/24/model.onnx"), 24, "fp32", threads=2, streams=2, throughput_min_batch=4) as run:
        got_1 = torch.cat([run(x[i : i + 1]) for i in range(len(x))])
        got_9 = run(x)
        compiled = {b: plan[0] for b, plan in run._compiled.items()}
    assert got_9.shape == (9, 10)
    assert torch.allclose(got_1, ref, atol=1e-4, rtol=1e-3) and torch.allclose(got_9, ref, atol=1e-4, rtol=1e-3)
    import openvino.properties as props
    import openvino.properties.hint as hints

    assert str(compiled[1].get_property(hints.performance_mode)).endswith("LATENCY")
    assert str(compiled[9].get_property(hints.performance_mode)).endswith("THROUGHPUT")
    assert str(compiled[9].get_property(props.num_streams)) == "2"
    for c in compiled.values():  # fp32 is pinned: OpenVINO's own default is bf16 on CPUs that have it
        assert str(c.get_property(hints.inference_precision)) in ("<Type: 'float32'>", "f32")


@needs_ov
def test_batch_1_calls_each_read_their_own_input_and_keep_their_own_output(ov_bundle):
    # Batch 1 hands OpenVINO a tensor over the caller's memory (no input copy, no output dict): a call must not see an
    # earlier call's input, and a returned output must not change when later calls reuse the request.
    out, _ = ov_bundle
    xs = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with load_engine(Bundle.open(out), "ov", 16, "fp32") as run:
        first = [run(x) for x in xs]
        kept = [y.clone() for y in first]
        again = [run(x) for x in reversed(xs)]
        x = xs[0].clone()
        y = run(x)
        x.zero_()  # the caller reuses its buffer after the call
        batched = run(torch.cat(xs))
        half = run(xs[1].half())  # converted on the way in, as before
        with pytest.raises(MMDeployError, match="takes"):
            run(torch.randn(1, 3, 1, 1))  # would broadcast into the input memory unnoticed
    assert all(torch.equal(a, b) for a, b in zip(first, kept)), "a later call overwrote an earlier output"
    assert all(torch.equal(a, b) for a, b in zip(first, reversed(again))), "a call read another call's input"
    assert not torch.allclose(first[0], first[1]), "different inputs, different logits"
    assert torch.equal(y, first[0])
    torch.testing.assert_close(batched, torch.cat(first), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(half, first[1], atol=1e-2, rtol=1e-2)


@needs_ov
def test_export_gates_and_records_every_size_and_precision(ov_bundle):
    out, summary = ov_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    for s in (16, 24):
        onnx = manifest["sizes"][str(s)]["artifacts"]["onnx/fp32"]
        for p in _precisions():
            rec = manifest["sizes"][str(s)]["artifacts"][f"ov/{p}"]
            assert rec["path"] == onnx["path"] and rec["sha256"] == onnx["sha256"] and rec["cache_dir"] == "ov_cache"
            assert {(c["batch"], c["passed"]) for c in rec["parity"]} == {(1, True), (8, True)}
            assert all(c["images"] >= 64 for c in rec["parity"]), "the ov gate looks at enough images for a top-1 agreement bound"
    assert {f"{s}/{p}" for s in (16, 24) for p in _precisions()} == set(summary.ov)
    assert {c.artifact for c in summary.checks} >= {"ov"}
    assert not list(out.glob(".ov_cache.*")), "no temporary caches left"


@needs_bf16
def test_bf16_really_runs_in_bf16_and_passes_its_own_tolerance(ov_bundle):
    out, summary = ov_bundle
    by = {(c.precision, c.size, c.batch): c for c in summary.checks if c.artifact == "ov"}
    for s in (16, 24):
        assert by[("fp32", s, 1)].max_rel < 1e-5
        # bf16 keeps 8 mantissa bits: a visible error, far above fp32's, inside the bf16 bound
        assert 1e-4 < by[("bf16", s, 1)].max_rel < 2e-2 and by[("bf16", s, 1)].passed


@needs_bf16
def test_a_failing_bf16_gate_writes_nothing_for_that_precision(ov_bundle, tmp_path):
    out, _ = ov_bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for s in ("16", "24"):
        manifest["sizes"][s]["artifacts"].pop("ov/bf16")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = _blobs(copy)
    strict = {"bf16": Tolerance(atol=1e-6, rtol=1e-6, min_top1_agreement=1.0)}
    with pytest.raises(MMDeployError, match="bf16 at size 16, bf16 at size 24"):
        export_bundle(copy, "ov", ["fp32", "bf16"], tolerances=strict, parity_count=8, dynamic=False)
    after = json.loads((copy / "manifest.json").read_text())
    assert all("ov/bf16" not in after["sizes"][s]["artifacts"] and "ov/fp32" in after["sizes"][s]["artifacts"] for s in ("16", "24"))
    assert _blobs(copy) == before and not list(copy.glob(".ov_cache.*"))


@needs_ov
def test_second_export_reuses_and_the_engine_loads_from_the_cache(ov_bundle):
    out, _ = ov_bundle
    keys = {s: {p: Bundle.open(out).artifact(s, OV, p).key for p in _precisions()} for s in (16, 24)}
    before = _blobs(out)
    assert before, "the gate's compiled models are kept in the bundle's cache"
    again = export_bundle(out, "ov", _precisions(), parity_count=8, dynamic=False)
    assert not again.ov and {f"ov {s}/{p}" for s in (16, 24) for p in _precisions()} <= set(again.reused)
    assert _blobs(out) == before
    bundle = Bundle.open(out)
    assert {s: {p: bundle.artifact(s, OV, p).key for p in _precisions()} for s in (16, 24)} == keys
    with load_engine(bundle, "ov", 16, "fp32") as run:  # batch 1 and 8 were compiled by the gate: loaded from blobs, none added
        run(torch.randn(1, 3, 16, 16))
        run(torch.randn(8, 3, 16, 16))
    assert _blobs(out) == before
    # a changed key (another OpenVINO or CPU) gates and records again
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sizes"]["16"]["artifacts"]["ov/fp32"]["key"] = "stale"
    (out / "manifest.json").write_text(json.dumps(manifest))
    redo = export_bundle(out, "ov", ["fp32"], parity_count=8, dynamic=False)
    assert set(redo.ov) == {"16/fp32"}


@needs_ov
def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(ov_bundle, monkeypatch, cli):
    import mmdeploy.engines.openvino as ov_engine

    out, _ = ov_bundle
    monkeypatch.setattr(ov_engine, "native_bf16", lambda: False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(MMDeployError, match="no native bf16"):
        export_bundle(out, "ov", ["bf16"])
    result = cli("export", out, "--engine", "ov", "--precision", "bf16")
    assert result.exit_code == 1 and "no native bf16" in result.stderr and "--precision fp32" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(MMDeployError, match="no native bf16"):
        ov_engine.OvEngine(out / "sizes/16/model.onnx", 16, "bf16").activate()
    assert (out / "manifest.json").read_bytes() == before


@needs_ov
def test_eval_bench_and_report_treat_ov_like_the_other_engines(ov_bundle):
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.latency.bench import bench_bundle
    from mmdeploy.report import report_bundle

    out, _ = ov_bundle
    precisions = _precisions()
    acc = evaluate_target(out, ROOT / "calib" / "val", engines=["torch", "ort", "ov"], precisions=precisions, limit=40)
    got = {(a.size, a.engine, a.precision) for a in acc if a.calibrated}
    assert got == {(s, e, p) for s in (16, 24) for e, p in [("torch", "fp32"), ("ort", "fp32"), *[("ov", p) for p in precisions]]}
    by = {(a.size, a.engine, a.precision): a.top1 for a in acc if a.calibrated}
    assert by[(24, "ov", "fp32")] == by[(24, "torch", "fp32")]
    lat, _, _ = bench_bundle(out, ["torch", "ov"], precisions, batches=[1, 8], warmup=1, iters=2)
    assert {(r.engine, r.precision, r.batch) for r in lat} == {("torch", "fp32", 1), ("torch", "fp32", 8)} | {("ov", p, b) for p in precisions for b in (1, 8)}
    report, _ = report_bundle(out, batch=1)
    assert {(p.engine, p.precision) for p in report.points} >= {("ov", p) for p in precisions}


def test_a_missing_openvino_disables_only_ov(monkeypatch, tmp_path):
    import mmdeploy.engines.openvino as ov_engine
    import mmdeploy.export.openvino as ov_export
    from mmdeploy.engines import available_engines

    for module in (ov_engine, ov_export):
        monkeypatch.setattr(module, "ov_unavailable_reason", lambda: "openvino is not installed (pip install openvino)")
    reasons = available_engines()
    assert reasons["ov"].startswith("openvino is not installed") and reasons["torch"] == "" and reasons["ort"] == ""
    with pytest.raises(MMDeployError, match="cannot use OpenVINO here: openvino is not installed"):
        ov_export.check_ov_available(["fp32"])


@needs_ov
def test_run_with_auto_engines_includes_ov_points(tmp_path):
    from conftest import randomize_bn

    from mmdeploy.pipeline import run_pipeline
    from mmdeploy.report import load_report

    torch.manual_seed(0)
    torch.save({"model": "resnet", "config": "{'depth': 8}", "state_dict": randomize_bn(create_model("cifar_resnet8")).state_dict()}, tmp_path / "r8.pth")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
out = "out"
[data]
calibration = "{CALIB}"
validation = "{ROOT / 'calib/val'}"
[[model]]
name = "tiny"
checkpoint = "r8.pth"
[calibrate]
sizes = [16]
batches = 2
batch_size = 16
[bench]
batches = [1]
warmup = 1
iters = 2
""")
    summary = run_pipeline(cfg, log=lambda m: None)
    assert "ov" in summary.engines
    points = {(p.engine, p.precision) for p in load_report(summary.models[0].files["json"]).points}
    assert {("torch", "fp32"), ("ort", "fp32")} | {("ov", p) for p in _precisions()} <= points
    assert ("ort", "bf16") not in points
    assert ("ort", "int8") not in points or ("ov", "int8") in points, "a size with a QDQ ONNX gets an ov int8 point too"


def test_ov_candidates_split_only_large_batches():
    from mmdeploy.latency.threads import ThreadPolicy
    from mmdeploy.latency.tune import ov_candidates

    assert ov_candidates(1, cores=2)[1:] == [ThreadPolicy(1, False, "tuned"), ThreadPolicy(2, False, "tuned")]
    assert ov_candidates(1, cores=2)[0].preset == "default", "OpenVINO's defaults are always tried"
    assert ThreadPolicy(2, False, "tuned", 2) in ov_candidates(32, cores=2) and len(ov_candidates(32, cores=4)) == 2 + 4 + 3
    assert ThreadPolicy(2, False, "tuned", 2).label == "2t 2 streams"
    assert ThreadPolicy.from_dict({"threads": 2, "spinning": False}).streams == 1  # records from before streams existed


@needs_ov
def test_tune_stores_ov_threads_and_streams_and_the_engine_loads_them(ov_bundle):
    from mmdeploy.latency.bench import bench_bundle
    from mmdeploy.latency.threads import ov_default_policy
    from mmdeploy.latency.tune import tune_bundle

    out, _ = ov_bundle
    result = tune_bundle(out, ["fp32"], [16], [1, 8], warmup=1, iters=2, noise_budget_s=0, engines=("ov",))
    assert set(result.chosen) == {"ov/fp32/16/b1", "ov/fp32/16/b8"}
    assert set(result.timings["ov/fp32/16/b1"]) == {"default", "1t", "2t"} if ov_default_policy().threads == 2 else True
    bundle = Bundle.open(out)
    for batch in (1, 8):
        chosen = result.chosen[f"ov/fp32/16/b{batch}"]
        engine = load_engine(bundle, "ov", 16, "fp32", tuned_batch=batch)
        assert engine.policy == chosen and (engine.threads, engine.streams) == (chosen.threads, chosen.streams)
    assert load_engine(bundle, "ov", 24, "fp32").policy == ov_default_policy(), "an untuned size keeps the default"
    assert load_engine(bundle, "ov", 16, "fp32", threads=1).policy.source == "default", "explicit options win"
    results, _, _ = bench_bundle(out, ["ov"], ["fp32"], [16], [1, 8], warmup=1, iters=2, noise_budget_s=0)
    by_batch = {r.batch: r for r in results}
    assert by_batch[8].policy["streams"] == result.chosen["ov/fp32/16/b8"].streams, "bench records what ran per batch"
    assert by_batch[1].policy["source"] == "tuned"


@needs_ov
def test_ov_int8_runs_the_qdq_onnx_in_int8_gated_like_ort_int8(ov_bundle, tmp_path):
    from mmdeploy.engines.openvino import OvEngine

    src, _ = ov_bundle
    out = tmp_path / "bundle"
    shutil.copytree(src, out)  # the module's bundle stays as the other tests expect it
    summary = export_bundle(out, "ov", ["int8"], parity_count=8, dynamic=False)  # makes the per-size QDQ ONNX first
    assert set(summary.ov) == {"16/int8", "24/int8"}
    bundle = Bundle.open(out)
    manifest = json.loads((out / "manifest.json").read_text())
    for s in (16, 24):
        rec = manifest["sizes"][str(s)]["artifacts"]["ov/int8"]
        qdq = manifest["sizes"][str(s)]["artifacts"]["onnx/int8"]
        assert rec["path"] == qdq["path"] and rec["sha256"] == qdq["sha256"], "ov int8 is gated on the QDQ ONNX"
        assert all(c["passed"] for c in rec["parity"])
    x = torch.randn(16, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with load_engine(bundle, "ov", 24, "int8") as ov_run, load_engine(bundle, "ort", 24, "int8") as ort_run:
        agree = (ov_run(x).argmax(1) == ort_run(x).argmax(1)).float().mean().item()
        compiled = ov_run._compiled[16][0]
    assert agree >= 0.9
    kinds = {(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
             for op in compiled.get_runtime_model().get_ordered_ops()}
    assert {("Convolution", "u8"), ("Convolution", "i8")} & kinds, "the convolutions run in int8, not dequantized to f32"
    assert isinstance(load_engine(bundle, "ov", 16, "int8"), OvEngine)
