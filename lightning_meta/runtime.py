"""Process settings that make training faster on the CPU. The command line (``lightning_meta.cli``) applies them;
nothing else in the library calls them, so a program that imports lightning_meta keeps its process as it was."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every tensor above a few MB gets fresh pages from the kernel (mmap) and returns them when freed, so
    each new activation pays a page fault per 4 KB before its first write. Here large blocks come from the heap
    and freed memory stays in the process, at the price of keeping the peak memory until the process exits. The
    algorithms with large tensors (ProtoNet, MAML, first-order MAML, Meta Networks) gain the most; those whose
    tensors are small run about as before (RESULTS.md, "Allocator"). PyTorch's CPU tuning guide gets the same from
    jemalloc or tcmalloc preloaded (``LD_PRELOAD``). The command line calls it first unless the environment sets
    ``LIGHTNING_META_KEEP_FREED_MEMORY=0``. Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
