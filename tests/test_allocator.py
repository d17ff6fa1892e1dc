"""The C library keeps freed large blocks for reuse (mmdeploy.allocator), in every mmdeploy command, unless told not to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and bool(getattr(os, "confstr", lambda _: "")("CS_GNU_LIBC_VERSION"))

PROBE = """
import ctypes, json, sys
from mmdeploy.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "apply" else False
mapped_before = libc.mallinfo2().hblks  # blocks malloc got from mmap so far
block = libc.malloc(64 << 20)  # over glibc's largest mmap threshold
mapped = libc.mallinfo2().hblks - mapped_before
libc.free(block)
kept = libc.mallinfo2().fordblks  # free bytes malloc keeps for reuse
print(json.dumps({"applied": applied, "mapped": mapped, "kept": kept}))
"""


def _probe(mode: str, env: dict | None = None) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env={**os.environ, **(env or {})},
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; other C libraries are left as they are")
def test_large_blocks_come_from_the_heap_and_stay_for_reuse():
    before = _probe("default")
    assert before == {"applied": False, "mapped": 1, "kept": before["kept"]}, before  # glibc's default: its own mmap
    after = _probe("apply")
    assert after["applied"] is True and after["mapped"] == 0, after  # from the heap
    assert after["kept"] >= 64 << 20, after  # and kept after free, for the next batch


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_system_leaves_the_defaults_alone():
    probe = _probe("apply", {"MMDEPLOY_MALLOC": "system"})
    assert probe["applied"] is False and probe["mapped"] == 1


def test_every_command_asks_for_it(monkeypatch, tmp_path):
    """The CLI wrapper calls it before the command runs (a command that fails at once still went through it)."""
    from typer.testing import CliRunner

    import mmdeploy.allocator as allocator
    from mmdeploy.cli import app

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 1 and calls == [1], result.output
