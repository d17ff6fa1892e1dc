"""One writer per bundle: an advisory ``fcntl.flock`` on ``.mmdeploy.lock`` in the bundle.

Writers (calibrate, export, and the read-modify-write of eval/bench results) hold the lock;
readers need none because the manifest is replaced atomically and lists only finished files
with their sha256. A second writer waits (saying so once) or, under ``lock_policy(wait=False)``
(the CLI's ``--no-wait``), fails at once in one line. The lock is re-entrant within a process
(``mmdeploy run`` calibrates, then exports, the same bundle). Under the lock the writer sweeps
what crashed writers left: temp files, and bundle files the manifest does not list.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from mmdeploy.bundle.files import TEMP_SUFFIX
from mmdeploy.errors import MMDeployError

LOCK_FILE = ".mmdeploy.lock"
_held: dict[str, tuple[int, int]] = {}  # resolved root -> (fd, depth)
_guard = threading.Lock()
_policy = {"wait": True}


@contextlib.contextmanager
def lock_policy(wait: bool) -> Iterator[None]:
    """Whether a writer waits for a bundle another process is writing (default) or fails at once."""
    before = _policy["wait"]
    _policy["wait"] = wait
    try:
        yield
    finally:
        _policy["wait"] = before


@contextlib.contextmanager
def bundle_lock(root: str | os.PathLike, wait: bool | None = None) -> Iterator[None]:
    """Hold the bundle's writer lock (creating the folder if needed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if not reentered:
        fd = _acquire(root, _policy["wait"] if wait is None else wait)
        with _guard:
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def holds_lock(root: str | os.PathLike) -> bool:
    return str(Path(root).resolve()) in _held


def _acquire(root: Path, wait: bool) -> int:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise MMDeployError(f"bundle {root} is being written by another mmdeploy{holder}",
                                    "wait for it to finish, or drop --no-wait to queue behind it") from None
            print(f"waiting for another mmdeploy{holder} writing bundle {root} ...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


# Where a bundle's own files live; the sweep never looks elsewhere (report.*, trt/timing.cache
# and anything a user put in the folder are left alone).
_MANAGED_DIRS = ("sizes", "source")


def sweep(root: str | os.PathLike, referenced: set[str]) -> list[str]:
    """Remove what no manifest lists: temp files and folders anywhere in the bundle, bundle files
    (weights, ONNX, plans) under sizes/ and source/ and ``model*.onnx`` at the top that
    ``referenced`` does not name, emptied size folders, and stale staging folders beside the
    bundle. Call only while holding the lock. Returns the removed bundle-relative names."""
    root = Path(root)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(f".*{TEMP_SUFFIX}")):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
        elif path.is_dir():  # a model cache being filled (export --engine ov) when its writer died
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(path.relative_to(root).as_posix())
    candidates = [p for d in _MANAGED_DIRS if (root / d).is_dir() for p in (root / d).rglob("*") if p.is_file() or p.is_symlink()]
    candidates += [p for p in root.glob("model*.onnx") if p.is_file() or p.is_symlink()]
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if rel not in referenced:
            path.unlink(missing_ok=True)
            removed.append(rel)
    for d in _MANAGED_DIRS:
        for folder in sorted((root / d).rglob("*"), reverse=True) if (root / d).is_dir() else []:
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        if (root / d).is_dir() and not any((root / d).iterdir()):
            (root / d).rmdir()
    for stage in root.parent.glob(f".{root.name}.staging-*"):  # left by mmdeploy versions that staged beside the bundle
        if stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage.name)
    return removed
