"""Keep freed memory in the process on Linux/glibc, so that CPU inference stops page-faulting.

A prefix pass allocates activations of a megabyte or more (the ref preset's MLP output is
144 tokens × 2048 × 4 bytes). glibc serves those from fresh ``mmap`` regions or from the top of
the heap and, on ``free``, gives the memory back to the kernel (``munmap``, heap trimming), so
the next pass touches new pages and takes a minor page fault per 4 KiB. Measured on the 2-core
CPU box: 900-2000 faults per ``encode`` at the ref size, 3-5 ms of its ~17 ms of CPU time, and
the count depends on the allocator's history in the process (glibc adapts its thresholds to
earlier frees), which makes timings jump between runs. With both thresholds raised, freed
blocks are reused and a pass takes no page faults at all.

This is a process-wide setting (RSS then stays at its peak instead of shrinking), so nothing
in the library calls it implicitly: an inference process or a benchmark opts in.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold_bytes``: allocations below it come
    from the heap and freed memory is kept for reuse. Returns whether the setting took effect
    (False off Linux/glibc, e.g. macOS or musl, where it does nothing)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
