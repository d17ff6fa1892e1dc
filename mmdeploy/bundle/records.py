"""Typed records of a bundle's ``manifest.json`` and the only place its keys are spelled.

The manifest stays plain JSON on disk (docs/bundle.md); these frozen dataclasses are what
the rest of mmdeploy reads. Each record keeps its whole JSON object in ``fields`` so that
fields a newer writer added survive a read-modify-write by this version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmdeploy.engines.registry import ONNX_ARTIFACT, OV_ARTIFACT, TRT_ARTIFACT
from mmdeploy.results import PointKey

# Artifact kinds (ov: an OpenVINO-gated entry that reads the per-size ONNX); which engine runs which is the engine registry's.
ONNX, TRT, OV = ONNX_ARTIFACT, TRT_ARTIFACT, OV_ARTIFACT
ACCURACY, ACCURACY_UNCALIBRATED, LATENCY = "accuracy", "accuracy_uncalibrated", "latency"
LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "iters", "device", "threads")
LATENCY_OPTIONAL_FIELDS = ("policy", "reliable", "noise", "p50_ci_ms")  # bundles benched before noise detection / intervals lack them
# Bundle-wide entries besides source, preprocess, sizes and dynamic.
BENCH_ENVIRONMENT, ENGINE_SETTINGS, RUN_STEPS = "bench_environment", "engine_settings", "run_steps"


def artifact_label(kind: str, precision: str) -> str:
    """The key of an artifact in ``sizes.<S>.artifacts`` or ``dynamic``: ``onnx/fp16``, ``trt/fp32``."""
    return f"{kind}/{precision}"


def metric_label(key: PointKey) -> str:
    """``engine/precision`` for accuracy, ``engine/precision/b<batch>`` for latency."""
    return f"{key.engine}/{key.precision}" + ("" if key.batch is None else f"/b{int(key.batch)}")


def parse_metric_label(size: int, label: str) -> PointKey:
    parts = label.split("/")
    batch = int(parts[2][1:]) if len(parts) == 3 else None
    return PointKey(size, parts[0], parts[1], batch)


@dataclass(frozen=True)
class SourceRecord:
    """The checkpoint a bundle was made from, and where its own weights are kept."""

    arch: str
    sha256: str  # of the checkpoint file
    weights: str  # bundle-relative
    weights_sha256: str | None  # None in bundles written before it was recorded
    arch_kwargs: dict
    fields: dict

    @classmethod
    def from_dict(cls, d: dict) -> SourceRecord:
        return cls(d["arch"], d["sha256"], d["weights"], d.get("weights_sha256"), dict(d.get("arch_kwargs", {})), dict(d))

    @property
    def classes(self) -> object:
        """The class names ``calibrate`` recorded (unchecked: ``mmdeploy.classes`` validates them)."""
        return self.fields.get("classes")


@dataclass(frozen=True)
class CalibrationRecord:
    """How one size's BN statistics were made; ``key`` decides reuse."""

    key: str
    data: str | None
    data_fingerprint: str | None
    images: int | None
    fields: dict

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationRecord:
        return cls(d.get("key", ""), d.get("data"), d.get("data_fingerprint"), d.get("images"), dict(d))


@dataclass(frozen=True)
class ArtifactRecord:
    """A deployable file: an ONNX graph (``path``) or a TensorRT plan (``plan``)."""

    kind: str
    precision: str
    file: str  # bundle-relative
    sha256: str | None
    key: str | None  # reuse key of the step that made it
    fields: dict

    @classmethod
    def from_dict(cls, label: str, d: dict) -> ArtifactRecord:
        kind, precision = label.split("/", 1)
        return cls(kind, precision, d.get("path") or d.get("plan") or "", d.get("sha256") or d.get("plan_sha256"), d.get("key"), dict(d))

    @property
    def static_batch(self) -> int | None:
        return self.fields.get("static_batch")

    @property
    def bn_statistics(self) -> str | None:
        return self.fields.get("bn_statistics")

    @property
    def cache_dir(self) -> str | None:
        """An ov entry's model cache folder (bundle-relative)."""
        return self.fields.get("cache_dir")


@dataclass(frozen=True)
class SizeRecord:
    size: int
    weights: str
    weights_sha256: str | None
    calibration: CalibrationRecord
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)  # by artifact_label

    @classmethod
    def from_dict(cls, size: int, d: dict) -> SizeRecord:
        arts = {label: ArtifactRecord.from_dict(label, a) for label, a in d.get("artifacts", {}).items()}
        return cls(size, d["weights"], d.get("weights_sha256"), CalibrationRecord.from_dict(d["calibration"]), arts)

    def artifact(self, kind: str, precision: str) -> ArtifactRecord | None:
        return self.artifacts.get(artifact_label(kind, precision))


def file_fields(d: dict) -> list[str]:
    """The manifest fields of a record that name bundle files."""
    return [k for k in ("weights", "path", "plan") if k in d]


def referenced_files(manifest: dict) -> set[str]:
    """Every bundle-relative file a manifest points to: weights, ONNX files, TensorRT plans."""
    return {rel for _, rel in _path_fields(manifest, folders=False) if isinstance(rel, str)}


_FOLDER_FIELDS = ("cache_dir",)  # artifact fields that name bundle folders (ov's model cache)


def _path_fields(manifest: dict, folders: bool = True):
    """(where, value) of every path field of a manifest (files, and with ``folders`` folders too), for checks and for the sweep."""
    source = manifest.get("source", {})
    if isinstance(source, dict) and "weights" in source:
        yield "source.weights", source["weights"]
    for label, art in (manifest.get("dynamic") or {}).items():
        if isinstance(art, dict):
            for k in file_fields(art):
                yield f"dynamic.{label}.{k}", art[k]
    for size, entry in (manifest.get("sizes") or {}).items():
        if not isinstance(entry, dict):
            continue
        if "weights" in entry:
            yield f"sizes.{size}.weights", entry["weights"]
        for label, art in (entry.get("artifacts") or {}).items():
            if isinstance(art, dict):
                for k in file_fields(art) + ([f for f in _FOLDER_FIELDS if f in art] if folders else []):
                    yield f"sizes.{size}.artifacts.{label}.{k}", art[k]
