"""diagnostic_msgs/DiagnosticArray built by hand (diagnostic_updater is not on PyPI), plus the
rolling statistics the nodes report: rate over a window and latency percentiles."""

import collections
import time

import numpy as np


def make_status(name: str, level: int, message: str, values: dict, hardware_id: str = ""):
    """One diagnostic_msgs/DiagnosticStatus; values become KeyValue strings (floats: 4 significant digits)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(key), value=format_value(value)) for key, value in values.items()]
    return status


def make_array(stamp, statuses):
    """A DiagnosticArray with `stamp` (builtin_interfaces/Time) holding `statuses`."""
    from diagnostic_msgs.msg import DiagnosticArray

    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = list(statuses)
    return array


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def values_of(status) -> dict:
    """KeyValue list of a DiagnosticStatus -> dict of strings."""
    return {pair.key: pair.value for pair in status.values}


class RollingStats:
    """Event times and latencies over the last `window` events (monotonic clock, seconds / milliseconds)."""

    def __init__(self, window: int = 500):
        self.times = collections.deque(maxlen=window)
        self.latencies_ms = collections.deque(maxlen=window)

    def add(self, latency_ms: float | None = None, now: float | None = None) -> None:
        self.times.append(time.monotonic() if now is None else now)
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    def rate(self, now: float | None = None, horizon: float = 5.0) -> float:
        """Events per second over the last `horizon` seconds (0 when fewer than two events)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self.times if now - t <= horizon]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        """q-th percentile (0-100) of the recent latencies in ms; 0 when none."""
        if not self.latencies_ms:
            return 0.0
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=float), q))
