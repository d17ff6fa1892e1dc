"""Stress test of the bundle's crash and concurrency guarantees, with real processes and SIGKILL.

Kills `mmdeploy calibrate`, `mmdeploy export` and `mmdeploy run` at random instants and right
before their Nth os.replace (between renames), runs two writers into one bundle at once, two
`mmdeploy run`s on one new folder at once, refuses a symlinked lock file, and
after each: the bundle opens and every file its manifest lists matches its sha256; the next
(uninterrupted) run leaves no temp files and equals an uninterrupted run from scratch (weights
bit for bit, the same artifact keys, the same accuracies). Prints how many kills it survived.

    python benchmarks/stress_bundle.py --kills 8 --rename-kills 6 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mmdeploy.bundle import Bundle  # noqa: E402

CKPT = ROOT / "models/cifar_resnet20_mixsize_dplus.pth"
SIZES = ("16", "24")
# Kill the process itself right before its Nth os.replace: the instant between two renames.
KILL_AT_RENAME = """
import os, signal, sys
n, real, calls = int(os.environ["STRESS_KILL_AT"]), os.replace, [0]
def replace(src, dst):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
sys.argv = ["mmdeploy", *sys.argv[1:]]
from mmdeploy.cli import main
main()
"""


def commands(work: Path, bundle: Path) -> dict[str, list[str]]:
    sizes = [a for s in SIZES for a in ("--size", s)]
    return {
        "calibrate": ["calibrate", str(CKPT), *sizes, "--data", str(ROOT / "calib/train"), "--out", str(bundle), "--batches", "2", "--batch-size", "16"],
        "export": ["export", str(bundle), "--engine", "ort", "--data", str(ROOT / "calib/train")],
        "run": ["run", str(work / "run.toml")],
    }


def write_config(work: Path, out: Path) -> None:
    (work / "run.toml").write_text(f"""out = "{out}"
[data]
calibration = "{ROOT / 'calib/train'}"
validation = "{work / 'val'}"
[[model]]
name = "m"
checkpoint = "{CKPT}"
[calibrate]
sizes = [{', '.join(SIZES)}]
batches = 2
batch_size = 16
[export]
engines = ["ort"]
[bench]
batches = [1]
warmup = 1
iters = 3
""")


def mmdeploy(args: list[str], kill_at: int | None = None, kill_after: float | None = None) -> str:
    """Run one command; 'done', or 'killed' if SIGKILL ended it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "mmdeploy", *args]
    if kill_at is not None:
        env["STRESS_KILL_AT"] = str(kill_at)
        argv = [sys.executable, "-c", KILL_AT_RENAME, *args]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if proc.returncode == -signal.SIGKILL:
        return "killed"
    if proc.returncode != 0:
        raise SystemExit(f"mmdeploy {' '.join(args[:2])} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return "done"


def check_consistent(bundle: Path) -> None:
    """The manifest (if any) opens and every file it lists matches its sha256."""
    if not Bundle.is_bundle(bundle):
        return  # killed before the first commit: not a bundle yet, which is allowed
    b = Bundle.open(bundle)
    assert b.file_ok(b.source.weights, b.source.weights_sha256), "source weights"
    for s in b.sizes:
        r = b.size(s)
        assert b.file_ok(r.weights, r.weights_sha256), f"weights of {s}"
        for a in r.artifacts.values():
            assert b.artifact_usable(a), f"{a.file} does not match its sha256"


def temp_files(bundle: Path) -> list[str]:
    return [p.name for p in bundle.rglob("*.tmp")] + [p.name for p in bundle.parent.glob(f".{bundle.name}.staging-*")]


def _tensors_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(bundle: Path) -> dict:
    """What an uninterrupted run determines: the weights' tensors and file bytes (sha256: the writer
    sorts safetensors' metadata), which artifacts exist, the accuracies."""
    b = Bundle.open(bundle)
    return {"weights": {s: _tensors_hash(b.load_weights(s)) for s in [None, *b.sizes]},
            "weights_sha256": {s: b.size(s).weights_sha256 for s in b.sizes} | {None: b.source.weights_sha256},
            "artifacts": {s: sorted(b.size(s).artifacts) for s in b.sizes},
            "accuracy": sorted((a.size, a.engine, a.precision, a.calibrated, a.top1) for a in b.accuracies())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=8, help="SIGKILLs at random instants")
    ap.add_argument("--rename-kills", type=int, default=6, help="SIGKILLs right before a random os.replace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-images", type=int, default=20, help="validation images per class for `run`")
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="stress_bundle."))
    try:
        for cls in sorted((ROOT / "calib/val").iterdir()):
            (work / "val" / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[: opts.val_images]:
                shutil.copy(f, work / "val" / cls.name / f.name)
        # Uninterrupted references, with their durations (to spread the random kills over).
        ref, took = work / "ref", {}
        for name in ("calibrate", "export"):
            t = time.perf_counter()
            mmdeploy(commands(work, ref)[name])
            took[name] = time.perf_counter() - t
        write_config(work, work / "refrun")
        t = time.perf_counter()
        mmdeploy(commands(work, ref)["run"])
        took["run"] = time.perf_counter() - t
        want = {"calibrate": fingerprint(ref), "run": fingerprint(work / "refrun/m")}
        print("uninterrupted: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))

        survived, total, log = 0, 0, []
        plan = [("time", rng.choice(("calibrate", "export", "run"))) for _ in range(opts.kills)]
        plan += [("rename", rng.choice(("calibrate", "export", "run"))) for _ in range(opts.rename_kills)]
        for i, (how, name) in enumerate(plan):
            case = work / f"case{i}"
            bundle = case / "m"
            write_config(work, case)
            cmds = commands(work, bundle)
            if name == "export":
                mmdeploy(cmds["calibrate"])  # export needs a bundle
            if how == "time":
                outcome = mmdeploy(cmds[name], kill_after=rng.uniform(0.5, took[name]))
                where = "random instant"
            else:
                n = rng.randint(1, 12)
                outcome = mmdeploy(cmds[name], kill_at=n)
                where = f"before rename #{n}"
            total += outcome == "killed"
            check_consistent(bundle)
            # the next run: finish the bundle as the uninterrupted reference did
            for step in (["calibrate", "export"] if name != "run" else ["run"]):
                mmdeploy(cmds[step])
            leftovers = temp_files(bundle)
            assert not leftovers, f"temp files left after the rerun: {leftovers}"
            check_consistent(bundle)
            got = fingerprint(bundle)
            expected = dict(want["run" if name == "run" else "calibrate"])
            if name != "run":
                got.pop("accuracy"), expected.pop("accuracy")
            assert got == expected, f"case {i} ({name} killed {where}) differs from the uninterrupted run:\n{got}\n{expected}"
            survived += outcome == "killed"
            log.append(f"{name:9s} {outcome:6s} at {where}")
            print(f"case {i:2d}: {log[-1]}: consistent, rerun equals the uninterrupted run", flush=True)

        # Two writers at once: calibrate of 16 and of 24 into one new bundle, then an export.
        both = work / "both" / "m"
        procs = [subprocess.Popen([sys.executable, "-m", "mmdeploy", "calibrate", str(CKPT), "--size", s, "--data", str(ROOT / "calib/train"),
                                   "--out", str(both), "--batches", "2", "--batch-size", "16"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in SIZES]
        errs = [p.communicate()[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errs
        check_consistent(both)
        assert set(json.loads((both / "manifest.json").read_text())["sizes"]) == set(SIZES), "both writers' sizes landed"
        got, expected = fingerprint(both), dict(want["calibrate"])
        assert got["weights"] == expected["weights"], "two writers at once equal one writer"
        print("two calibrate writers at once: both sizes landed, weights equal the uninterrupted run")

        # Two `mmdeploy run`s on one new output folder at once (concurrent creation of the same bundles): both exit 0, and the bundle equals one run's.
        twice = work / "twice"
        write_config(work, twice)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, "-m", "mmdeploy", "run", str(work / "run.toml")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errs = [p.communicate()[1] for p in procs]
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], f"two first runs at once: exit codes {codes}: {[e.strip().splitlines()[-1:] for e in errs]}"
        check_consistent(twice / "m")
        assert not temp_files(twice / "m"), temp_files(twice / "m")
        assert fingerprint(twice / "m") == want["run"], "two first runs at once differ from one uninterrupted run"
        print("two `mmdeploy run`s on one new folder at once: both exit 0, the bundle equals an uninterrupted run")

        # A symlinked lock file: refused in one line by a reader and a writer; the file it points to is untouched.
        victim = work / "victim.txt"
        victim.write_text("precious\n")
        lock = ref / ".mmdeploy.lock"
        lock.unlink(missing_ok=True)
        lock.symlink_to(victim)
        refused = 0
        for args in (["eval", str(ref), "--data", str(work / "val")], commands(work, ref)["export"]):
            proc = subprocess.run([sys.executable, "-m", "mmdeploy", *args], env=env, capture_output=True, text=True)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1 and "symbolic link" in lines[0], (proc.returncode, proc.stderr)
            refused += 1
        assert victim.read_text() == "precious\n" and lock.is_symlink(), "the lock's target was written"
        print(f"symlinked lock file: {refused} of 2 commands refused it in one line, its target untouched")
        print(f"survived {survived} of {total} SIGKILLs ({len(plan)} cases: {opts.kills} at random instants, "
              f"{opts.rename_kills} before a random rename); 0 inconsistent bundles, 0 temp files left")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
