"""File primitives of a bundle: atomic writes, temp names, content keys and verified hashes.

Every file a bundle holds is written under a temp name (``.NAME.XXXX.tmp``) in its final
folder and renamed into place; a crashed writer leaves only such temp files, which the next
writer sweeps under the bundle's lock (``mmdeploy.bundle.lock``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: reading a bundle (report, gate) must not import torch
    import torch

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would surprise users


def content_key(parts) -> str:
    """The one reuse key of the project: a short hash of JSON-ready ``parts`` (dict keys sorted).

    Calibration, export and ``mmdeploy run`` steps all key their reuse with it; callers put
    content hashes (of weights, images, ONNX bytes) in ``parts``, never names or times alone."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_HASHES: dict[tuple, str] = {}  # (path, inode, size, mtime) -> sha256: verify each file once per process


def cached_sha256(path: Path) -> str:
    st = os.stat(path)
    stamp = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if stamp not in _HASHES:
        _HASHES[stamp] = sha256_file(path)
    return _HASHES[stamp]


_MADE_HERE: set[str] = set()  # temp names this process created: a sweep removes them without reporting them


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside ``path`` for writers that need a file name (onnx, safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    _MADE_HERE.add(os.path.abspath(tmp))
    return Path(tmp)


def temp_made_here(path: Path) -> bool:
    """Whether this process made the temp file ``path`` (a leftover of its own, not of a crashed writer)."""
    return os.path.abspath(path) in _MADE_HERE


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write_chunks(Path(path), [data])


def _atomic_write_chunks(path: Path, chunks) -> None:
    """Write ``chunks`` to a temp file beside ``path``, fsync, rename into place. An ``OSError``
    (a full disk) names ``path``: a failed ``write`` or ``fsync`` carries no file name of its own."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors, byte for byte the same for the same tensors and metadata.

    safetensors writes its ``__metadata__`` in a per-process hash order, so identical runs would
    get different bytes (another sha256, a needless re-export); the header is rewritten with
    sorted metadata keys. The file goes through ``_atomic_write_chunks`` (temp name, fsync,
    rename), so a full disk is an ``OSError`` naming the file, never a half-written one."""
    from safetensors.torch import save

    data = memoryview(save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    size = max(n, -(-len(text) // 8) * 8)  # same length when it fits (it does: only the order changed), padded with spaces
    _atomic_write_chunks(Path(path), [size.to_bytes(8, "little"), text.ljust(size), data[8 + n :]])
