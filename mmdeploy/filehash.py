"""Content hashes of files, each computed once and remembered across runs.

Reuse keys must hash the bytes of the images, not their names or sizes (a file swapped for
another of the same size is different data). Hashing 50,000 files on every run would cost
seconds, so each file's sha256 is kept in a small cache keyed by what a ``stat`` returns:
absolute path, byte size, mtime and ctime in nanoseconds and inode. A warm run costs one
``stat`` per file; a file that was rewritten gets a new ctime (which, unlike the mtime, no
tool can set back) and is hashed again.

The cache is a convenience, never an authority: a cache file that cannot be read, parsed or
that has malformed entries is ignored (and rewritten); a cache folder that cannot be written
is silently not written; concurrent writers each replace the file atomically, so the worst a
race does is drop some entries, which are hashed again next time.

Where the cache lives: ``$MMDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmdeploy``, else
``~/.cache/mmdeploy``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE_NAME = "file-hashes-v1.json"
_VERSION = 1  # entries: abs path -> [size, mtime_ns, ctime_ns, inode, sha256]
_HEX = frozenset("0123456789abcdef")


def cache_dir() -> Path:
    """The folder of mmdeploy's per-user caches (see the module docstring)."""
    if os.environ.get("MMDEPLOY_CACHE_DIR"):
        return Path(os.environ["MMDEPLOY_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmdeploy"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _valid_entry(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 5 and all(type(v) is int for v in value[:4])
            and isinstance(value[4], str) and len(value[4]) == 64 and set(value[4]) <= _HEX)


def read_versioned_entries(path: Path, version: int, valid) -> dict:
    """The ``entries`` of a per-user cache file whose ``version`` matches; anything unreadable, malformed or failing
    ``valid(value)`` is dropped, never trusted."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(k, str) and valid(v)}


def write_versioned_entries(path: Path, version: int, entries: dict) -> bool:
    """Replace a per-user cache file atomically; False (and nothing changed) where that is impossible."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": version, "entries": entries}, f, separators=(",", ":"))
        os.replace(tmp, path)
        return True
    except OSError:  # read-only folder, full disk, no home: the cache is optional
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def _read_cache(path: Path) -> dict[str, list]:
    return read_versioned_entries(path, _VERSION, _valid_entry)


def _write_cache(path: Path, entries: dict[str, list]) -> bool:
    return write_versioned_entries(path, _VERSION, entries)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)  # hashlib releases the GIL on large updates, so threads overlap
    return h.hexdigest()


def file_hashes(paths: list[Path], cache: Path | None = None, workers: int | None = None) -> list[str]:
    """The sha256 of each file's bytes, in order; reads only files the cache does not know as they are now.

    ``cache`` is the cache file (default: ``cache_dir() / CACHE_NAME``). An unreadable file
    raises ``OSError`` as reading it would.
    """
    cache = cache or cache_dir() / CACHE_NAME
    known = _read_cache(cache)
    names = [os.path.abspath(p) for p in paths]
    stats = [_stat_key(os.stat(n)) for n in names]
    out: list[str | None] = []
    todo = []
    for i, (name, key) in enumerate(zip(names, stats)):
        entry = known.get(name)
        if entry is not None and entry[:4] == key:
            out.append(entry[4])
        else:
            out.append(None)
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
            for i, digest in zip(todo, pool.map(lambda j: _sha256(names[j]), todo, chunksize=64)):
                out[i] = digest
        fresh = {names[i]: [*stats[i], out[i]] for i in todo}
        # Merge with what other writers saved meanwhile, so concurrent runs keep each other's work.
        _write_cache(cache, {**_read_cache(cache), **fresh})
    return out  # type: ignore[return-value]
