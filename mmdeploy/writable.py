"""Read-only folders and full disks as user errors: checked before work, explained in one line.

A bundle command computes for minutes and writes at the end; a folder it cannot write must
fail before the work, not after it (:func:`ensure_writable`). Where a write fails anyway
(the disk filled up meanwhile), :func:`explain_disk_errors` turns the ``OSError`` into an
:class:`~mmdeploy.errors.MMDeployError` naming the path and what to do; writes are atomic, so
the bundle is left as it was.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from pathlib import Path

from mmdeploy.errors import MMDeployError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def disk_error(exc: OSError) -> MMDeployError | None:
    """The user error an ``OSError`` from a read or write means, or None if it is not one of those."""
    path = exc.filename2 or exc.filename
    where = f" ({path})" if path else ""
    if exc.errno in _FULL:
        return MMDeployError(f"no space left on the disk{where}: {exc.strerror or 'disk full'}; nothing was published",
                             "free some space (or write the bundle to another disk with more room) and run the command again")
    if exc.errno == errno.EROFS:
        return MMDeployError(f"{path or 'the output folder'} is on a read-only file system", "write the bundle to a writable folder")
    if exc.errno in _DENIED:
        return MMDeployError(f"permission denied on {path or 'a file the command needs'}",
                             "make it writable/readable for you (e.g. chmod u+rwX), or use a folder you own")
    return None


def explain_disk_errors(fn):
    """``fn`` with permission/read-only/disk-full ``OSError``s raised as one-line user errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            user = disk_error(exc)
            if user is None:
                raise
            raise user from exc

    return wrapper


def ensure_writable(folder: str | os.PathLike, what: str = "bundle") -> None:
    """Fail now, in one line, if files cannot be created in ``folder`` (or the nearest existing
    folder above it). It creates and removes a probe file, so it is right for root too, whom
    ``os.access`` and permission bits do not stop but a read-only file system does."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise MMDeployError(f"{what} folder {folder}: {probe_dir} is not a folder", "pass a folder path")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".mmdeploy-write-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in _FULL:
            raise disk_error(exc) from None
        reason = "it is on a read-only file system" if exc.errno == errno.EROFS else "no permission to create files there"
        raise MMDeployError(f"{what} folder {folder} is not writable ({reason}: {probe_dir})",
                            "make it writable (e.g. chmod u+w), or choose another folder") from None
