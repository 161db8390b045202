"""The process's allocator: keep freed memory for the next batch instead of returning it to the OS.

PyTorch allocates every CPU activation with ``malloc``. glibc serves a block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and trims the heap
top when more than a threshold is free; a network at 160 px has many such activations, so every
batch page-faults (and the kernel zeroes) hundreds of MB again. Measured by
``bench/bench_malloc.py``: inference of EfficientNet-Lite0 at 160 px in batches of 256 spent
more time in the kernel than in arithmetic. :func:`keep_freed_memory` turns both off for the
process, so the pages stay mapped and the next batch reuses them; the cost is that the process
keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "VISLAB_MALLOC"  # "system" leaves the C library's defaults alone
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """On Linux with glibc, serve every allocation from the heap and never trim it; returns whether
    the setting took effect (False elsewhere, or when ``VISLAB_MALLOC=system``). Applies to the
    blocks allocated after the call, in this process and in the processes it forks."""
    if os.environ.get(ENV, "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 as the trim threshold is SIZE_MAX inside glibc: the heap top is never handed back
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
