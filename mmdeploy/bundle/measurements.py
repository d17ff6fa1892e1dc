"""What a bundle records about measurements: accuracy and latency figures, the bench
environment, tuned engine settings and ``mmdeploy run``'s step keys.

``Measurements`` is a part of ``Bundle`` (its base class), kept in its own module so that
``core`` stays about opening, paths and commits. Field spellings live in ``records``.
"""

from __future__ import annotations

from mmdeploy.bundle import records as rec
from mmdeploy.engines.registry import artifact_of
from mmdeploy.results import AccuracyResult, LatencyResult, PointKey


class Measurements:
    """Typed reads and writes of the figures in a manifest (mixed into ``Bundle``)."""

    manifest: dict

    # -- reading ---------------------------------------------------------------------------
    def point_fingerprint(self, key: PointKey) -> tuple:
        """What a measured figure of ``key`` depends on: the size's calibration and the engine's artifact."""
        if not self.has_size(key.size):
            return ()
        kind = artifact_of(key.engine)
        art = self.artifact(key.size, kind, key.precision) if kind else None
        return (self.size(key.size).calibration.key, art.sha256 if art else None)

    def accuracies(self) -> list[AccuracyResult]:
        out = []
        for s in self.sizes:
            metrics = self._entry(s).get("metrics", {})
            for kind, calibrated in ((rec.ACCURACY, True), (rec.ACCURACY_UNCALIBRATED, False)):
                for label, m in metrics.get(kind, {}).items():
                    k = rec.parse_metric_label(s, label)
                    out.append(AccuracyResult(s, k.engine, k.precision, m["top1"], m["top5"], m["images"], calibrated,
                                              correct=m.get("correct", ""), image_set=m.get("image_set", "")))
        return out

    def latencies(self) -> list[LatencyResult]:
        out = []
        for s in self.sizes:
            for label, m in self._entry(s).get("metrics", {}).get(rec.LATENCY, {}).items():
                k = rec.parse_metric_label(s, label)
                fields = {f: m[f] for f in rec.LATENCY_FIELDS} | {f: m[f] for f in rec.LATENCY_OPTIONAL_FIELDS if f in m}
                out.append(LatencyResult(s, k.engine, k.precision, k.batch, **fields))
        return out

    def accuracy_data_sets(self) -> set[tuple]:
        """(data fingerprint, images) of every stored calibrated accuracy."""
        return {(m.get("data_fingerprint"), m.get("images")) for s in self.sizes
                for m in self._entry(s).get("metrics", {}).get(rec.ACCURACY, {}).values()}

    @property
    def bench_environment(self) -> dict:
        """The machine, versions, thread settings and interference of the last ``mmdeploy bench``."""
        return dict(self.manifest.get(rec.BENCH_ENVIRONMENT, {}))

    @property
    def engine_settings(self) -> dict:
        """What ``mmdeploy bench --tune`` chose (read through ``mmdeploy.latency.settings.stored_policy``); {} if never tuned."""
        settings = self.manifest.get(rec.ENGINE_SETTINGS, {})
        return dict(settings) if isinstance(settings, dict) else {}

    def step_key(self, step: str) -> str | None:
        return self.manifest.get(rec.RUN_STEPS, {}).get(step)

    # -- writing ---------------------------------------------------------------------------
    def _forget_metrics(self, size: int, engine: str, precision: str) -> None:
        metrics = self._entry(size).get("metrics", {})
        metrics.get(rec.ACCURACY, {}).pop(rec.metric_label(PointKey(size, engine, precision)), None)
        latency = metrics.get(rec.LATENCY, {})
        for label in [k for k in latency if k.startswith(f"{engine}/{precision}/")]:
            del latency[label]

    def record_accuracy(self, r: AccuracyResult, data: str, data_fingerprint: str) -> None:
        kind = rec.ACCURACY if r.calibrated else rec.ACCURACY_UNCALIBRATED
        metrics = self._entry(r.size).setdefault("metrics", {}).setdefault(kind, {})
        metrics[rec.metric_label(r.key)] = {"top1": r.top1, "top5": r.top5, "images": r.images, "data": str(data), "data_fingerprint": data_fingerprint,
                                            # per-image top-1 (a bitset) and which images: paired comparisons (mmdeploy.stats)
                                            **({"image_set": r.image_set, "correct": r.correct} if r.correct else {})}

    def record_latency(self, r: LatencyResult) -> None:
        entry = self._entry(r.size).setdefault("metrics", {}).setdefault(rec.LATENCY, {})
        entry[rec.metric_label(r.batch_key)] = {k: v for k, v in r.__dict__.items() if k not in ("size", "engine", "precision")}

    def set_bench_environment(self, env: dict) -> None:
        self.manifest[rec.BENCH_ENVIRONMENT] = env

    def set_engine_settings(self, settings: dict) -> None:
        self.manifest[rec.ENGINE_SETTINGS] = settings

    def set_step_key(self, step: str, key: str) -> None:
        self.manifest.setdefault(rec.RUN_STEPS, {})[step] = key
