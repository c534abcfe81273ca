"""Process settings that make training faster on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every tensor above a few MB gets fresh pages from the kernel (mmap) and returns them when freed, so
    each new activation pays a page fault per 4 KB before the first write: on a 2-core VM that made elementwise
    ops on MAML's meta-batch four times slower than on reused memory, and whole training steps about twice as slow
    (RESULTS.md, allocator). Here large blocks come from the heap and freed memory stays in the process; the
    price is that the process keeps its peak memory until it exits. PyTorch's CPU tuning guide gets the same from
    jemalloc or tcmalloc preloaded. Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
