"""Independent harness: is mmdeploy's best point as fast as any configuration a user could pick, timed the way the engine
will be used, and does it hold when another engine shares the process?

Not the tuner's timing loop: this script opens the bundle's per-size ONNX files itself, with the plain ONNX Runtime
and OpenVINO APIs, and times, per (size, batch):

- ``ort-default P``: ``onnxruntime.InferenceSession(file)``, no options at all (its workers spin after each run);
- ``ort-nospin P``: only ``session.intra_op.allow_spinning=0``, what ONNX Runtime's docs suggest for sharing cores;
- ``ov-default P``: ``Core().compile_model(model, "CPU")``, no hints (its default precision: bf16 on CPUs with it);
- ``ov-throughput P`` (batch > 1): the throughput hint alone, the batch split over the infer requests it asks for;
- ``mmdeploy ort P`` / ``mmdeploy ov P``: mmdeploy's own engines loaded from the bundle with their tuned settings;

for P in fp32 and int8 where the bundle has them. ``--usage`` (default: the usage the bundle was tuned for) sets how
all of them are timed for the first table, in a fresh shuffled order per round (drift falls on all alike), each in the
pattern that usage's requests meet, so no configuration is timed in a pattern it will not run in:

- ``stream`` (back-to-back requests, engine alone), all in this process: per round one block of back-to-back calls per
  configuration (at least ``--block-ms``, after one untimed call), ``--block-gap-ms`` (50) apart; figure: the median of
  block means. The gap outlasts ONNX Runtime's spinning (its workers spin on ~35 ms after a run): through a 10 ms gap a
  spinning session's block slowed the next block, OpenVINO's by up to 1.5x, so each configuration runs as if alone.
- ``isolated`` (one engine per process, requests with idle gaps): each configuration in a process of its own (this
  script in ``--worker`` mode, opening only that configuration and warming it with 3 calls), one process computing at
  a time. Per round, in a shuffled order, each process takes a turn: one untimed call, then ``--calls`` calls, each
  ``--gap-ms`` after the previous call of the same configuration; ``--block-gap-ms`` of idle between two turns, longer
  than ONNX Runtime spins, so no turn runs beside another process's spinning workers. Figure: the median call over all
  turns; a round's figure: the median of its turn. A configuration whose turn fails (it raises, its process dies or
  stops answering) is dropped with all its rounds and shown ``NOT TIMED``; the others keep every round.
- ``shared`` (several engines in one process), all in this process: each configuration X alternates call by call with
  one fixed neighbour N (OpenVINO's defaults on the fp32 file, same size and batch; without one, an ONNX Runtime
  session that does not spin): X, N, X, N, ...; X's cost per call is median(X's call + the N call right after it)
  minus N's undisturbed median (N's median after its own call, also timed in the rounds, or after any configuration
  where that is lower: at batch 1 OpenVINO ran slower right after its own call than after another engine's): X's time
  plus the slowdown it causes its neighbour, which a session that spins after its run (it keeps the cores from
  whatever runs next) charges to nobody.

Per cell, mmdeploy's best configuration and the fastest of any kind are chosen by those figures; the ratio printed is
the median over rounds of the two's ratio in the same round (round figures: stream a block mean, isolated a turn's
median, shared the median cost of the round's pairs), with a 95% bootstrap interval over rounds (2000 resamples,
seeded), e.g. ``1.03 [0.99-1.07]``; ``1.00`` alone where mmdeploy's best is the fastest.

Then the process layout, in back-to-back blocks whatever the usage: each mmdeploy engine in a process of its own
(``isolated``), and in this one after a block of another (the other runtime, same precision) before each of its blocks
(``shared``). Prints mmdeploy best / fastest per cell and shared / isolated per engine, with the machine's load and CPU.

    python benchmarks/bench_harness.py /tmp/i26/b --batches 1 32 --rounds 7 [--usage stream|isolated|shared]

The bundle needs ``mmdeploy export B --engine ort --precision fp32 --precision int8``, the same with ``--engine ov``,
and ``mmdeploy bench B --tune --engine ort --engine ov --precision fp32 --precision int8`` for tuned settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
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
        from mmdeploy.engines.loader import load_engine

        self.engine = load_engine(bundle, engine, size, precision, tuned_batch=batch).__enter__()
        self.settings = self.engine.policy.label if self.engine.policy else "?"

    def __call__(self, x: np.ndarray):
        return self.engine(x)  # numpy in, numpy out, as the plain sessions are called (no torch on the call path)

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
                seed: int = 0, per_round: dict | None = None) -> dict[str, float]:
    """``stream``: median over ``rounds`` of the mean ms per call in a block of back-to-back calls, configurations
    interleaved. ``before``: name -> a callable run (untimed, one block's worth) right before that configuration's block.
    ``per_round``: filled with name -> each round's block mean."""
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
    if per_round is not None:
        per_round.update(samples)
    return {name: statistics.median(s) for name, s in samples.items()}


def _turn(run, x: np.ndarray, calls: int, gap_ms: float) -> dict:
    """One ``isolated`` turn of one engine: an untimed call, then ``calls`` calls each ``gap_ms`` after the previous one;
    the calls' ms and the turn's start and end (``perf_counter``: one clock for every process on the machine)."""
    start = _clock()
    run(x)  # the request before: in isolated use the previous request was one gap ago
    ms = []
    for _ in range(calls):
        _sleep(gap_ms / 1000)
        ms.append(_timed(run, x))
    return {"ms": ms, "start": start, "end": _clock()}


def time_isolated(workers: dict, rounds: int, calls: int, gap_ms: float, settle_ms: float, seed: int = 0,
                  per_round: dict | None = None, failed: dict | None = None) -> dict[str, float]:
    """``isolated``: each configuration in a process of its own (``worker_processes``); per round, in a shuffled order,
    one worker at a time takes a turn (``_turn``) while the others idle, ``settle_ms`` apart. Returns name -> the median
    call over all turns; ``per_round``: filled with name -> each turn's median. A worker whose turn fails (it raised,
    died or stopped answering) is closed and dropped with all its figures, so every figure left has all its rounds;
    ``failed``: filled with name -> the one-line reason."""
    samples: dict[str, list[float]] = {name: [] for name in workers}
    rounds_of: dict[str, list[float]] = {name: [] for name in workers}
    order = list(workers)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in list(order):
            _sleep(settle_ms / 1000)  # longer than ONNX Runtime spins after the previous turn, whichever process ran it
            try:
                ms = workers[name].turn(calls, gap_ms)
            except WorkerFailed as e:
                workers[name].close(timeout=1.0)  # a worker that hangs must not compute beside the next turns
                order.remove(name)
                del samples[name], rounds_of[name]
                if failed is not None:
                    failed[name] = str(e)
                continue
            samples[name] += ms
            rounds_of[name].append(statistics.median(ms))
    if per_round is not None:
        per_round.update(rounds_of)
    return {name: statistics.median(s) for name, s in samples.items()}


def time_shared(runs: dict, neighbour, x: np.ndarray, rounds: int, calls: int, gap_ms: float,
                seed: int = 0, per_round: dict | None = None) -> tuple[dict[str, tuple[float, float, float]], float]:
    """``shared``: each configuration X alternates with ``neighbour`` N, X, N, X, N, ... (one untimed pair, then ``calls``
    timed pairs per round, configurations and N's own run in a shuffled order). Returns name -> (X's median ms, N's
    median ms right after X, cost = median(X + N after it) - N undisturbed), and N undisturbed: the lowest of N's
    medians after its own call and after each configuration. ``per_round``: filled with name -> each round's cost (the
    median of that round's pairs minus N undisturbed, at least half X's own median)."""
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
    if per_round is not None:
        for name in runs:  # each configuration's pairs were appended round by round, ``calls`` at a time
            pairs = [a + b for a, b in zip(own[name], after[name])]
            # X's own call is part of every pair, so a round whose pairs dip below N undisturbed (a tiny X beside a noisy
            # N at batch 1) is noise, not a cost near 0: a floor near 0 put ratios near 1e6 into the bootstrap. Half X's
            # own median bounds such a round's ratio and still leaves room for a real dip.
            floor = 0.5 * statistics.median(own[name])
            per_round[name] = [max(floor, statistics.median(pairs[i:i + calls]) - alone) for i in range(0, len(pairs), calls)]
    return {name: (statistics.median(own[name]), statistics.median(after[name]),
                   statistics.median(a + b for a, b in zip(own[name], after[name])) - alone) for name in runs}, alone


def ratio_interval(best: list[float], fastest: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mmdeploy's best over the fastest: the median of the per-round ratios (the two timed in the same round) and its
    95% bootstrap interval, rounds resampled with replacement (numpy Generator seeded with ``seed``)."""
    ratios = np.asarray(best, dtype=float) / np.asarray(fastest, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    low, high = np.percentile(np.median(ratios[picks], axis=1), [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


def ratio_text(ratio: tuple[float, float, float] | None) -> str:
    """``1.03 [0.99-1.07]``; ``1.00`` alone (``None``) where mmdeploy's best is the fastest."""
    return "1.00" if ratio is None else f"{ratio[0]:.2f} [{ratio[1]:.2f}-{ratio[2]:.2f}]"


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


def _configurations(bundle, size: int, batch: int, precisions: list[str]) -> dict[str, dict]:
    """name -> what opens that configuration (``_open``): the plain ones by file, mmdeploy's by bundle, engine and
    precision; small JSON-able dicts, so a worker process can open one by itself."""
    cell = {"size": size, "batch": batch}
    plain, mine = {}, {}
    for p in precisions:
        onnx, ov = _files(bundle, size, p)
        if onnx:
            plain[f"ort-default {p}"] = {**cell, "kind": "ort", "path": str(onnx), "spin": True}
            plain[f"ort-nospin {p}"] = {**cell, "kind": "ort", "path": str(onnx), "spin": False}
            mine[f"mmdeploy ort {p}"] = {**cell, "kind": "mmdeploy", "bundle": str(bundle.root), "engine": "ort", "precision": p}
        if ov:
            plain[f"ov-default {p}"] = {**cell, "kind": "ov", "path": str(ov), "throughput": False}
            if batch > 1:
                plain[f"ov-throughput {p}"] = {**cell, "kind": "ov", "path": str(ov), "throughput": True}
            mine[f"mmdeploy ov {p}"] = {**cell, "kind": "mmdeploy", "bundle": str(bundle.root), "engine": "ov", "precision": p}
    return {**plain, **mine}


def _open(spec: dict, bundle=None) -> tuple:
    """One configuration from its ``_configurations`` entry: (a callable run, a note for the table)."""
    size, batch = spec["size"], spec["batch"]
    if spec["kind"] == "ort":
        return OrtPlain(Path(spec["path"]), spin=spec["spin"]), ""
    if spec["kind"] == "fake":
        return _FakeRun(spec.get("fail_on_call")), "fake"
    if spec["kind"] == "ov":
        run = OvPlain(Path(spec["path"]), size, batch, throughput=spec["throughput"])
        return run, (f"{len(run.requests)} requests, {run.precision}" if spec["throughput"] else f"runs {run.precision}")
    if bundle is None:
        from mmdeploy.bundle import Bundle

        bundle = Bundle.open(spec["bundle"])
    run = Mmdeploy(bundle, spec["engine"], size, spec["precision"], batch)
    return run, f"tuned: {run.settings}"


class _FakeRun:
    """Tests only (kind ``fake``, never made by ``_configurations``): returns its input, and raises from its
    ``fail_on_call``-th call on, a configuration that fails mid-run."""

    def __init__(self, fail_on_call: int | None):
        self.fail_on_call, self.calls = fail_on_call, 0

    def __call__(self, x: np.ndarray):
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError(f"fake failure\non call {self.calls}")
        return x


def _close(run) -> None:
    if hasattr(run, "close"):
        run.close()


# ----------------------------------------------------------------------------- isolated: one process per configuration


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _serve() -> None:
    """Worker mode (``--worker``): reads one configuration (a ``_configurations`` entry, one JSON line) on stdin, opens
    and warms it, answers ``{"note": ...}`` or ``{"error": "one line"}``; then answers each ``{"calls", "gap_ms"}`` line
    with a ``_turn``, or ``{"error": "one line"}`` where the turn raised, until stdin closes."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the libraries print goes to stderr, never into the replies
    sys.stdout = sys.stderr

    def reply(answer: dict) -> None:
        replies.write(json.dumps(answer) + "\n")
        replies.flush()

    run = None
    try:
        spec = json.loads(sys.stdin.readline() or "{}")
        try:
            run, note = _open(spec)
            x = _inputs(spec["size"], spec["batch"])
            _warm({"it": run}, x)
        except Exception as e:  # any failure to open is this configuration's, reported in one line
            reply({"error": _one_line(e)})
            return
        reply({"note": note})
        for line in iter(sys.stdin.readline, ""):
            ask = json.loads(line)
            try:
                answer = _turn(run, x, int(ask["calls"]), float(ask["gap_ms"]))
            except Exception as e:  # a run failing mid-turn is this configuration's too: the parent drops it
                answer = {"error": _one_line(e)}
            reply(answer)
    except (KeyboardInterrupt, BrokenPipeError):
        pass  # the parent is gone or stopping: just end
    finally:
        if run is not None:
            _close(run)


class WorkerFailed(Exception):
    """A worker could not open its configuration, or stopped answering; the message names the configuration."""


class _Worker:
    """The parent's end of one configuration's process: one JSON line asked, one answered (``_serve``)."""

    def __init__(self, name: str, spec: dict):
        self.name, self.note, self.spans = name, "", []  # spans: (start, end) of each turn, on the workers' clock
        self.log = tempfile.TemporaryFile()  # the worker's stderr, for the last line when it dies
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)  # the parent's environment, as is
        self._ask(spec)

    def _ask(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: _answer says how

    def _answer(self, timeout: float) -> dict:
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        line = self.proc.stdout.readline() if ready else ""
        if not ready:
            raise WorkerFailed(f"{self.name}: no answer in {timeout:.0f} s")
        if not line:
            self.log.seek(0)
            last = (self.log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
            raise WorkerFailed(f"{self.name}: its process ended (exit {self.proc.wait()}) {last}".strip())
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerFailed(f"{self.name}: {answer['error']}")
        return answer

    def opened(self, timeout: float = 600.0) -> str:
        self.note = self._answer(timeout)["note"]
        return self.note

    def turn(self, calls: int, gap_ms: float, timeout: float = 300.0) -> list[float]:
        self._ask({"calls": calls, "gap_ms": gap_ms})
        answer = self._answer(timeout)
        self.spans.append((answer["start"], answer["end"]))
        return answer["ms"]

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the worker ends at the end of its input
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@contextlib.contextmanager
def worker_processes(specs: dict[str, dict]):
    """Every configuration of ``specs`` opened and warmed in a process of its own (all opening at once: nothing is timed
    yet). Yields (name -> worker, name -> the one-line error of each that could not open); every process has ended
    when the block is left, however it is left (a worker that does not end is killed)."""
    started = []
    try:
        for name, spec in specs.items():
            started.append(_Worker(name, spec))
        workers, errors = {}, {}
        for worker in started:
            try:
                worker.opened()
                workers[worker.name] = worker
            except WorkerFailed as e:
                errors[worker.name] = str(e)
        yield workers, errors
    finally:
        for worker in started:
            worker.close()


# ----------------------------------------------------------------------------- the harness


def _neighbour(bundle, size: int, batch: int):
    """N of the ``shared`` pattern: OpenVINO's defaults on the fp32 file, else an ONNX Runtime session that does not spin."""
    onnx, ov = _files(bundle, size, "fp32")
    if not (onnx or ov):
        sys.exit(f"usage shared needs an fp32 file at {size} px for the neighbour engine")
    return ("ov-default fp32", OvPlain(ov, size, batch, throughput=False)) if ov else ("ort-nospin fp32", OrtPlain(onnx, spin=False))


def _time_as(usage: str, specs: dict, args, bundle, size: int, batch: int, notes: dict, per_round: dict, opened: dict):
    """Every configuration's figure in ``usage``'s pattern, and its unit; each one's round figures into ``per_round``;
    what was opened in this process into ``opened`` (isolated: nothing); for ``shared``, what makes up each cost and
    for ``isolated``, the configurations that could not open or failed mid-run go into ``notes``."""
    seed = size * 1000 + batch
    if usage == "isolated":
        with worker_processes(specs) as (workers, errors):
            notes.update({name: w.note for name, w in workers.items()})
            ms = time_isolated(workers, args.rounds, args.calls, args.gap_ms, args.block_gap_ms, seed=seed,
                               per_round=per_round, failed=errors)
            notes.update({name: f"NOT TIMED: {error}" for name, error in errors.items()})
            return ms, "ms"
    for name, spec in specs.items():
        opened[name], notes[name] = _open(spec, bundle)
    x = _inputs(size, batch)
    if usage == "stream":
        return time_blocks(opened, x, args.rounds, args.block_ms, args.block_gap_ms, seed=seed, per_round=per_round), "ms"
    n_name, neighbour = _neighbour(bundle, size, batch)
    pairs, alone = time_shared(opened, neighbour, x, args.rounds, args.calls, args.gap_ms, seed=seed, per_round=per_round)
    for name, (own, after, _) in pairs.items():
        notes[name] = f"own {own:.3f} + {n_name} after it {after:.3f} - N undisturbed {alone:.3f}  {notes.get(name, '')}"
    # at least half X's own median, as each round's figure (time_shared): X's call is part of every pair it is charged
    return {name: max(0.5 * own, cost) for name, (own, _, cost) in pairs.items()}, "ms cost"


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
    if sys.argv[1:] == ["--worker"]:
        _serve()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-ms", type=float, default=5.0)
    ap.add_argument("--gap-ms", type=float, default=10.0,
                    help="isolated: idle ms before each call, after the previous call of the same configuration (its own "
                         "process); shared: idle ms between pairs")
    ap.add_argument("--block-gap-ms", type=float, default=50.0,
                    help="idle ms between blocks (stream) and between two processes' turns (isolated): longer than ONNX "
                         "Runtime spins")
    ap.add_argument("--calls", type=int, default=5,
                    help="isolated: timed calls per configuration and round (one turn of its process, after one untimed "
                         "call); shared: pairs per configuration and round")
    ap.add_argument("--usage", choices=["stream", "isolated", "shared"],
                    help="how the first table times every configuration (default: the usage the bundle was tuned for): "
                         "stream and shared in this process, isolated with each configuration in a process of its own, "
                         "one process computing at a time")
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
               "isolated": f"each configuration in a process of its own, one computing at a time, turns "
                           f"{args.block_gap_ms} ms apart; per turn 1 untimed + {args.calls} calls, each {args.gap_ms} ms "
                           f"after the previous call of the same configuration",
               "shared": f"{args.calls} pairs (X, neighbour) per round"}[usage]
    print(f"bundle {bundle.root}, tuned for usage {tuned or '(not recorded)'}; timed as usage {usage} ({why}): {pattern}; "
          f"rounds {args.rounds}")
    print("ratio: the median over rounds of mmdeploy best / fastest timed in the same round [95% bootstrap interval]\n")
    summary, layout = [], []
    for size, batch in cells:
        specs = _configurations(bundle, size, batch, args.precisions)
        notes, per_round, opened = {}, {}, {}
        ms, unit = _time_as(usage, specs, args, bundle, size, batch, notes, per_round, opened)
        mine = [name for name in specs if specs[name]["kind"] == "mmdeploy" and name in ms]
        if not mine:
            print(f"== {size} px, batch {batch}: no mmdeploy engine could be timed")
            for name in sorted(notes):
                print(f"   {name:<24} {notes[name]}")
            summary.append((size, batch, None, None))  # its column in the table: "-"
            continue
        fastest = min(ms, key=ms.get)
        best = min(mine, key=lambda n: ms[n])
        ratio = None if best == fastest else ratio_interval(per_round[best], per_round[fastest], seed=size * 1000 + batch)
        print(f"== {size} px, batch {batch}: mmdeploy best {best} {ms[best]:.3f} {unit} / fastest {fastest} {ms[fastest]:.3f} "
              f"{unit} = {ratio_text(ratio)}")
        for name in sorted(ms, key=ms.get):
            print(f"   {name:<24} {ms[name]:9.3f} {unit}  {notes.get(name, '')}")
        for name in sorted(set(notes) - set(ms)):
            print(f"   {name:<24} {notes[name]}")
        summary.append((size, batch, ratio, fastest))
        # shared: each mmdeploy engine with the other runtime's engine of the same precision running right before it
        engines = {name: opened.get(name) or _open(specs[name], bundle)[0] for name in mine}
        x = _inputs(size, batch)
        for name, m in engines.items():
            kind, p = name.split()[1:]
            other = f"mmdeploy {'ov' if kind == 'ort' else 'ort'} {p}"
            if other in engines:
                shared = time_blocks({name: m}, x, args.rounds, args.block_ms, 0.0, before={name: engines[other]}, seed=batch)
                layout.append((name, size, batch, shared[name]))
        for run in {id(r): r for r in [*opened.values(), *engines.values()]}.values():
            _close(run)

    isolated = {}
    for engine in ("ort", "ov"):
        for p in args.precisions:
            cmd = [sys.executable, __file__, args.bundle, "--sizes", *map(str, sizes), "--batches", *map(str, args.batches),
                   "--rounds", str(args.rounds), "--block-ms", str(args.block_ms), "--isolated-child", engine, p]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    isolated[(f"mmdeploy {engine} {p}", key)] = value

    print(f"\nmmdeploy's best point / fastest configuration of any kind, timed as usage {usage} "
          f"(median ratio over rounds [95% bootstrap interval])")
    print("\n".join(summary_table(sizes, args.batches, summary)))
    print(f"\n{count_line([r for (_, _, r, _) in summary])}")
    print("\nprocess layout: each tuned engine's ms per call, isolated (own process) vs shared (another engine's block right before)")
    print("| engine | size | batch | isolated ms | shared ms | shared / isolated |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s, b, shared in layout:
        iso = isolated.get((name, f"{s}/{b}"))
        print(f"| {name} | {s} | {b} | {iso:.3f} | {shared:.3f} | {shared / iso:.2f} |" if iso else f"| {name} | {s} | {b} | - | {shared:.3f} | - |")
    print(f"\nafter: {load_line()}; {others_line(started)}")


def summary_table(sizes: list[int], batches: list[int], summary: list[tuple]) -> list[str]:
    """The markdown table, a row per size and a column per batch, from ``summary``'s (size, batch, ratio, fastest):
    ``ratio_text``, with the fastest named where the median is above 1.05; ``-`` where the cell was skipped (fastest
    ``None``: no mmdeploy engine could be timed) or is missing, so no later batch shifts into its column."""
    cells = {(size, batch): (ratio, fastest) for size, batch, ratio, fastest in summary}
    lines = ["| size | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---:|" + "---:|" * len(batches)]
    for s in sizes:
        row = []
        for b in batches:
            ratio, fastest = cells.get((s, b), (None, None))
            row.append("-" if fastest is None else ratio_text(ratio) + (f" ({fastest})" if ratio and ratio[0] > 1.05 else ""))
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return lines


def count_line(ratios: list, limit: float = 1.05) -> str:
    """The two counts under the table: cells whose interval lies above ``limit`` (the honest failures) and cells whose
    median is above it but whose interval reaches it or below (within noise). ``None``: mmdeploy's best is the fastest."""
    above = sum(1 for r in ratios if r and r[1] > limit)
    noise = sum(1 for r in ratios if r and r[0] > limit and r[1] <= limit)
    return (f"cells whose interval lies above {limit:.2f}: {above}\n"
            f"cells whose median is above {limit:.2f} but whose interval reaches {limit:.2f} or below: {noise}")


if __name__ == "__main__":
    main()
