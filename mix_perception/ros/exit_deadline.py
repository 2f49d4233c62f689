"""A deadline on a node process's own teardown that holds even while the main thread is stuck in C.

Why: Fast DDS can block inside rcl_publisher_fini (deleting a DataWriter while the discovery of peers is still
in progress, seen 1 in 20 launches stopped 1 s after the start) for more than the 2 s a launch waits, and
rclpy holds the GIL during that call, so no Python code can run: neither a signal handler nor a timer thread
(tried: it never fires). A POSIX timer with SIGEV_THREAD notification (timer_create, via ctypes: glibc, Linux)
makes the C library start its own thread when the timer expires and call a C function there with the timer's
value as its argument. The function is the C library's `_exit` and the value the process's exit status (0
after a stop request): when the teardown has not finished by the deadline, the process ends with that status
without taking the GIL. stdio is flushed before the deadline is armed; what a fired deadline skips is the rest
of the teardown: the DDS goodbyes (peers forget this participant by its lease timeout instead) and the last
flush of the ROS log files.

Where timer_create is missing (not glibc), `arm` returns False and the teardown is unbounded.
"""

import ctypes
import ctypes.util

_CLOCK_MONOTONIC = 1
_SIGEV_THREAD = 2


class _SigVal(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


class _ThreadNotification(ctypes.Structure):
    _fields_ = [("function", ctypes.c_void_p), ("attributes", ctypes.c_void_p)]


class _SigEventDetail(ctypes.Union):
    _fields_ = [("pad", ctypes.c_int * 12), ("thread", _ThreadNotification)]


class _SigEvent(ctypes.Structure):
    """struct sigevent of Linux (64 bytes)."""

    _fields_ = [("value", _SigVal), ("signo", ctypes.c_int), ("notify", ctypes.c_int), ("detail", _SigEventDetail)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def _libc():
    """The C library holding timer_create (glibc >= 2.34 has it in libc, older ones in librt), or None."""
    for name in ("c", "rt"):
        path = ctypes.util.find_library(name)
        library = ctypes.CDLL(path) if path else None
        if library is not None and hasattr(library, "timer_create"):
            return library
    return None


def arm(seconds: float, status: int = 0) -> bool:
    """End the process with `status` `seconds` from now, from a C library thread; True when armed.

    The timer is never disarmed: call this only when the process is about to end anyway."""
    libc = _libc()
    if libc is None:
        return False
    event = _SigEvent(notify=_SIGEV_THREAD)
    event.value.sival_int = status  # _exit's argument
    event.detail.thread.function = ctypes.cast(libc._exit, ctypes.c_void_p).value
    timer = ctypes.c_void_p()
    if libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
        return False
    whole = int(seconds)
    when = _ITimerSpec(value=_TimeSpec(whole, int((seconds - whole) * 1e9)))
    return libc.timer_settime(timer, 0, ctypes.byref(when), None) == 0
