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


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside ``path`` for writers that need a file name (onnx, safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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
