"""How long the command line takes to start: ``mmdeploy --help``, ``mmdeploy archs`` and ``mmdeploy report BUNDLE``
against ``python -c pass``.

    python benchmarks/bench_startup.py [--bundle runs/demo/mixsize] [--runs 9]

Each run is a fresh process (what a user or a CI job pays per command), the commands interleaved round-robin so that
load on the machine falls on all of them alike. Prints the median wall time of each and its ratio to
``python -c pass``. The report is timed twice: into a new folder (pareto.png drawn) and again into the same folder
(its inputs unchanged, so pareto.png is kept and only the text files are written). Without ``--bundle`` a tiny bundle is made first in a temporary folder (the shipped mixed-size
model at 24 and 32 px, a few calibration batches, ONNX Runtime fp32, a short bench), which takes a minute or so.
The ``mmdeploy`` on PATH is timed (the one of the active environment), else ``python -m mmdeploy``; ``--cli`` names
another command line, e.g. an older version for a before/after: ``--cli "env PYTHONPATH=/tmp/old python -m mmdeploy"``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tiny_bundle(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from mmdeploy import api

    out = folder / "bundle"
    api.calibrate(ROOT / "models/cifar_resnet20_mixsize_dplus.pth", sizes=[24, 32], data=ROOT / "calib/train", out=out, batches=2, batch_size=32)
    api.export(out, engine="ort")
    api.evaluate(out, data=ROOT / "calib/val", engines=["torch", "ort"], limit=100)
    api.bench(out, engines=["torch", "ort"], batches=[1], warmup=2, iters=5, noise_budget_s=0)
    api.report(out)
    return out


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a bundle with eval and bench results (default: make a tiny one)")
    ap.add_argument("--runs", type=int, default=9, help="runs of each command (median reported)")
    ap.add_argument("--cli", help="the command line to time (default: mmdeploy on PATH)")
    args = ap.parse_args()
    exe = shutil.which("mmdeploy")
    cli = shlex.split(args.cli) if args.cli else [exe] if exe else [sys.executable, "-m", "mmdeploy"]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or _tiny_bundle(Path(tmp))
        # The report's files go to the temporary folder, so that timing it does not touch a given bundle's.
        fresh = iter(range(10**6))
        commands = {
            "python -c pass": lambda: [sys.executable, "-c", "pass"],
            "mmdeploy --help": lambda: [*cli, "--help"],
            "mmdeploy archs": lambda: [*cli, "archs"],
            "report, plot drawn": lambda: [*cli, "report", str(bundle), "--out", f"{tmp}/report{next(fresh)}"],
            "report, plot kept": lambda: [*cli, "report", str(bundle), "--out", f"{tmp}/report"],
        }
        for cmd in commands.values():  # one untimed round: the page cache and .pyc files, not what is measured
            _time(cmd())
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(_time(cmd()))
    base = statistics.median(times["python -c pass"])
    print(f"{args.runs} runs each, interleaved; {' '.join(cli)}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:20s} median {med:.3f} s  (min {min(values):.3f}, max {max(values):.3f})  {med / base:6.1f}x python -c pass")


if __name__ == "__main__":
    main()
