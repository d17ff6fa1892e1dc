"""Typed results shared by eval, bench and report. The report step takes only these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PointKey:
    """One deployable point: an input size, an engine and a numeric precision; ``batch`` is
    set where a figure depends on it (latency), None where it does not (accuracy, the front)."""

    size: int
    engine: str  # a registered engine's name (mmdeploy/engines/registry.py)
    precision: str  # "fp32", "fp16"
    batch: int | None = None

    @property
    def label(self) -> str:
        return f"{self.size}/{self.engine}/{self.precision}" + ("" if self.batch is None else f"/b{self.batch}")


@dataclass
class AccuracyResult:
    size: int
    engine: str
    precision: str
    top1: float  # percent
    top5: float  # percent
    images: int
    calibrated: bool = True  # False: the checkpoint's own BN statistics
    correct: str = ""  # which images top-1 got right (mmdeploy.stats.pack_correct); "" if not recorded
    image_set: str = ""  # which images, in which order (equal keys: per-image results line up)
    top1_ci: list[float] | None = None  # 95% Wilson interval of top1, percent (set from top1 and images)

    def __post_init__(self):
        if self.top1_ci is None and self.images > 0:
            from mmdeploy.stats import top1_interval

            self.top1_ci = list(top1_interval(self.top1, self.images))

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
    policy: dict = field(default_factory=dict)  # mmdeploy.latency.threads.ThreadPolicy as a dict: threads, spinning, source
    reliable: bool = True  # False: measured while the machine was busy, or too spread out (see noise)
    noise: dict = field(default_factory=dict)  # spread p90/p50, others' CPU share, load average, passes
    p50_ci_ms: list[float] | None = None  # 95% order-statistic interval of the median (mmdeploy.stats.median_interval)

    @property
    def key(self) -> PointKey:
        """The point this latency belongs to (batch-free, to pair it with an accuracy)."""
        return PointKey(self.size, self.engine, self.precision)

    @property
    def batch_key(self) -> PointKey:
        return PointKey(self.size, self.engine, self.precision, self.batch)


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
