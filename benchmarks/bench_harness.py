"""Independent harness: is mmdeploy's best point as fast as any configuration a user could pick, timed the way the engine
will be used, and does it hold when another engine shares the process?

Not the tuner's timing loop: this script opens the bundle's per-size ONNX files itself, with the plain ONNX Runtime
and OpenVINO APIs, and times, per (size, batch), in one process:

- ``ort-default P``: ``onnxruntime.InferenceSession(file)``, no options at all (its workers spin after each run);
- ``ort-nospin P``: only ``session.intra_op.allow_spinning=0``, what ONNX Runtime's docs suggest for sharing cores;
- ``ov-default P``: ``Core().compile_model(model, "CPU")``, no hints (its default precision: bf16 on CPUs with it);
- ``ov-throughput P`` (batch > 1): the throughput hint alone, the batch split over the infer requests it asks for;
- ``mmdeploy ort P`` / ``mmdeploy ov P``: mmdeploy's own engines loaded from the bundle with their tuned settings;

for P in fp32 and int8 where the bundle has them. ``--usage`` (default: the usage the bundle was tuned for) sets how
all of them are timed for the first table, interleaved and in a fresh shuffled order per round (drift falls on all
alike), each in the pattern that usage's requests meet, so no configuration is timed in a pattern it will not run in:

- ``stream`` (back-to-back requests, engine alone): per round one block of back-to-back calls per configuration (at
  least ``--block-ms``, after one untimed call), ``--block-gap-ms`` (50) apart; figure: the median of block means. The
  gap outlasts ONNX Runtime's spinning (its workers spin on ~35 ms after a run): through a 10 ms gap a spinning
  session's block slowed the next block, OpenVINO's by up to 1.5x, so each configuration runs as if alone.
- ``isolated`` (one engine per process, requests with idle gaps): ``--calls`` single calls per configuration and round,
  each ``--gap-ms`` after the previous call of any; figure: the median call. Every such request wakes idle workers.
- ``shared`` (several engines in one process): each configuration X alternates call by call with one fixed neighbour
  N (OpenVINO's defaults on the fp32 file, same size and batch; without one, an ONNX Runtime session that does not
  spin): X, N, X, N, ...; X's cost per call is median(X's call + the N call right after it) minus N's undisturbed median
  (N's median after its own call, also timed in the rounds, or after any configuration where that is lower: at batch 1
  OpenVINO ran slower right after its own call than after another engine's): X's time plus the slowdown it causes its
  neighbour, which a session that spins after its run (it keeps the cores from whatever runs next) charges to nobody.

Then the process layout, in back-to-back blocks whatever the usage: each mmdeploy engine in a process of its own
(``isolated``), and in this one after a block of another (the other runtime, same precision) before each of its blocks
(``shared``). Prints mmdeploy best / fastest per cell and shared / isolated per engine, with the machine's load and CPU.

    python benchmarks/bench_harness.py /tmp/i26/b --batches 1 32 --rounds 7 [--usage stream|isolated|shared]

The bundle needs ``mmdeploy export B --engine ort --precision fp32 --precision int8``, the same with ``--engine ov``,
and ``mmdeploy bench B --tune --engine ort --engine ov --precision fp32 --precision int8`` for tuned settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def cpu_description() -> str:
    """Vendor family (AMD EPYC / Intel Xeon / other), model name, cores and the bf16/VNNI flags OpenVINO cares about."""
    text = Path("/proc/cpuinfo").read_text()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    family = "AMD EPYC" if "EPYC" in name else "Intel Xeon" if "Xeon" in name else "other CPU"
    cores = len(os.sched_getaffinity(0))
    features = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{family} ({name}), {cores} usable cores, {' '.join(features) or 'no AVX-512'}"


def cpu_seconds() -> tuple[float, float, float]:
    """(wall, machine-wide busy CPU seconds from /proc/stat, this process's and its children's CPU seconds)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def others_line(start: tuple[float, float, float]) -> str:
    """Other processes' share of the usable cores since ``start`` (a quiet run: under a few %)."""
    wall, busy, own = (b - a for a, b in zip(start, cpu_seconds()))
    share = max(0.0, busy - own) / max(1e-9, wall * len(os.sched_getaffinity(0)))
    return f"other processes used {share:.1%} of the cores during the run" + (" - NOT QUIET: do not quote" if share > 0.05 else "")


def load_line() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    busy = float(one) > 1.5
    return f"load average {one} {five} {fifteen}" + (" - the machine is SHARED and busy: read ratios, not absolute ms" if busy else "")


# ----------------------------------------------------------------------------- configurations (plain library calls)


class OrtPlain:
    """A session as a user opens it: no options (``spin=True``), or only ``session.intra_op.allow_spinning=0``."""

    def __init__(self, path: Path, spin: bool = True):
        import onnxruntime as ort

        options = None if spin else ort.SessionOptions()
        if options:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray):
        return self.session.run(None, {self.name: x})[0]


class OvPlain:
    """OpenVINO compiled for one batch shape, with no hints (``throughput=False``) or the throughput hint alone, the batch
    split over the infer requests OpenVINO asks for."""

    def __init__(self, path: Path, size: int, batch: int, throughput: bool):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        config = {hints.performance_mode: hints.PerformanceMode.THROUGHPUT} if throughput else {}
        parts = 1
        if throughput:
            probe = core.compile_model(self._shaped(core, path, 1, size), "CPU", config)
            parts = max(1, min(batch, int(probe.get_property(props.optimal_number_of_infer_requests))))
        self.part = -(-batch // parts)
        self.compiled = core.compile_model(self._shaped(core, path, self.part, size), "CPU", config)
        self.requests = [self.compiled.create_infer_request() for _ in range(-(-batch // self.part))]
        kind = self.compiled.get_property(hints.inference_precision)
        self.precision = kind.get_type_name() if hasattr(kind, "get_type_name") else str(kind)

    @staticmethod
    def _shaped(core, path: Path, batch: int, size: int):
        import openvino as ov

        model = core.read_model(str(path))
        model.reshape({model.inputs[0]: ov.PartialShape([batch, 3, size, size])})
        return model

    def __call__(self, x: np.ndarray):
        if len(self.requests) == 1:
            self.requests[0].infer({0: x}, share_inputs=True)
            return self.requests[0].get_output_tensor(0).data
        n = x.shape[0]
        if len(self.requests) * self.part > n:
            x = np.concatenate([x, np.zeros((len(self.requests) * self.part - n, *x.shape[1:]), np.float32)])
        for i, r in enumerate(self.requests):
            r.start_async({0: x[i * self.part:(i + 1) * self.part]}, share_inputs=True)
        for r in self.requests:
            r.wait()
        return self.requests[-1].get_output_tensor(0).data


class Mmdeploy:
    """One of mmdeploy's engines from the bundle, with the settings `mmdeploy bench --tune` stored for this batch."""

    def __init__(self, bundle, engine: str, size: int, precision: str, batch: int):
        import torch

        from mmdeploy.engines.loader import load_engine

        self.engine = load_engine(bundle, engine, size, precision, tuned_batch=batch).__enter__()
        self.settings = self.engine.policy.label if self.engine.policy else "?"
        self.torch = torch

    def __call__(self, x: np.ndarray):
        return self.engine(self.torch.from_numpy(x))

    def close(self):
        self.engine.__exit__(None, None, None)


# ----------------------------------------------------------------------------- timing


_clock, _sleep = time.perf_counter, time.sleep  # the tests run the timing functions on a virtual clock


def _warm(runs: dict, x: np.ndarray) -> None:
    for run in [run for run in runs.values() for _ in range(3)]:  # compile caches, thread pools
        run(x)


def _timed(run, x: np.ndarray) -> float:
    start = _clock()
    run(x)
    return 1000 * (_clock() - start)


def time_blocks(runs: dict, x: np.ndarray, rounds: int, block_ms: float, gap_ms: float, before: dict | None = None,
                seed: int = 0) -> dict[str, float]:
    """``stream``: median over ``rounds`` of the mean ms per call in a block of back-to-back calls, configurations
    interleaved. ``before``: name -> a callable run (untimed, one block's worth) right before that configuration's block."""
    _warm(runs, x)
    calls = {name: max(1, int(block_ms / max(1e-3, _timed(run, x)))) for name, run in runs.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            (before[name] if before and name in before else runs[name])(x)  # untimed: wakes the configuration's threads
            start = _clock()
            for _ in range(calls[name]):
                runs[name](x)
            samples[name].append(1000 * (_clock() - start) / calls[name])
            if gap_ms and not before:
                _sleep(gap_ms / 1000)
    return {name: statistics.median(s) for name, s in samples.items()}


def time_isolated(runs: dict, x: np.ndarray, rounds: int, calls: int, gap_ms: float, seed: int = 0) -> dict[str, float]:
    """``isolated``: median ms of a single call made ``gap_ms`` after the previous call of any configuration; each round
    makes ``calls`` calls per configuration in a shuffled order."""
    _warm(runs, x)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = [name for name in runs for _ in range(calls)]
        rng.shuffle(order)
        for name in order:
            _sleep(gap_ms / 1000)
            samples[name].append(_timed(runs[name], x))
    return {name: statistics.median(s) for name, s in samples.items()}


def time_shared(runs: dict, neighbour, x: np.ndarray, rounds: int, calls: int, gap_ms: float,
                seed: int = 0) -> tuple[dict[str, tuple[float, float, float]], float]:
    """``shared``: each configuration X alternates with ``neighbour`` N, X, N, X, N, ... (one untimed pair, then ``calls``
    timed pairs per round, configurations and N's own run in a shuffled order). Returns name -> (X's median ms, N's
    median ms right after X, cost = median(X + N after it) - N undisturbed), and N undisturbed: the lowest of N's
    medians after its own call and after each configuration."""
    every = {**runs, None: neighbour}  # None: N after N, the neighbour's own time
    _warm(every, x)
    own, after = ({name: [] for name in every} for _ in range(2))
    order = list(every)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            every[name](x)
            neighbour(x)
            for _ in range(calls):
                own[name].append(_timed(every[name], x))
                after[name].append(_timed(neighbour, x))
            _sleep(gap_ms / 1000)
    alone = min(statistics.median(a) for a in after.values())
    return {name: (statistics.median(own[name]), statistics.median(after[name]),
                   statistics.median(a + b for a, b in zip(own[name], after[name])) - alone) for name in runs}, alone


def _inputs(size: int, batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)


def _files(bundle, size: int, precision: str) -> tuple[Path | None, Path | None]:
    from mmdeploy.bundle import ONNX
    from mmdeploy.engines.loader import ov_record

    art = bundle.artifact(size, ONNX, precision)
    onnx = bundle.path(art.file) if art and bundle.path(art.file).exists() else None
    rec = ov_record(bundle, size, precision)
    ov = bundle.path(rec.file) if rec and bundle.path(rec.file).exists() else None
    return onnx, ov


def _neighbour(bundle, size: int, batch: int):
    """N of the ``shared`` pattern: OpenVINO's defaults on the fp32 file, else an ONNX Runtime session that does not spin."""
    onnx, ov = _files(bundle, size, "fp32")
    if not (onnx or ov):
        sys.exit(f"usage shared needs an fp32 file at {size} px for the neighbour engine")
    return ("ov-default fp32", OvPlain(ov, size, batch, throughput=False)) if ov else ("ort-nospin fp32", OrtPlain(onnx, spin=False))


def _time_as(usage: str, every: dict, x: np.ndarray, args, bundle, size: int, batch: int, notes: dict):
    """Every configuration's figure in ``usage``'s pattern, and its unit; for ``shared``, what makes up each cost goes
    into ``notes``."""
    seed = size * 1000 + batch
    if usage == "stream":
        return time_blocks(every, x, args.rounds, args.block_ms, args.block_gap_ms, seed=seed), "ms"
    if usage == "isolated":
        return time_isolated(every, x, args.rounds, args.calls, args.gap_ms, seed=seed), "ms"
    n_name, neighbour = _neighbour(bundle, size, batch)
    pairs, alone = time_shared(every, neighbour, x, args.rounds, args.calls, args.gap_ms, seed=seed)
    for name, (own, after, _) in pairs.items():
        notes[name] = f"own {own:.3f} + {n_name} after it {after:.3f} - N undisturbed {alone:.3f}  {notes.get(name, '')}"
    return {name: max(1e-6, cost) for name, (_, _, cost) in pairs.items()}, "ms cost"


def isolated_child(bundle_dir: str, engine: str, precision: str, cells: list[tuple[int, int]], rounds: int, block_ms: float) -> None:
    """In a process of its own: one mmdeploy engine per cell, timed alone; prints JSON {"size/batch": ms}."""
    from mmdeploy.bundle import Bundle

    bundle = Bundle.open(bundle_dir)
    out = {}
    for size, batch in cells:
        run = Mmdeploy(bundle, engine, size, precision, batch)
        out[f"{size}/{batch}"] = time_blocks({"e": run}, _inputs(size, batch), rounds, block_ms, 0.0)["e"]
        run.close()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-ms", type=float, default=5.0)
    ap.add_argument("--gap-ms", type=float, default=10.0, help="idle ms before each call (isolated), between pairs (shared)")
    ap.add_argument("--block-gap-ms", type=float, default=50.0, help="idle ms between blocks (stream): longer than ONNX Runtime spins")
    ap.add_argument("--calls", type=int, default=5, help="single calls (isolated) or pairs (shared) per configuration and round")
    ap.add_argument("--usage", choices=["stream", "isolated", "shared"],
                    help="how the first table times every configuration (default: the usage the bundle was tuned for)")
    ap.add_argument("--isolated-child", nargs=2, metavar=("ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from mmdeploy.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    sizes = args.sizes or bundle.sizes
    cells = [(s, b) for s in sizes for b in args.batches]
    if args.isolated_child:
        isolated_child(args.bundle, *args.isolated_child, cells, args.rounds, args.block_ms)
        return

    print(f"CPU: {cpu_description()}")
    print(f"before: {load_line()}")
    started = cpu_seconds()
    tuned = bundle.engine_settings.get("usage")
    usage = args.usage or tuned or "shared"
    why = "--usage" if args.usage else "the bundle's" if tuned else "tune's default; the bundle records none"
    pattern = {"stream": f"blocks >= {args.block_ms} ms, {args.block_gap_ms} ms apart",
               "isolated": f"{args.calls} single calls per round, each {args.gap_ms} ms after the previous call",
               "shared": f"{args.calls} pairs (X, neighbour) per round"}[usage]
    print(f"bundle {bundle.root}, tuned for usage {tuned or '(not recorded)'}; timed as usage {usage} ({why}): {pattern}; "
          f"rounds {args.rounds}\n")
    summary, layout = [], []
    for size, batch in cells:
        x = _inputs(size, batch)
        runs, mine, notes = {}, {}, {}
        for p in args.precisions:
            onnx, ov = _files(bundle, size, p)
            if onnx:
                runs[f"ort-default {p}"] = OrtPlain(onnx)
                runs[f"ort-nospin {p}"] = OrtPlain(onnx, spin=False)
                mine[f"mmdeploy ort {p}"] = Mmdeploy(bundle, "ort", size, p, batch)
            if ov:
                runs[f"ov-default {p}"] = plain = OvPlain(ov, size, batch, throughput=False)
                notes[f"ov-default {p}"] = f"runs {plain.precision}"
                if batch > 1:
                    runs[f"ov-throughput {p}"] = tp = OvPlain(ov, size, batch, throughput=True)
                    notes[f"ov-throughput {p}"] = f"{len(tp.requests)} requests, {tp.precision}"
                mine[f"mmdeploy ov {p}"] = Mmdeploy(bundle, "ov", size, p, batch)
        for name, m in mine.items():
            notes[name] = f"tuned: {m.settings}"
        ms, unit = _time_as(usage, {**runs, **mine}, x, args, bundle, size, batch, notes)
        fastest = min(ms, key=ms.get)
        best = min(mine, key=lambda n: ms[n])
        print(f"== {size} px, batch {batch}: mmdeploy best {best} {ms[best]:.3f} {unit} / fastest {fastest} {ms[fastest]:.3f} "
              f"{unit} = {ms[best] / ms[fastest]:.2f}")
        for name in sorted(ms, key=ms.get):
            print(f"   {name:<24} {ms[name]:9.3f} {unit}  {notes.get(name, '')}")
        summary.append((size, batch, ms[best] / ms[fastest], fastest))
        # shared: each mmdeploy engine with the other runtime's engine of the same precision running right before it
        for name, m in mine.items():
            kind, p = name.split()[1:]
            other = f"mmdeploy {'ov' if kind == 'ort' else 'ort'} {p}"
            if other in mine:
                shared = time_blocks({name: m}, x, args.rounds, args.block_ms, 0.0, before={name: mine[other]}, seed=batch)
                layout.append((name, size, batch, shared[name]))
        for m in mine.values():
            m.close()

    isolated = {}
    for engine in ("ort", "ov"):
        for p in args.precisions:
            cmd = [sys.executable, __file__, args.bundle, "--sizes", *map(str, sizes), "--batches", *map(str, args.batches),
                   "--rounds", str(args.rounds), "--block-ms", str(args.block_ms), "--isolated-child", engine, p]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    isolated[(f"mmdeploy {engine} {p}", key)] = value

    print(f"\nmmdeploy's best point / fastest configuration of any kind, timed as usage {usage}")
    print("| size | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---:|" + "---:|" * len(args.batches))
    for s in sizes:
        row = [f"{r:.2f} ({f})" if r > 1.05 else f"{r:.2f}" for (sz, b, r, f) in summary if sz == s]
        print(f"| {s} | " + " | ".join(row) + " |")
    print("\nprocess layout: each tuned engine's ms per call, isolated (own process) vs shared (another engine's block right before)")
    print("| engine | size | batch | isolated ms | shared ms | shared / isolated |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s, b, shared in layout:
        iso = isolated.get((name, f"{s}/{b}"))
        print(f"| {name} | {s} | {b} | {iso:.3f} | {shared:.3f} | {shared / iso:.2f} |" if iso else f"| {name} | {s} | {b} | - | {shared:.3f} | - |")
    print(f"\nafter: {load_line()}; {others_line(started)}")


if __name__ == "__main__":
    main()
