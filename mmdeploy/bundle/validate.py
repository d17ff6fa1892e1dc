"""Checks made before a bundle is read or written: the manifest's shape, and whether a folder can become a bundle."""

from __future__ import annotations

from pathlib import Path

from mmdeploy.bundle.lock import LOCK_FILE
from mmdeploy.errors import MMDeployError

MANIFEST = "manifest.json"


def check_writable_dir(out: Path) -> None:
    """Fail early, before any work, if ``out`` cannot become a bundle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMDeployError(f"--out {out} is a file", "pass a folder path for the bundle")
    # A folder holding mmdeploy's lock file was started by an mmdeploy writer (maybe one that crashed): reuse it.
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists() and not (out / LOCK_FILE).exists():
        raise MMDeployError(f"--out {out} is a non-empty folder that is not a bundle", "pass a new or empty folder, or an existing bundle")
    from mmdeploy.writable import ensure_writable

    ensure_writable(out, "--out")


def manifest_problem(manifest: dict) -> str:
    """"" if the fields every command reads have the right shape, else what is wrong (one phrase)."""
    from mmdeploy.data import Preprocess

    source = manifest["source"]
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in ("arch", "sha256", "weights")):
        return "source needs arch, sha256 and weights"
    if not isinstance(source.get("arch_kwargs", {}), dict):
        return "source.arch_kwargs is not an object"
    try:
        Preprocess.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError, MMDeployError) as exc:  # also a zero/NaN/inf normalization, as in an edited manifest
        detail = f": {exc.message}" if isinstance(exc, MMDeployError) else ""
        return "preprocess needs kind (cifar or imagenet), mean and std" + detail
    if not isinstance(manifest["sizes"], dict) or not isinstance(manifest.get("dynamic", {}), dict):
        return "sizes and dynamic must be objects"
    if _bad_outside_path(source.get("path")):
        return "source.path " + _bad_outside_path(source.get("path"))
    for size, entry in manifest["sizes"].items():
        if not (isinstance(size, str) and size.isdigit() and int(size) > 0):
            return f"size {size!r} is not a positive integer"
        if not isinstance(entry, dict) or not isinstance(entry.get("weights"), str) or not isinstance(entry.get("calibration"), dict):
            return f"size {size} needs weights and calibration"
        if not all(isinstance(entry.get(k, {}), dict) for k in ("artifacts", "metrics")):
            return f"size {size}: artifacts and metrics must be objects"
        if not all(isinstance(a, dict) for a in entry.get("artifacts", {}).values()):
            return f"size {size}: every artifact must be an object"
        if _bad_outside_path(entry["calibration"].get("data")):
            return f"sizes.{size}.calibration.data " + _bad_outside_path(entry["calibration"].get("data"))
    return ""


_MAX_OUTSIDE_PATH = 4096  # PATH_MAX on Linux: the checkpoint's and the calibration images' folders (recorded, reopened by export)


def _bad_outside_path(value: object) -> str:
    """"" if a recorded path outside the bundle (or None) can be opened at all, else why not."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return "is not a string"
    if "\0" in value:
        return "has a NUL byte"
    if len(value) > _MAX_OUTSIDE_PATH:
        return f"is {len(value)} characters long (at most {_MAX_OUTSIDE_PATH})"
    return ""
