"""Typed results shared by eval, bench and report. The report step takes only these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PointKey:
    """One deployable point: an input size, an engine and a numeric precision."""

    size: int
    engine: str  # "torch", "ort", "trt"
    precision: str  # "fp32", "fp16"

    @property
    def label(self) -> str:
        return f"{self.size}/{self.engine}/{self.precision}"


@dataclass
class AccuracyResult:
    size: int
    engine: str
    precision: str
    top1: float  # percent
    top5: float  # percent
    images: int
    calibrated: bool = True  # False: the checkpoint's own BN statistics

    @property
    def key(self) -> PointKey:
        return PointKey(self.size, self.engine, self.precision)


@dataclass
class LatencyResult:
    size: int
    engine: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # images per second at p50
    iters: int
    device: str = "cpu"
    threads: int = 0
    policy: dict = field(default_factory=dict)  # mmdeploy.threads.ThreadPolicy as a dict: threads, spinning, source
    reliable: bool = True  # False: measured while the machine was busy, or too spread out (see noise)
    noise: dict = field(default_factory=dict)  # spread p90/p50, others' CPU share, load average, passes

    @property
    def key(self) -> PointKey:
        return PointKey(self.size, self.engine, self.precision)


@dataclass
class Point:
    """A point of the accuracy/latency plane: what the Pareto front and the CI gate compare."""

    size: int
    engine: str
    precision: str
    batch: int
    top1: float
    latency_ms: float  # p50
    relative_latency: float = float("nan")  # latency / reference point's latency, same run
    on_front: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> PointKey:
        return PointKey(self.size, self.engine, self.precision)

    def to_dict(self) -> dict:
        return asdict(self)
