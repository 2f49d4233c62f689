"""The mixer node under tracemalloc, for `soak.py --mode flood --trace-python`: same start as the
`mixer_node` executable (stop request, malloc settings), plus a thread that prints to stderr, every 5 s,
one line `TRACE <seconds> <Python-traced MiB> <gc-tracked objects>`: the Python share of the memory.

    .venv/bin/python -P benchmarks/traced_mixer.py --ros-args ...
"""

import gc
import sys
import threading
import time
import tracemalloc

from mix_perception.ros import allocator, stop_request


def report(period: float = 5.0) -> None:
    start = time.monotonic()
    while True:
        time.sleep(period)
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        print(f"TRACE {time.monotonic() - start:.0f} {traced:.1f} {len(gc.get_objects())}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    stop_request.install()
    allocator.tune_malloc()
    tracemalloc.start()
    threading.Thread(target=report, daemon=True).start()
    from mix_perception.ros.mixer_node import main

    main()
