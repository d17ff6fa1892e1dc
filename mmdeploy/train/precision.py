"""``mmdeploy train --precision auto``: which precision trains faster here, decided by measurement.

bf16 autocast is not faster on every CPU that supports bf16 natively. On a 2-core AVX512-BF16 AMD EPYC, a cifar_resnet20
train step ran about 1.5x faster in bf16 than in fp32. On an Intel Xeon with AVX512-BF16 and without AMX, the same step
ran 1.34x *slower* (238 vs 177 ms per batch of 64 on one thread). So ``auto`` does this:

- On CUDA it takes bf16.
- On a CPU without native bf16 it takes fp32; emulated bf16 is always slower.
- On a CPU with native bf16 it times a few real train steps in both precisions, interleaved, on a copy of the model. It
  takes bf16 only when bf16 is at least ``BF16_MARGIN`` faster: bf16 also costs precision, so it must win clearly.
- A resumed run keeps the precision its checkpoint trained in when the device type is the same, so a resume stays
  exact.

The measured choice is kept in the per-user cache (``$MMDEPLOY_CACHE_DIR``; see mmdeploy.filehash), keyed by the CPU,
the thread count, the torch version, the architecture, the regime and the batch. The cache is a convenience and never an
authority: an entry that is malformed is ignored, and it is measured again.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mmdeploy.errors import MMDeployError

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MARGIN = 0.95  # bf16 is chosen when its median step time is under 0.95x fp32's
CACHE_NAME = "train-precision-v1.json"
_VERSION = 1


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 or bf16
    reason: str  # one line, for the log and the checkpoint
    fp32_ms: float | None = None  # median measured step time, where measured
    bf16_ms: float | None = None

    def to_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason, "fp32_ms": self.fp32_ms, "bf16_ms": self.bf16_ms}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise MMDeployError(f"unknown precision {precision!r}", "use --precision auto, fp32 or bf16")


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(
    precision: str,
    device: torch.device,
    *,
    resumed: dict | None = None,
    cache_key: str = "",
    time_steps: Callable[[str], float] | None = None,
    rounds: int = 3,
) -> PrecisionChoice:
    """Decide the training precision (see the module docstring).

    ``resumed`` is the checkpoint's ``mmdeploy`` record when resuming. ``time_steps(precision)`` runs the probe's steps
    once in that precision and returns the seconds they took. It is called once per precision untimed first, then
    ``rounds`` times each, alternating which precision goes first.
    """
    check_precision(precision)
    if precision != "auto":
        return PrecisionChoice(precision, f"--precision {precision}")
    if device.type == "cuda":
        return PrecisionChoice("bf16", "auto: bf16 autocast on CUDA")
    if resumed and resumed.get("precision") in ("fp32", "bf16") and _device_type(resumed.get("device")) == device.type:
        return PrecisionChoice(resumed["precision"], f"auto: {resumed['precision']} as the resumed checkpoint trained (keeps the resume exact)")
    if not cpu_has_native_bf16():
        return PrecisionChoice("fp32", "auto: fp32 (this CPU has no native bf16)")
    cached = _read_cache().get(cache_key) if cache_key else None
    if cached is not None:
        return PrecisionChoice(cached["precision"], _measured_reason(cached["fp32_ms"], cached["bf16_ms"], "remembered for this machine"),
                               cached["fp32_ms"], cached["bf16_ms"])
    if time_steps is None:
        return PrecisionChoice("bf16", "auto: bf16 (native on this CPU; not measured)")
    fp32_ms, bf16_ms = measure(time_steps, rounds)
    choice = "bf16" if bf16_ms < BF16_MARGIN * fp32_ms else "fp32"
    if cache_key:
        entries = _read_cache()
        entries[cache_key] = {"precision": choice, "fp32_ms": fp32_ms, "bf16_ms": bf16_ms}
        _write_cache(entries)
    return PrecisionChoice(choice, _measured_reason(fp32_ms, bf16_ms, "measured"), fp32_ms, bf16_ms)


def _device_type(name: object) -> str | None:
    """The device type a checkpoint records (untrusted data: anything unparsable is None)."""
    try:
        return torch.device(str(name)).type
    except (RuntimeError, TypeError, ValueError):
        return None


def measure(time_steps: Callable[[str], float], rounds: int) -> tuple[float, float]:
    """Median milliseconds of the probe in fp32 and in bf16, interleaved (ABBA) so drift hits both."""
    for p in ("fp32", "bf16"):
        time_steps(p)  # untimed: first-call kernel creation
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(max(1, rounds)):
        for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times[p].append(1000.0 * time_steps(p))
    return round(statistics.median(times["fp32"]), 3), round(statistics.median(times["bf16"]), 3)


def _measured_reason(fp32_ms: float, bf16_ms: float, how: str) -> str:
    ratio = bf16_ms / fp32_ms if fp32_ms > 0 else float("inf")
    pick = "bf16" if bf16_ms < BF16_MARGIN * fp32_ms else "fp32"
    return (f"auto: {pick} (probe steps {how}: fp32 {fp32_ms:.1f} ms, bf16 {bf16_ms:.1f} ms, bf16/fp32 {ratio:.2f}; "
            f"bf16 is taken under {BF16_MARGIN:.2f})")


def step_timer(model: torch.nn.Module, run_step: Callable, steps: Sequence, device: torch.device) -> Callable[[str], float]:
    """A ``time_steps`` for ``choose_precision``: ``run_step(model, optimizer, step, autocast)`` over ``steps``, on a copy.

    The copy keeps the run's model, optimizer and RNG untouched. The global RNG is saved and restored around each call.
    """
    made: list = []  # the copy and its optimizer, made at the first call (never, where nothing is measured)

    def autocast_for(p: str):
        if p == "bf16":
            return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext

    def time_steps(p: str) -> float:
        if not made:
            probe = copy.deepcopy(model)
            made.extend([probe, torch.optim.SGD(probe.parameters(), lr=1e-6, momentum=0.9)])
        with torch.random.fork_rng(devices=[]):
            start = time.perf_counter()
            for st in steps:
                run_step(made[0], made[1], st, autocast_for(p))
            return time.perf_counter() - start

    return time_steps


def cache_key(*parts: object) -> str:
    return "|".join(str(p) for p in parts)


def _cache_path():
    from mmdeploy.filehash import cache_dir

    return cache_dir() / CACHE_NAME


def _valid(entry: object) -> bool:
    return (isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16")
            and all(isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool) and entry[k] > 0
                    for k in ("fp32_ms", "bf16_ms")))


def _read_cache() -> dict[str, dict]:
    from mmdeploy.filehash import read_versioned_entries

    return read_versioned_entries(_cache_path(), _VERSION, _valid)


def _write_cache(entries: dict[str, dict]) -> None:
    from mmdeploy.filehash import write_versioned_entries

    write_versioned_entries(_cache_path(), _VERSION, entries)
