"""glibc malloc settings that keep a node's memory flat under frames of every size, without making the
model's temporaries expensive.

Frames of changing sizes (a fuzzer's, or cameras of several resolutions) meet two glibc behaviours:
each thread that allocates (executor, inference worker, DDS) gets an arena of its own, up to 8 per
core, and a freed large block raises the mmap threshold (up to 32 MiB), so later blocks of that size
come from the arenas, where fragmentation keeps them resident. Capping the arenas at 2 and fixing the
mmap threshold at 32 MiB (which also stops it from moving) returns every block of 32 MiB or more (a
large frame and its conversions) to the system when it is freed.

Why 32 MiB and a trim threshold of 64 MiB: fixing the mmap threshold also fixes the trim threshold at
glibc's 128 KiB, and a lower mmap threshold sends the forward's temporaries (e.g. the float64 im2col
buffers of the Lipschitz h: 1.8 MB a 28x28 frame, 29 MB for 16 frames) to fresh mmaps or trims them
after every batch; each batch then pays their page faults again. Measured on this 2-core machine
(FrameClassifier.classify, shipped models, 1 thread): 4 MiB without a trim threshold 4.6 ms a frame
in batches of 8 against 2.8 ms with these settings (glibc's defaults: 3.1 ms).
The price: blocks of large frames below 32 MiB stay in the arenas (benchmarks/soak.py: RSS flat, at
~1.02 GiB instead of ~0.77 GiB; docs/results/benchmarks/many_cameras.md). No-op where the C library is
not glibc.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
ARENAS = 2


def tune_malloc() -> bool:
    """Apply the settings (call before the threads start); True when glibc accepted all three."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    settings = {M_ARENA_MAX: ARENAS, M_MMAP_THRESHOLD: MMAP_THRESHOLD_BYTES, M_TRIM_THRESHOLD: TRIM_THRESHOLD_BYTES}
    return all([bool(mallopt(option, value)) for option, value in settings.items()])  # a list: apply all three
