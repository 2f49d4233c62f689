"""The stop request of a node process: SIGINT and SIGTERM set `STOP`, and the spin loop ends when it is set.

Standard library only, so the executables install it before rclpy and torch are imported (seconds on
a busy machine): a Ctrl-C during startup then ends the node after it started, with status 0, instead
of a KeyboardInterrupt traceback out of an import.
"""

import signal
import threading

STOP = threading.Event()


def install() -> threading.Event:
    """Make SIGINT and SIGTERM set STOP (a second signal sets it again: harmless); returns STOP."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: STOP.set())
    return STOP
