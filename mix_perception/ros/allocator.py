"""glibc malloc settings that keep a node's memory flat under frames of every size.

Frames of changing sizes (a fuzzer's, or cameras of several resolutions) meet two glibc behaviours:
each thread that allocates (executor, inference worker, DDS) gets an arena of its own, up to 8 per
core, and a freed large block raises the mmap threshold (up to 32 MiB), so later blocks of that size
come from the arenas, where fragmentation keeps them resident. Capping the arenas at 2 and fixing the
threshold at 4 MiB (which also stops it from moving) returns every block of 4 MiB or more to the
system when it is freed. No-op where the C library is not glibc.
"""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
ARENAS = 2


def tune_malloc() -> bool:
    """Apply the settings (call before the threads start); True when glibc accepted both."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_ARENA_MAX, ARENAS)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
