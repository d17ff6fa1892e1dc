"""The deployment bundle: a folder whose ``manifest.json`` is the single source of truth.

``Bundle`` alone reads and writes the manifest (format: docs/bundle.md); other modules use its
typed records (``mmdeploy.bundle.records``) and mutators. Paths read from a manifest must stay
inside the bundle, and files are used only when their recorded sha256 matches. Writers hold the
bundle's lock (``mmdeploy.bundle.lock``) for a read-modify-write of the manifest; the atomic
rename of ``manifest.json`` is the single commit point, and files the manifest no longer lists
are swept afterwards under the same lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: reading a bundle (report, gate) must not import torch
    import torch

from mmdeploy.bundle import records as rec
from mmdeploy.bundle.files import TEMP_SUFFIX, atomic_write_text, cached_sha256
from mmdeploy.bundle.lock import bundle_lock, sweep
from mmdeploy.bundle.measurements import Measurements
from mmdeploy.bundle.validate import MANIFEST, check_writable_dir, manifest_problem
from mmdeploy.engines.registry import engines_of_artifact
from mmdeploy.errors import MMDeployError

SCHEMA = "mmdeploy.bundle"
SCHEMA_VERSION = 1
_REMAKE = "re-run `mmdeploy calibrate` into a new folder"
MAX_PATH_CHARS = 1024  # a bundle-relative path; longer ones are edits, not mmdeploy's names


def _listed_on_disk(root: Path) -> set[str]:
    """The files the manifest now in ``root`` lists (none if there is no readable one)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        return rec.referenced_files(manifest) if isinstance(manifest, dict) else set()
    except (OSError, ValueError, TypeError, AttributeError):
        return set()


def _shown(text: str, limit: int = 60) -> str:
    """A manifest value quoted for a one-line message (a 5,000-character path is cut)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


class Bundle(Measurements):
    """An open bundle. ``Bundle.open`` validates; ``Bundle.create`` starts a new manifest;
    ``Bundle.update`` is the locked read-modify-write every writer uses. The figures it holds
    (accuracy, latency, settings, step keys) are read and written through ``Measurements``."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest  # the raw JSON; read it through the accessors below
        self._committed: set[str] = set()  # files the manifest on disk lists (never overwritten)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise MMDeployError(f"{root} is not a bundle (no {MANIFEST})", "make one with `mmdeploy calibrate CKPT --out DIR`")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MMDeployError(f"{path} is corrupt ({exc})", _REMAKE) from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise MMDeployError(f"{path} is not an mmdeploy manifest", _REMAKE)
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            raise MMDeployError(
                f"bundle {root} has schema version {version} (made by mmdeploy {manifest.get('mmdeploy_version', '?')}); this mmdeploy reads version {SCHEMA_VERSION}",
                "upgrade mmdeploy to read it" if newer else "re-run `mmdeploy calibrate` with this version, or use the mmdeploy that made it",
            )
        for key in ("source", "preprocess", "sizes"):
            if key not in manifest:
                raise MMDeployError(f"{path} lacks {key!r}", _REMAKE)
        problem = manifest_problem(manifest)
        if problem:
            raise MMDeployError(f"{path} is not a valid bundle manifest: {problem}", _REMAKE)
        from mmdeploy.models.trust import authorize_arch

        authorize_arch(manifest["source"]["arch"], manifest["source"].get("arch_kwargs", {}), source=str(path))  # a manifest is data
        bundle = cls(root, manifest)
        for where, rel in rec._path_fields(manifest):
            bundle._confined(rel, where)
            bundle._in_own_folder(rel, where)
        bundle._committed = rec.referenced_files(manifest)
        return bundle

    @staticmethod
    def is_bundle(path: str | Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(cls, root: Path, source: dict, preprocess: dict, training_size: int) -> Bundle:
        from mmdeploy.version import __version__

        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "mmdeploy_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source,
            "preprocess": preprocess,
            "training_size": training_size,
            "sizes": {},
            "dynamic": {},
        }
        bundle = cls(Path(root), manifest)
        bundle._committed = _listed_on_disk(Path(root))  # starting over: the old manifest's files stay until this one commits
        return bundle

    @classmethod
    @contextlib.contextmanager
    def update(cls, root: str | Path) -> Iterator[Bundle]:
        """Lock the bundle, read its current manifest, let the caller change it, then commit."""
        with bundle_lock(root):
            bundle = cls.open(root)
            yield bundle
            bundle.commit()

    # -- paths and integrity ---------------------------------------------------------------
    def _confined(self, rel: object, where: str) -> Path:
        """``root/rel`` if ``rel`` is a relative path without ``..`` that resolves (after symlinks) inside the bundle."""
        if isinstance(rel, str) and ("\0" in rel or len(rel) > MAX_PATH_CHARS or any(len(p.encode()) > 255 for p in rel.split("/"))):
            what = "has a NUL byte" if "\0" in rel else f"is {len(rel)} characters long (a bundle path is at most {MAX_PATH_CHARS}, 255 bytes a name)"
            raise MMDeployError(f"bundle {self.root} refused: {where} = {_shown(rel)} {what}", "the manifest was edited or damaged; " + _REMAKE)
        bad = not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) \
            or ".." in PurePosixPath(rel.replace("\\", "/")).parts
        path = self.root / rel if isinstance(rel, str) else self.root
        if not bad:
            bad = not path.resolve().is_relative_to(self.root.resolve())
        if bad:
            raise MMDeployError(f"bundle {self.root} refused: {where} = {_shown(rel) if isinstance(rel, str) else repr(rel)} points outside the bundle",
                                "manifest paths must be relative and stay inside the bundle; " + _REMAKE)
        return path

    def _in_own_folder(self, rel: str, where: str) -> None:
        """A size's files (weights, ONNX, plans) live in ``sizes/<S>/``: a manifest pointing size 16 at
        size 24's ONNX (sha256 and all) would run it at the wrong input shape. Folders (ov's cache) are shared."""
        parts = where.split(".")
        if parts[0] != "sizes" or parts[-1] not in rec.file_fields(dict.fromkeys(parts[-1:])):
            return
        size = parts[1]
        if not rel.startswith(f"sizes/{size}/"):
            raise MMDeployError(f"bundle {self.root} refused: {where} = {_shown(rel)} is not in size {size}'s folder sizes/{size}/ "
                                "(each size's weights, ONNX and plans carry its own statistics and input shape)",
                                "the manifest was edited by hand; " + _REMAKE)

    def path(self, rel: str) -> Path:
        return self._confined(rel, "path")

    def verified_path(self, rel: str, sha256: str | None, what: str, hint: str) -> Path:
        """The file ``rel`` after checking it exists and matches its recorded sha256 (if recorded)."""
        path = self._confined(rel, what)
        if not path.is_file():
            raise MMDeployError(f"bundle {self.root} lacks {rel}", hint)
        if sha256 and cached_sha256(path) != sha256:
            raise MMDeployError(f"bundle {self.root}: {rel} does not match the sha256 its manifest records (changed since it was written)", hint)
        return path

    def file_ok(self, rel: str, sha256: str | None) -> bool:
        """True if ``rel`` exists and matches ``sha256`` (reuse only such files)."""
        try:
            path = self._confined(rel, "path")
            return path.is_file() and (not sha256 or cached_sha256(path) == sha256)
        except (MMDeployError, OSError):
            return False

    def fresh_name(self, rel: str) -> str:
        """``rel`` if the committed manifest does not list it, else a sibling name it does not list:
        a writer never overwrites a file the manifest on disk points to, so a crash leaves the old bundle."""
        listed = self._committed
        stem, dot, ext = rel.rpartition(".")
        candidate, n = rel, 1
        while candidate in listed:
            candidate = f"{stem}.{n}{dot}{ext}"
            n += 1
        return candidate

    # -- reading ---------------------------------------------------------------------------
    @property
    def source(self) -> rec.SourceRecord:
        return rec.SourceRecord.from_dict(self.manifest["source"])

    @property
    def sizes(self) -> list[int]:
        return sorted(int(s) for s in self.manifest["sizes"])

    def has_size(self, size: int) -> bool:
        return str(size) in self.manifest["sizes"]

    @property
    def arch(self) -> str:
        return self.manifest["source"]["arch"]

    @property
    def training_size(self) -> int:
        return int(self.manifest.get("training_size") or max(self.sizes))

    def preprocess(self):
        from mmdeploy.data import Preprocess

        return Preprocess.from_dict(self.manifest["preprocess"])

    def size(self, size: int) -> rec.SizeRecord:
        return rec.SizeRecord.from_dict(int(size), self._entry(size))

    def _entry(self, size: int) -> dict:
        entry = self.manifest["sizes"].get(str(size))
        if entry is None:
            raise MMDeployError(f"size {size} is not calibrated in {self.root} (it has {self.sizes})", f"run `mmdeploy calibrate ... --size {size} --out {self.root}`")
        return entry

    def artifact(self, size: int | None, kind: str, precision: str) -> rec.ArtifactRecord | None:
        """Size ``size``'s artifact, or the dynamic one (``size=None``)."""
        holder = self.manifest.get("dynamic", {}) if size is None else self._entry(size).get("artifacts", {})
        label = rec.artifact_label(kind, precision)
        return rec.ArtifactRecord.from_dict(label, holder[label]) if label in holder else None

    def artifact_usable(self, art: rec.ArtifactRecord | None) -> bool:
        return art is not None and self.file_ok(art.file, art.sha256)

    def artifact_path(self, art: rec.ArtifactRecord, hint: str) -> Path:
        return self.verified_path(art.file, art.sha256, f"{art.kind}/{art.precision}", hint)

    def dynamic_artifacts(self) -> list[rec.ArtifactRecord]:
        return [rec.ArtifactRecord.from_dict(k, a) for k, a in self.manifest.get("dynamic", {}).items()]

    def calibration_data(self) -> str | None:
        """The image folder the first calibrated size was calibrated on (parity images by default)."""
        return next((self.size(s).calibration.data for s in self.sizes if self.size(s).calibration.data), None)

    def weights_file(self, size: int | None) -> Path:
        """Size ``size``'s weights (``None``: the checkpoint's own), verified against their sha256."""
        if size is None:
            src = self.source
            rel, sha, hint = src.weights, src.weights_sha256, "re-run `mmdeploy calibrate` for the bundle"
        else:
            rec_ = self.size(size)
            rel, sha, hint = rec_.weights, rec_.weights_sha256, f"re-run `mmdeploy calibrate` for --size {size}"
        return self.verified_path(rel, sha, "weights", hint)

    def load_weights(self, size: int | None) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.weights_file(size)))

    def build_model(self, size: int | None) -> torch.nn.Module:
        """The model with size ``size``'s calibrated weights (``None``: the checkpoint's own)."""
        from mmdeploy.models import create_model
        from mmdeploy.models.checkpoint import load_state_strict

        src = self.source
        model = create_model(src.arch, **src.arch_kwargs)
        load_state_strict(model, self.load_weights(size), f"bundle weights for size {size}")
        return model.eval()

    def artifact_keys(self) -> dict:
        """Per size: every artifact's key (or sha256) and the calibration key: what eval and bench depend on."""
        return {str(s): {k: a.key or a.sha256 for k, a in self.size(s).artifacts.items()} | {"calib": self.size(s).calibration.key}
                for s in self.sizes}

    # -- writing ---------------------------------------------------------------------------
    def set_training_size(self, size: int) -> None:
        self.manifest["training_size"] = int(size)

    def set_source_weights(self, rel: str, sha256: str) -> None:
        self.manifest["source"].update(weights=rel, weights_sha256=sha256)

    def set_size(self, size: int, weights: str, weights_sha256: str, calibration: dict) -> None:
        """New BN statistics for ``size``: its old artifacts and metrics, and a dynamic ONNX that
        carried its statistics, are dropped (they describe the old weights)."""
        self.manifest["sizes"][str(size)] = {"weights": weights, "weights_sha256": weights_sha256, "calibration": calibration,
                                             "artifacts": {}, "metrics": {}}
        dynamic = self.manifest.setdefault("dynamic", {})
        for k in [k for k, a in dynamic.items() if a.get("bn_statistics") == f"calibrated for {size}"]:
            del dynamic[k]

    def set_artifact(self, size: int | None, kind: str, precision: str, record: dict) -> None:
        """Record an artifact (``size=None``: the dynamic one); the engine's stored figures at that size are stale."""
        label = rec.artifact_label(kind, precision)
        if size is None:
            self.manifest.setdefault("dynamic", {})[label] = record
            return
        self._entry(size).setdefault("artifacts", {})[label] = record
        self._forget_engines(size, kind, precision)

    def remove_artifact(self, size: int, kind: str, precision: str) -> None:
        self._entry(size).get("artifacts", {}).pop(rec.artifact_label(kind, precision), None)
        self._forget_engines(size, kind, precision)

    def _forget_engines(self, size: int, kind: str, precision: str) -> None:
        """Every engine that runs ``kind`` artifacts loses its figures of (size, precision): they measured the old file."""
        for engine in engines_of_artifact(kind):
            self._forget_metrics(size, engine, precision)

    def save(self) -> None:
        """Write the manifest atomically: the single commit point of every change."""
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")
        self._committed = rec.referenced_files(self.manifest)

    def sweep(self, expected: set[str] | frozenset = frozenset()) -> list[str]:
        """Remove what the manifest on disk does not list (temp files of a failed or crashed writer); under the lock.
        ``expected``: files this writer wrote itself and gives up (removed without a warning)."""
        return sweep(self.root, self._committed, expected)

    def commit(self) -> list[str]:
        """Save, then sweep what the manifest no longer lists (call under the lock): the files the
        previous manifest listed and this one replaced go quietly; leftovers of others are reported."""
        superseded = self._committed
        self.save()
        return sweep(self.root, self._committed, superseded)


__all__ = ["Bundle", "MANIFEST", "SCHEMA", "SCHEMA_VERSION", "TEMP_SUFFIX", "check_writable_dir"]
