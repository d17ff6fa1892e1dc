"""How this process gets memory from the C library: keep freed blocks for reuse instead of returning them to the OS.

glibc serves every block over 32 MiB with its own ``mmap`` and gives it back with ``munmap`` when freed. A
calibration batch of an ImageNet model allocates and frees activations of 50-200 MB per layer, so every layer of every
batch maps fresh pages that the kernel must fault in and zero: on a 2-core VM, ResNet-50 at 160 px spent a third of
its CPU time in the kernel (207 s system of 639 s), and the forward ran at 38 images/s instead of 64-67
(``benchmarks/results/calib_160_quiet.txt``). With ``mmap`` off for ``malloc`` and trimming only above 2 GiB, freed
activations stay in the heap and the next batch reuses them.

The cost: the process keeps its peak heap until it exits (resident memory does not shrink after a large step), which
suits a command-line process. :func:`keep_freed_memory` is called by every ``mmdeploy`` command; a library user may
call it too. ``MMDEPLOY_MALLOC=system`` leaves the C library's defaults alone. Other C libraries (musl, macOS,
Windows) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int): return memory to the OS only above 2 GiB free

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its heap and keep freed ones (see the module). Returns whether
    it applies in this process: False off glibc or with ``MMDEPLOY_MALLOC=system``. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MMDEPLOY_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
