"""The stop request of a node process: SIGINT and SIGTERM set `STOP`; during startup the first one also
ends the startup at once, so a Ctrl-C at any moment of startup ends the node with status 0.

Standard library only, so the executables install it before rclpy and torch are imported (seconds on
a busy machine). Startup is a few long steps (importing torch, loading models, proving h's Lipschitz
constant), each of which can take longer than the 2 s a launch waits, so checks between them would
still wait for the step in progress. The first signal of the startup therefore acts at once, in one of
two ways:
- before ROS is initialised (`ros_started()` not yet called: the process is importing): the process
  ends at once with status 0 (os._exit). Nothing exists to clean up, and raising is not safe there:
  an exception raised while torch's C++ initialisation runs Python code crosses C++ frames that
  cannot unwind it, and the process aborts ("terminate called", seen once in 20 launches).
- once ROS is initialised: StopRequested is raised, the way Python's own KeyboardInterrupt works, so
  the entry point (spin.run_node, executables) destroys the nodes made so far and exits 0. It is a
  BaseException, so no `except Exception` on the way (a failed configure, a model loader) mistakes it
  for a startup error.
It acts once: `end_startup()` (called by run_node before spinning, and before its cleanup) and every
later signal only set STOP, so cleanup survives a second Ctrl-C, e.g. the one `ros2 launch` forwards.
Once spinning, the spin loop ends when STOP is set (checked every 0.1 s). A signal is handled between
Python bytecodes of the main thread: one long C call (a big SVD) delays it until it returns, hence
core/lipschitz.py keeps its own short.
"""

import os
import signal
import sys
import threading

from mix_perception.ros import exit_deadline

STOP = threading.Event()

# Seconds after the first signal within which a node executable ends (install's `exit_within`): a launch
# waits 2 s before it escalates.
EXIT_WITHIN_S = 1.5

# What the first signal of the startup does: None (only set STOP), "exit" or "raise".
_on_first_signal = None
_exit_within = None  # seconds, or None: no deadline on the process after the first signal


class StopRequested(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it replaces
    """SIGINT or SIGTERM arrived while the process was still starting up, after ROS was initialised."""


def _on_signal(*_) -> None:
    global _on_first_signal, _exit_within
    if _exit_within is not None:  # the first signal: whatever blocks from here, the process ends in time
        exit_deadline.arm(_exit_within, 0)
        _exit_within = None
    STOP.set()
    action, _on_first_signal = _on_first_signal, None
    if action == "exit":
        exit_now(0)
    if action == "raise":
        raise StopRequested


def install(during_startup: bool = False, exit_within: float | None = None) -> threading.Event:
    """Make SIGINT and SIGTERM set STOP; with `during_startup` the first one also ends the process at once
    (exit 0) until `ros_started()`, then raises StopRequested until `end_startup()` (a later install
    without it keeps that). With `exit_within` (seconds; node executables) the first signal also arms
    exit_deadline: the process ends with status 0 that long after it, even when a teardown (or the
    destruction of a half-built node while the startup unwinds) blocks in DDS. Returns STOP."""
    global _on_first_signal, _exit_within
    if during_startup and _on_first_signal is None and not STOP.is_set():
        _on_first_signal = "exit"
    if exit_within is not None and not STOP.is_set():
        _exit_within = exit_within
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _on_signal)
    return STOP


def ros_started() -> None:
    """ROS is initialised: from now on a startup signal raises StopRequested, so what exists is destroyed."""
    global _on_first_signal
    if _on_first_signal == "exit":
        _on_first_signal = "raise"


def end_startup() -> None:
    """From now on a signal only sets STOP."""
    global _on_first_signal
    _on_first_signal = None


def flush_stdio() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def exit_now(status: int) -> None:
    """Flush stdio and end the process with `status`, without the interpreter's finalization (with torch
    loaded it takes seconds, longer than a robot stack waits for a node to stop)."""
    flush_stdio()
    os._exit(status)
