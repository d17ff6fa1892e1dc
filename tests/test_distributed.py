"""torch.distributed on CPU (gloo, loopback): ranks shard the work and get one process's answers.

Calibration under ``torchrun`` gives the statistics of one process over the same images,
evaluation the same counts; a failing rank stops every rank with one clear line and no
bundle; TensorRT builds spread over the ranks and rank 0 merges the manifest (with a fake
builder: TensorRT is not needed). Every launch is 2 processes on tiny data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdeploy.bundle import Bundle
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.evaluate import evaluate_target
from tests.conftest import write_images

pytestmark = pytest.mark.filterwarnings("ignore:skipped .* unreadable files")  # the data holds 2 on purpose

REPO = Path(__file__).resolve().parents[1]
SIZES = (16, 24)
FAST = ("--batches", "4", "--batch-size", "4")
LAUNCH_TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite

# Run as a rank: optionally break decoding on rank FAIL_RANK (FAIL_MODE raise: an error such as
# out of memory; crash: the process dies; hang: it stops responding), then run the CLI as
# `python -m mmdeploy` would.
CLI_DRIVER = """
import os, sys, time
if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
    import mmdeploy.calib.workflow as workflow
    def decode_for_sizes(*args, **kwargs):
        if os.environ["FAIL_MODE"] == "crash":
            os._exit(3)
        if os.environ["FAIL_MODE"] == "hang":
            time.sleep(600)
        raise RuntimeError("CUDA out of memory (simulated)")
    workflow.decode_for_sizes = decode_for_sizes
from mmdeploy.cli import main
sys.argv[0] = "mmdeploy"
main()
"""

# Run as a rank: the trt export step with a fake TensorRT builder and engine; writes what it saw to OUT/rank<R>.json.
TRT_DRIVER = """
import json, os, sys
from pathlib import Path
import mmdeploy.engines.loader as loader
import mmdeploy.export.tensorrt as trt_build
import mmdeploy.export.tensorrt_step as trt_step
from mmdeploy import distributed
from mmdeploy.bundle import Bundle
from mmdeploy.errors import MMDeployError
from mmdeploy.progress import Progress

rank = int(os.environ["RANK"])

def build_bundle_plan(bundle, size, precision, **options):
    if f"{size}/{precision}" == os.environ.get("FAIL_JOB"):
        raise RuntimeError("builder ran out of GPU memory (simulated)")
    rel = trt_build.plan_filename(size, precision)
    bundle.path(rel).write_text(f"built by rank {rank} on cuda:{os.environ['LOCAL_RANK']}")
    entry = {"plan": rel, "built_by_rank": rank}
    bundle.set_artifact(size, "trt", precision, entry)
    return entry

class FakeEngine:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False

class Passed:
    passed = True
    def to_dict(self):
        return {"passed": True}

trt_build.build_bundle_plan, loader.load_trt = build_bundle_plan, lambda runner, bundle, size, precision: FakeEngine()
trt_step.check_parity = lambda *args, **kwargs: [Passed()]
saves = []
real_save = Bundle.save
Bundle.save = lambda self: (saves.append(rank), real_save(self))[1]

def trt_job(bundle, sizes, tolerances):  # what the trt step is handed after the ONNX pass: fp32 and fp16, batch 1, one placeholder image
    from mmdeploy.export.plan import EngineExport, ExportOptions, ExportSummary, PlannedExport

    planned = PlannedExport("trt", ("fp32", "fp16"), ("fp32", "fp16"), ("trt",))
    return EngineExport(bundle, bundle.root, sizes, planned, ExportOptions(tolerances=tolerances, trt_batches=(1,), trt_workspace_gb=1.0),
                        [None], None, Progress(), ExportSummary(bundle.root))

distributed.init_from_env()
bundle = Bundle.open(sys.argv[1])
try:
    job = trt_job(bundle, bundle.sizes, {"fp32": None, "fp16": None})
    trt_step.build_trt_step(job)
    result = {"built": job.summary.trt}
except MMDeployError as exc:
    result = {"error": type(exc).__name__ + ": " + exc.one_line()}
Path(sys.argv[2], f"rank{rank}.json").write_text(json.dumps({**result, "saves": len(saves)}))
sys.exit(1 if "error" in result else 0)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMDEPLOY_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MMDEPLOY_DIST_BACKEND": "gloo",
                "MMDEPLOY_DIST_TIMEOUT_S": "60", "COLUMNS": "200", **extra})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, world: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node WORLD -m mmdeploy ARGS`` (the launcher picks a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m", "mmdeploy", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def _launch(script: str, *args, world: int = 2, stop_after_rank0: bool = False, **env: str) -> list[tuple[int | None, str, str]]:
    """Start WORLD ranks of ``python -c SCRIPT ARGS`` as torchrun would (env:// rendezvous);
    returns each rank's (exit code, stdout, stderr). ``stop_after_rank0`` kills the other
    ranks once rank 0 has ended (their exit code is then None)."""
    common = _env(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), **env)
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env={**common, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    results = []
    try:
        for r, p in enumerate(procs):  # rank 0 first
            killed = r > 0 and stop_after_rank0 and p.poll() is None
            if killed:
                p.kill()
            out, err = p.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append((None if killed else p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return results


def _weights(bundle: Path, size: int) -> dict[str, torch.Tensor]:
    return load_file(bundle / f"sizes/{size}/weights.safetensors")


def _assert_same_calibration(one: Path, many: Path) -> None:
    a, b = Bundle.open(one).manifest, Bundle.open(many).manifest
    for s in SIZES:
        ra, rb = a["sizes"][str(s)]["calibration"], b["sizes"][str(s)]["calibration"]
        assert (ra["key"], ra["images"], ra["skipped_files"]) == (rb["key"], rb["images"], rb["skipped_files"])
        sa, sb = _weights(one, s), _weights(many, s)
        assert sa.keys() == sb.keys()
        stats = [k for k in sa if k.endswith(("running_mean", "running_var"))]
        assert stats
        for k in sa:
            if k in stats:
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-6, atol=1e-6, msg=f"{k} at size {s}")
            else:
                assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 images and 2 unreadable files; with --batches 4 --batch-size 4 each rank's batches hold one of them."""
    root = write_images(tmp_path_factory.mktemp("dist") / "train")
    for bad in ("cat/bad.jpg", "dog/bad.png"):
        (root / bad).write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, resnet8_checkpoint, data) -> Path:
    out = tmp_path_factory.mktemp("one") / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, list(SIZES), data, out, batches=4, batch_size=4)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, resnet8_checkpoint, data) -> Path:
    out = tmp_path_factory.mktemp("two") / "bundle"
    res = _torchrun("calibrate", resnet8_checkpoint, *(a for s in SIZES for a in ("--size", s)), "--data", data, "--out", out, *FAST, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):])  # rank 0 alone prints
    assert (summary["images"], summary["skipped"], summary["sizes"]) == (14, 2, list(SIZES))  # counts from both ranks
    return out


def test_torchrun_calibration_equals_one_process(one_process, two_ranks):
    _assert_same_calibration(one_process, two_ranks)
    assert not list(two_ranks.parent.glob(".*staging*"))


def test_rank_without_batches_takes_part(tmp_path, resnet8_checkpoint, data):
    """One batch, two ranks: rank 1 calibrates nothing but joins every collective."""
    one, two = tmp_path / "one", tmp_path / "two"
    calibrate_to_bundle(resnet8_checkpoint, list(SIZES), data, one, batches=1, batch_size=4, augment=False)
    args = ["calibrate", resnet8_checkpoint, *(a for s in SIZES for a in ("--size", s)), "--data", data, "--out", two,
            "--batches", "1", "--batch-size", "4", "--no-augment"]
    ranks = _launch(CLI_DRIVER, *args)
    assert [rc for rc, _, _ in ranks] == [0, 0], ranks[0][2][-2000:] + ranks[1][2][-2000:]
    assert Bundle.open(two).manifest["sizes"]["16"]["calibration"]["images"] == 3  # one batch of 4, one file unreadable
    _assert_same_calibration(one, two)


def test_torchrun_eval_counts_equal_one_process(tmp_path, two_ranks, data):
    bundle = tmp_path / "bundle"
    shutil.copytree(two_ranks, bundle)
    res = _torchrun("eval", bundle, "--data", data, "--batch-size", "5", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    many = json.loads(res.stdout[res.stdout.index("["):])
    one = evaluate_target(two_ranks, data, batch_size=5)

    def key(r):
        return (r["size"], r["engine"], r["precision"], r["calibrated"])

    assert sorted((key(r), r["top1"], r["top5"], r["images"]) for r in many) == sorted(
        (key(r.__dict__), r.top1, r.top5, r.images) for r in one)
    assert {r["images"] for r in many} == {16}
    saved = Bundle.open(bundle).manifest["sizes"]["16"]["metrics"]["accuracy"]["torch/fp32"]  # rank 0 wrote the results
    assert saved["images"] == 16


def test_failing_rank_stops_every_rank_and_leaves_no_bundle(tmp_path, resnet8_checkpoint, data):
    out = tmp_path / "bundle"
    args = ["calibrate", resnet8_checkpoint, "--size", "16", "--data", data, "--out", out, *FAST]
    ranks = _launch(CLI_DRIVER, *args, FAIL_RANK="1", FAIL_MODE="raise")
    assert [rc for rc, _, _ in ranks] == [1, 1]
    errors = [[line for line in err.splitlines() if line.startswith("error:")] for _, _, err in ranks]
    assert len(errors[0]) == 1 and errors[1] == [], errors  # rank 0 prints one line for all ranks
    line = errors[0][0]
    assert line.startswith("error: rank 1 of 2 failed") and "RuntimeError: CUDA out of memory (simulated)" in line and "hint:" in line
    assert not any("Traceback" in err for _, _, err in ranks)
    assert not out.exists() and not list(tmp_path.glob(".*staging*"))


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_rank_that_dies_or_hangs_does_not_hang_the_others(tmp_path, resnet8_checkpoint, data, mode):
    """No agreement is possible with a dead or stuck rank: the others' collective fails (at once,
    or after MMDEPLOY_DIST_TIMEOUT_S) and they end with one line naming the cause."""
    out = tmp_path / "bundle"
    args = ["calibrate", resnet8_checkpoint, "--size", "16", "--data", data, "--out", out, *FAST]
    ranks = _launch(CLI_DRIVER, *args, stop_after_rank0=True, FAIL_RANK="1", FAIL_MODE=mode, MMDEPLOY_DIST_TIMEOUT_S="5")
    rc, _, err = ranks[0]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: rank 0 lost contact with another rank") and "MMDEPLOY_DIST_TIMEOUT_S=5" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*staging*"))


def test_trt_builds_spread_over_ranks_and_rank0_merges(tmp_path, one_process):
    bundle = tmp_path / "bundle"
    shutil.copytree(one_process, bundle)
    ranks = _launch(TRT_DRIVER, bundle, tmp_path)
    assert [rc for rc, _, _ in ranks] == [0, 0], ranks[0][2][-2000:] + ranks[1][2][-2000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    jobs = [(s, p) for s in SIZES for p in ("fp32", "fp16")]
    expected = {f"{s}/{p}": f"sizes/{s}/model.{p}.plan" for s, p in jobs}
    assert seen[0]["built"] == seen[1]["built"] == expected
    assert [v["saves"] for v in seen] == [1, 0]  # rank 0 saves the merged manifest once
    manifest = Bundle.open(bundle).manifest
    for i, (s, p) in enumerate(jobs):
        builder = i % 2  # jobs[rank::world]
        entry = dict(manifest["sizes"][str(s)]["artifacts"][f"trt/{p}"])
        assert entry.pop("key"), "a reuse key (ONNX hash, settings, TensorRT version, GPU)"
        assert entry == {"plan": expected[f"{s}/{p}"], "built_by_rank": builder, "parity": [{"passed": True}]}
        assert (bundle / expected[f"{s}/{p}"]).read_text() == f"built by rank {builder} on cuda:{builder}"


def test_trt_build_failing_on_one_rank_stops_all_and_keeps_the_rest(tmp_path, one_process):
    bundle = tmp_path / "bundle"
    shutil.copytree(one_process, bundle)
    ranks = _launch(TRT_DRIVER, bundle, tmp_path, FAIL_JOB="24/fp16")  # the last job: rank 1's
    assert [rc for rc, _, _ in ranks] == [1, 1]
    for r in range(2):
        error = json.loads((tmp_path / f"rank{r}.json").read_text())["error"]
        assert error.startswith("RankFailed: rank 1 of 2 failed") and "builder ran out of GPU memory (simulated)" in error
    artifacts = {s: Bundle.open(bundle).manifest["sizes"][str(s)]["artifacts"] for s in SIZES}
    assert sorted(k for a in artifacts.values() for k in a) == ["trt/fp16", "trt/fp32", "trt/fp32"]
    assert "trt/fp16" not in artifacts[24] and not (bundle / "sizes/24/model.fp16.plan").exists()


def test_trt_builds_in_one_process_record_passes_and_drop_failures(tmp_path, one_process, monkeypatch):
    """Without a process group one rank builds every plan; a failed gate raises its own error."""
    import mmdeploy.engines.loader as loader
    import mmdeploy.export.tensorrt as trt_build
    import mmdeploy.export.tensorrt_step as trt_step
    from mmdeploy.errors import MMDeployError
    from mmdeploy.export.plan import EngineExport, ExportOptions, ExportSummary, PlannedExport
    from mmdeploy.progress import Progress

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(one_process, bundle_dir)
    bundle = Bundle.open(bundle_dir)

    def build_bundle_plan(bundle, size, precision, **options):
        rel = trt_build.plan_filename(size, precision)
        bundle.path(rel).write_text("plan")
        bundle.set_artifact(size, "trt", precision, {"plan": rel})
        return {"plan": rel}

    class Check:
        def __init__(self, passed):
            self.passed = passed

        def to_dict(self):
            return {"passed": self.passed}

    class FakeEngine:
        @classmethod
        def load(cls, runner, bundle, size, precision):  # the trt loader: the plan is not a real one
            cls.current = (size, precision)
            return cls()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(trt_build, "build_bundle_plan", build_bundle_plan)
    monkeypatch.setattr(loader, "load_trt", FakeEngine.load)
    monkeypatch.setattr(trt_step, "check_parity", lambda *a, **k: [Check(FakeEngine.current != (24, "fp16"))])
    tolerances = {"fp32": None, "fp16": None}
    planned = PlannedExport("trt", ("fp32", "fp16"), ("fp32", "fp16"), ("trt",))

    def job(sizes):
        options = ExportOptions(tolerances=tolerances, trt_batches=(1,), trt_workspace_gb=1.0)
        return EngineExport(bundle, bundle_dir, sizes, planned, options, [None], None, Progress(), ExportSummary(bundle_dir))

    built = job([16])
    trt_step.build_trt_step(built)
    assert built.summary.trt == {"16/fp32": "sizes/16/model.fp32.plan", "16/fp16": "sizes/16/model.fp16.plan"}
    with pytest.raises(MMDeployError, match="parity gate failed for the TensorRT fp16 plan at size 24"):
        trt_step.build_trt_step(job([24]))
    saved = Bundle.open(bundle_dir).manifest["sizes"]
    assert set(saved["16"]["artifacts"]) == {"trt/fp32", "trt/fp16"} and set(saved["24"]["artifacts"]) == {"trt/fp32"}
    assert not (bundle_dir / "sizes/24/model.fp16.plan").exists()


def test_one_process_is_rank_zero_of_one(monkeypatch):
    from mmdeploy import distributed
    from mmdeploy.errors import MMDeployError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env() and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard([1, 2, 3]) == [1, 2, 3] and distributed.all_gather_object("x") == ["x"]
    assert distributed.all_ok(False, "broken") == (False, "rank 0: broken")
    with pytest.raises(ValueError, match="as it was"), distributed.agreed():  # one process: errors pass through unchanged
        raise ValueError("as it was")
    monkeypatch.setenv("MMDEPLOY_DIST_TIMEOUT_S", "soon")
    with pytest.raises(MMDeployError, match="MMDEPLOY_DIST_TIMEOUT_S='soon'"):
        distributed._timeout_s()
