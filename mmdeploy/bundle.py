"""The deployment bundle: a folder whose ``manifest.json`` is the single source of truth.

Layout (DESIGN.md)::

    manifest.json                     schema-versioned; validated on read
    source/weights.safetensors        the checkpoint's own weights (for "before" numbers)
    sizes/<S>/weights.safetensors     BN-calibrated weights for size S
    sizes/<S>/model.onnx              per-size ONNX with S's BN folded in
    model.dynamic.onnx                dynamic N,H,W
    report.*, pareto.png

Every write is atomic (temp file + rename) and the manifest is written last, so a command
interrupted half-way leaves the bundle as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmdeploy.errors import MMDeployError

SCHEMA = "mmdeploy.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would surprise users


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside ``path`` for writers that need a file name (onnx, safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return Path(tmp)


def save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = temp_path_for(path)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, _FILE_MODE)  # save_file recreates the file with mode 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_dir(out: Path) -> None:
    """Fail early, before any work, if ``out`` cannot become a bundle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMDeployError(f"--out {out} is a file", "pass a folder path for the bundle")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise MMDeployError(f"--out {out} is a non-empty folder that is not a bundle", "pass a new or empty folder, or an existing bundle")
    from mmdeploy.writable import ensure_writable

    ensure_writable(out, "--out")


class Bundle:
    """An open bundle. ``Bundle.open`` validates; ``Bundle.create`` starts a new manifest."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise MMDeployError(f"{root} is not a bundle (no {MANIFEST})", "make one with `mmdeploy calibrate CKPT --out DIR`")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MMDeployError(f"{path} is corrupt ({exc})", "re-run `mmdeploy calibrate` into a new folder") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise MMDeployError(f"{path} is not an mmdeploy manifest", "re-run `mmdeploy calibrate` into a new folder")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise MMDeployError(
                f"bundle {root} has schema version {version} (made by mmdeploy {manifest.get('mmdeploy_version', '?')}); this mmdeploy reads version {SCHEMA_VERSION}",
                "re-run `mmdeploy calibrate` with this version, or use the mmdeploy that made it",
            )
        for key in ("source", "preprocess", "sizes"):
            if key not in manifest:
                raise MMDeployError(f"{path} lacks {key!r}", "re-run `mmdeploy calibrate` into a new folder")
        problem = _manifest_problem(manifest)
        if problem:
            raise MMDeployError(f"{path} is not a valid bundle manifest: {problem}", "re-run `mmdeploy calibrate` into a new folder")
        from mmdeploy.models.trust import authorize_arch

        authorize_arch(manifest["source"]["arch"], manifest["source"].get("arch_kwargs", {}), source=str(path))  # a manifest is data
        return cls(root, manifest)

    @staticmethod
    def is_bundle(path: str | Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(cls, root: Path, source: dict, preprocess: dict, training_size: int) -> Bundle:
        from mmdeploy import __version__

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
        return cls(Path(root), manifest)

    @property
    def sizes(self) -> list[int]:
        return sorted(int(s) for s in self.manifest["sizes"])

    @property
    def arch(self) -> str:
        return self.manifest["source"]["arch"]

    @property
    def training_size(self) -> int:
        return int(self.manifest.get("training_size") or max(self.sizes))

    def preprocess(self):
        from mmdeploy.data import Preprocess

        return Preprocess.from_dict(self.manifest["preprocess"])

    def size_entry(self, size: int) -> dict:
        entry = self.manifest["sizes"].get(str(size))
        if entry is None:
            raise MMDeployError(f"size {size} is not calibrated in {self.root} (it has {self.sizes})", f"run `mmdeploy calibrate ... --size {size} --out {self.root}`")
        return entry

    def path(self, rel: str) -> Path:
        return self.root / rel

    def load_weights(self, size: int | None) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        rel = self.manifest["source"]["weights"] if size is None else self.size_entry(size)["weights"]
        if not self.path(rel).is_file():
            raise MMDeployError(f"bundle {self.root} lacks {rel}", f"re-run `mmdeploy calibrate` for {'the bundle' if size is None else f'--size {size}'}")
        return load_file(str(self.path(rel)))

    def build_model(self, size: int | None) -> torch.nn.Module:
        """The model with size ``size``'s calibrated weights (``None``: the checkpoint's own)."""
        from mmdeploy.models import create_model
        from mmdeploy.models.checkpoint import load_state_strict

        src = self.manifest["source"]
        model = create_model(src["arch"], **src.get("arch_kwargs", {}))
        load_state_strict(model, self.load_weights(size), f"bundle weights for size {size}")
        return model.eval()

    def engine(self, name: str, size: int, precision: str = "fp32", **options):
        """An inference engine for one size: ``with bundle.engine("ort", 24) as run: run(x)``."""
        from mmdeploy.engines import create_engine

        return create_engine(name, self, size, precision, **options)

    # -- writing ---------------------------------------------------------------------------
    def set(self, keys: list[str], value: Any) -> None:
        node = self.manifest
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    def save(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")


def _manifest_problem(manifest: dict) -> str:
    """"" if the fields every command reads have the right shape, else what is wrong (one phrase)."""
    from mmdeploy.data import Preprocess

    source = manifest["source"]
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in ("arch", "sha256", "weights")):
        return "source needs arch, sha256 and weights"
    if not isinstance(source.get("arch_kwargs", {}), dict):
        return "source.arch_kwargs is not an object"
    try:
        Preprocess.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError, MMDeployError):
        return "preprocess needs kind (cifar or imagenet), mean and std"
    if not isinstance(manifest["sizes"], dict) or not isinstance(manifest.get("dynamic", {}), dict):
        return "sizes and dynamic must be objects"
    for size, entry in manifest["sizes"].items():
        if not (isinstance(size, str) and size.isdigit() and int(size) > 0):
            return f"size {size!r} is not a positive integer"
        if not isinstance(entry, dict) or not isinstance(entry.get("weights"), str) or not isinstance(entry.get("calibration"), dict):
            return f"size {size} needs weights and calibration"
        if not all(isinstance(entry.get(k, {}), dict) for k in ("artifacts", "metrics")):
            return f"size {size}: artifacts and metrics must be objects"
    return ""


def staged_bundle_dir(out: Path) -> Path:
    """A fresh sibling folder to build a new bundle in; renamed onto ``out`` when complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    os.chmod(stage, 0o777 & ~_umask())
    return stage


def publish_staged(stage: Path, out: Path) -> None:
    """Move a completed staging folder into place: rename if new, else file by file, manifest last."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
        return
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    for f in [p for p in files if p.name != MANIFEST] + [p for p in files if p.name == MANIFEST]:
        dest = out / f.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    shutil.rmtree(stage, ignore_errors=True)
