"""The stop request of a node process: SIGINT and SIGTERM set `STOP`; during startup the first one also
raises StopRequested, so a Ctrl-C at any moment of startup ends the node at once, with status 0.

Standard library only, so the executables install it before rclpy and torch are imported (seconds on
a busy machine). Why raise during startup, the way Python's own KeyboardInterrupt works: startup is a
few long steps (importing torch, loading models, proving h's Lipschitz constant), each of which can
take longer than the 2 s a launch waits; checks between them would still wait for the step in
progress. The exception is a BaseException, so no `except Exception` on the way (a failed configure,
a model loader) mistakes it for a startup error, and the entry point (spin.run_node, executables)
turns it into exit 0 after destroying what exists. It is raised once: `end_startup()` (called by
run_node before spinning, and before its cleanup) and every later signal only set STOP, so cleanup
survives a second Ctrl-C, e.g. the one `ros2 launch` forwards. Once spinning, the spin loop ends when
STOP is set (checked every 0.1 s). A signal is handled between Python bytecodes of the main thread:
one long C call (a big SVD) delays it until it returns, hence core/lipschitz.py keeps its own short.
"""

import signal
import threading

STOP = threading.Event()
_starting = False


class StopRequested(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it replaces
    """SIGINT or SIGTERM arrived while the process was still starting up."""


def _on_signal(*_) -> None:
    global _starting
    STOP.set()
    if _starting:
        _starting = False
        raise StopRequested


def install(during_startup: bool = False) -> threading.Event:
    """Make SIGINT and SIGTERM set STOP, and with `during_startup` also raise StopRequested at the first
    one until `end_startup()` (a later install without it keeps that); returns STOP."""
    global _starting
    _starting = _starting or (during_startup and not STOP.is_set())
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _on_signal)
    return STOP


def end_startup() -> None:
    """From now on a signal only sets STOP."""
    global _starting
    _starting = False
