"""Thread policies: how many intra-op threads an engine runs and whether its idle workers spin.

Every latency figure records the policy it was measured under. The torch reference runs one
intra-op thread on the CPU by default: measured on this project's 2-core machine with a
training job beside it, two OpenMP threads collapsed (p50 25.6 ms, p90 306 ms at 16 px, batch 1)
while one thread stayed near its quiet latency (p50 2.4 ms): a parallel region waits for its
slowest thread, and on an oversubscribed core that thread is descheduled for whole time slices.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, taskset), not the host's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPolicy:
    """Intra-op threads and spin-waiting of one engine; ``source`` says who chose it."""

    threads: int
    spinning: bool
    source: str = "default"  # "default", "tuned" (mmdeploy bench --tune) or "env"
    streams: int = 1  # OpenVINO: a batch split over this many streams side by side (1: one stream, latency hint)
    # "": threads/spinning/streams above are set explicitly. "default": the library's own defaults, no thread, spinning
    # or hint option at all (what a user who never heard of tuning gets). "throughput": OpenVINO's throughput hint
    # alone, the batch split over the infer requests it asks for. ``threads``/``streams`` are then only recorded.
    preset: str = ""
    # OpenVINO int8: "" pins the non-quantized parts to f32; "cpu" leaves OpenVINO's default for the CPU (bf16 where native).
    precision_hint: str = ""

    @property
    def label(self) -> str:
        hint = " cpu precision" if self.precision_hint == "cpu" else ""
        if self.preset:
            return f"{self.preset}{hint}"
        return (f"{self.threads}t{' spin' if self.spinning else ''}{f' {self.streams} streams' if self.streams > 1 else ''}{hint}"
                + ("" if self.source == "tuned" else f" ({self.source})"))

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("preset", "precision_hint"):  # written only when set: untouched policies keep their old form
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> ThreadPolicy:
        threads, spinning, streams = data.get("threads"), data.get("spinning"), data.get("streams", 1)
        preset, hint = data.get("preset", ""), data.get("precision_hint", "")
        counts_ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (threads, streams))
        if not counts_ok or not isinstance(spinning, bool) or preset not in PRESETS or hint not in ("", "cpu"):
            raise ValueError(f"not a thread policy: {data!r}")
        return cls(threads, spinning, source or str(data.get("source", "default")), streams, preset, hint)


PRESETS = ("", "default", "throughput")


def torch_policy() -> ThreadPolicy:
    """The torch reference's policy: one thread on the CPU unless MMDEPLOY_TORCH_THREADS says otherwise.

    With one thread there is no worker to spin. With more, libgomp spins briefly before sleeping
    unless OMP_WAIT_POLICY=passive (read once when the OpenMP runtime starts, so it is reported, not set).
    """
    raw = os.environ.get("MMDEPLOY_TORCH_THREADS", "")
    threads = int(raw) if raw.isdigit() and int(raw) > 0 else 1
    spinning = threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").lower() != "passive"
    return ThreadPolicy(threads, spinning, "env" if raw else "default")


def ov_default_policy() -> ThreadPolicy:
    """OpenVINO before tuning: all usable cores; large batches split over one stream per core."""
    return ThreadPolicy(usable_cores(), False, "default", usable_cores())


def ort_default_policy() -> ThreadPolicy:
    """ONNX Runtime before tuning: all usable cores, no spinning (spinning steals the CPU from whatever runs next)."""
    return ThreadPolicy(usable_cores(), False, "default")


class TorchThreads:
    """Holds torch's intra-op thread count at a policy while any engine using it is active.

    ``torch.set_num_threads`` is process-wide: the count is set on the first activation and the
    user's own count restored after the last deactivation, so engines may overlap.
    """

    _active = 0
    _saved = 0

    @classmethod
    def acquire(cls, threads: int) -> None:
        if cls._active == 0:
            cls._saved = torch.get_num_threads()
        cls._active += 1
        cls.use(threads)

    @staticmethod
    def use(threads: int) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    @classmethod
    def release(cls) -> None:
        cls._active = max(0, cls._active - 1)
        if cls._active == 0 and cls._saved:
            cls.use(cls._saved)
