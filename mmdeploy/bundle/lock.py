"""One writer per bundle, readers beside no writer: ``fcntl.flock`` on ``.mmdeploy.lock`` in the bundle.

Writers (calibrate, export, and the read-modify-write of eval/bench results) hold the lock
exclusively; commands that read the bundle's files for a while (eval, bench, tune measuring)
hold it shared, so a writer's sweep never deletes a file a reader is about to open. A writer
that has to wait says so once or, under ``lock_policy(wait=False)`` (the CLI's ``--no-wait``),
fails at once in one line. The lock is re-entrant within a process (``mmdeploy run`` calibrates,
then exports, the same bundle), and a shared hold is raised to an exclusive one when a reader
writes. Under the lock the writer sweeps what crashed writers left: only names mmdeploy writes
(temp files, and weights, ONNX files and plans the manifest does not list), and says what it removed.

The lock file is data in a folder a user may share: it is opened without following a symlink,
and anything but a regular file with one link is refused in one line (never truncated).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import re
import shutil
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmdeploy.bundle.files import temp_made_here
from mmdeploy.errors import MMDeployError

LOCK_FILE = ".mmdeploy.lock"
_MANIFEST = "manifest.json"  # spelled in bundle.validate too, which imports this module
_guard = threading.Lock()
_policy = {"wait": True}


@dataclass
class _Hold:
    fd: int
    created: bool  # this process made the bundle folder (removed again if no manifest was ever committed)
    modes: list[int] = field(default_factory=list)  # LOCK_SH / LOCK_EX per nesting level

    @property
    def mode(self) -> int:
        return fcntl.LOCK_EX if fcntl.LOCK_EX in self.modes else fcntl.LOCK_SH


_held: dict[str, _Hold] = {}  # resolved root -> this process's hold


@contextlib.contextmanager
def lock_policy(wait: bool) -> Iterator[None]:
    """Whether a writer waits for a bundle another process is using (default) or fails at once."""
    before = _policy["wait"]
    _policy["wait"] = wait
    try:
        yield
    finally:
        _policy["wait"] = before


@contextlib.contextmanager
def bundle_lock(root: str | os.PathLike, wait: bool | None = None, shared: bool = False) -> Iterator[None]:
    """Hold the bundle's lock: exclusive for a writer (creating the folder if needed), ``shared``
    for a reader (no folder is made; a bundle whose lock cannot be created, e.g. on a read-only
    disk, is read without one: no writer can change it either)."""
    root = Path(root)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    wait = _policy["wait"] if wait is None else wait
    if shared and not root.is_dir():
        yield
        return
    existed = root.is_dir()
    if not shared:
        root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    with _guard:
        hold = _held.get(key)
    if hold is None:
        fd, remade = _acquire(root, mode, wait)
        if fd is None:
            yield
            return
        hold = _Hold(fd, created=not existed or remade)
        with _guard:
            _held[key] = hold
    elif mode == fcntl.LOCK_EX and hold.mode == fcntl.LOCK_SH:
        _raise_to_exclusive(root, hold.fd, wait)
    hold.modes.append(mode)
    try:
        yield
    finally:
        with _guard:
            was = hold.mode
            hold.modes.pop()
            if not hold.modes:
                del _held[key]
        if not hold.modes:
            _release(root, hold, was)
        elif was == fcntl.LOCK_EX and hold.mode == fcntl.LOCK_SH:
            os.ftruncate(hold.fd, 0)  # no writer now: the pid goes
            fcntl.flock(hold.fd, fcntl.LOCK_SH)


def reading_bundle(param: str):
    """Decorator: while the function runs, the bundle named by its argument ``param`` (if it is
    one) is held shared, so no writer sweeps a file it reads. Its results are merged under
    ``Bundle.update``, which raises the hold to exclusive. Under torch.distributed rank 0 alone
    holds it: every rank has finished reading at the closing all-reduce, before rank 0 writes
    (ranks holding shared locks while rank 0 waits for an exclusive one would deadlock)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from mmdeploy import distributed as dist

            root = Path(signature.bind(*args, **kwargs).arguments[param])
            locked = dist.is_main() and (root / _MANIFEST).is_file()
            with bundle_lock(root, shared=True) if locked else contextlib.nullcontext():
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _refuse(root: Path, path: Path, what: str) -> MMDeployError:
    return MMDeployError(f"bundle {root}: its lock {path} is {what}, not mmdeploy's lock file; refused (nothing was written)",
                         f"remove it (rm {'-r ' if what == 'a directory' else ''}{path}) and run the command again")


def _kind(st: os.stat_result) -> str | None:
    """What is wrong with a lock file's stat, or None for a regular file with one link."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return "a hard link to another file"
    return None


def _open_lock_file(root: Path, shared: bool) -> int | None:
    """The lock file's descriptor: a regular file opened without following a symlink (never another file)."""
    path = root / LOCK_FILE
    with contextlib.suppress(FileNotFoundError):
        bad = _kind(os.lstat(path))
        if bad:
            raise _refuse(root, path, bad)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(root, path, "a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise _refuse(root, path, "a directory") from None
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):
            raise _refuse(root, path, "not a regular file") from None
        if shared and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None  # a bundle this user cannot write to: nobody here can change it under the reader
        raise
    bad = _kind(os.fstat(fd))  # swapped between the lstat and the open
    if bad:
        os.close(fd)
        raise _refuse(root, path, bad)
    return fd


def _acquire(root: Path, mode: int, wait: bool) -> tuple[int | None, bool]:
    """The locked descriptor (None: a reader of a bundle it cannot lock), and whether the folder had to be made again."""
    shared, remade = mode == fcntl.LOCK_SH, False
    while True:
        if not shared and not root.is_dir():  # a failed first writer removed the new folder while this one waited
            root.mkdir(parents=True, exist_ok=True)
            remade = True
        fd = _open_lock_file(root, shared)
        if fd is None:
            return None, remade
        try:
            _flock(root, fd, mode, wait)
            # A writer that gave up a folder it had made removes the lock file: this one is then stale; open the new one.
            try:
                now = os.lstat(root / LOCK_FILE)
            except FileNotFoundError:
                now = None
            st = os.fstat(fd)
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                if shared and not root.is_dir():
                    return None, remade
                continue
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd, remade
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _flock(root: Path, fd: int, mode: int, wait: bool) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)  # a writer leaves its pid in the file; readers leave none
        if not wait:
            raise MMDeployError(f"bundle {root} is " + (f"being written by another mmdeploy{holder}" if holder else "in use by another mmdeploy"),
                                "wait for it to finish, or drop --no-wait to queue behind it") from None
        print(f"waiting for another mmdeploy{holder} {'writing' if holder else 'using'} bundle {root} ...", file=sys.stderr, flush=True)
        fcntl.flock(fd, mode)


def _raise_to_exclusive(root: Path, fd: int, wait: bool) -> None:
    """A reader that now writes: shared -> exclusive (flock converts by releasing first, so two such readers cannot deadlock)."""
    try:
        _flock(root, fd, fcntl.LOCK_EX, wait)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a failed conversion may have dropped the shared hold: take it back
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _release(root: Path, hold: _Hold, mode: int) -> None:
    try:
        if mode == fcntl.LOCK_EX:
            os.ftruncate(hold.fd, 0)  # a pid in the lock file means a live writer
            if hold.created:
                _remove_if_never_committed(root)
    finally:
        fcntl.flock(hold.fd, fcntl.LOCK_UN)
        os.close(hold.fd)


def _remove_if_never_committed(root: Path) -> None:
    """A folder this writer made that got no manifest (the command failed) holds nothing but the
    lock once swept: remove both, so a failed first run leaves no empty folder. A waiting writer
    sees its lock file gone and opens the one the next writer makes."""
    with contextlib.suppress(OSError):
        if (root / _MANIFEST).exists() or any(p.name != LOCK_FILE for p in root.iterdir()):
            return
        os.unlink(root / LOCK_FILE)
        root.rmdir()


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


# -- the sweep: names mmdeploy writes, nothing else -----------------------------------------

_PREC = r"(?:fp32|fp16|bf16|int8)"
_N = r"(?:\.\d+)?"  # the sibling number of Bundle.fresh_name (weights.1.safetensors)
_OWN_FILES = re.compile("|".join([
    rf"source/weights{_N}\.safetensors",
    rf"sizes/\d+/weights{_N}\.safetensors",
    rf"sizes/\d+/model(?:\.{_PREC})?{_N}\.onnx",
    rf"sizes/\d+/model\.{_PREC}(?:\.b\d+)?{_N}\.plan",
    rf"model\.dynamic(?:\.{_PREC})?{_N}\.onnx",
]))
# temp_path_for's and mkdtemp's names (.NAME.XXXXXXXX.tmp, .mmdeploy-write-probe-XXXX.tmp), and
# safetensors' own temp files (.tmpXXXXXX, written beside the weights by versions that used save_file).
_TEMP = re.compile(r"\.[^/]*[.-][A-Za-z0-9_]{6,}\.tmp")
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")
_MANAGED_DIRS = ("sizes", "source")


def is_own_file(rel: str) -> bool:
    """Whether a bundle-relative name is one mmdeploy writes (and so may sweep when no manifest lists it)."""
    return bool(_OWN_FILES.fullmatch(rel))


def sweep(root: str | os.PathLike, referenced: set[str], expected: set[str] | frozenset = frozenset()) -> list[str]:
    """Remove what crashed or failed writers left: temp files and folders, files with names mmdeploy
    writes (weights, ONNX, plans; ``is_own_file``) that ``referenced`` does not list, size folders
    this leaves empty, and stale staging folders beside the bundle. A user's own files, whatever
    their name, are never touched. Removals other than ``expected`` ones (files the caller knows it
    superseded or wrote itself) are reported in one warning line. Call only while holding the lock.
    Returns the removed bundle-relative names."""
    root = Path(root)
    removed: list[str] = []
    quiet = set(expected)
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(".*")):
        rel = path.relative_to(root).as_posix()
        if path.name == LOCK_FILE or not (_TEMP.fullmatch(path.name) or
                                          (rel.split("/")[0] in _MANAGED_DIRS and _SAFETENSORS_TEMP.fullmatch(path.name))):
            continue
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
        elif path.is_dir():  # a model cache being filled (export --engine ov) when its writer died
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(rel)
        if temp_made_here(path):
            quiet.add(rel)
    candidates = [p for d in _MANAGED_DIRS if (root / d).is_dir() for p in (root / d).rglob("*")]
    candidates += list(root.glob("model.dynamic*.onnx"))
    for path in sorted(candidates):
        rel = path.relative_to(root).as_posix()
        if rel not in referenced and is_own_file(rel) and (path.is_file() or path.is_symlink()):
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
            removed.append(f"../{stage.name}")
    unexpected = [r for r in removed if r not in quiet]
    if unexpected:
        shown = ", ".join(unexpected[:6]) + (f" and {len(unexpected) - 6} more" if len(unexpected) > 6 else "")
        warnings.warn(f"removed from bundle {root} what an interrupted or failed mmdeploy left (no manifest lists it): {shown}",
                      stacklevel=3)
    return removed
