"""The mixer's counters and its /diagnostics statuses, behind their own lock.

Counted here: frames published, rejected (by camera and by code), lost to an inference failure, and
lost before they reached the mixer (`lost`: gaps in a publisher's publication sequence numbers, the
frames DDS replaced in a full queue or a best-effort link dropped; counted from the second frame a
publisher's frames reach this subscription, per camera and publisher), plus per camera the rate
(frames/s over 5 s) and latency (ms, arrival to publication, p50 / p99) and the inference time (ms,
p50). Frames received and dropped are the mailbox's (`FrameSlots.counts`), passed in where needed.
"""

import threading
from collections import Counter

from mix_perception.ros import diagnostics


class MixerStats:
    """Thread-safe counters of the mixer: the worker and the callbacks count, the timer reads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._processed: Counter = Counter()
        self._rejected: Counter = Counter()
        self._rejected_by_code: Counter = Counter()
        self._failed = 0
        self._lost: Counter = Counter()
        self._last_sequence: dict[tuple, int] = {}
        self._latency: dict[str, diagnostics.RollingStats] = {}
        self._inference = diagnostics.RollingStats()

    def count_arrival(self, source: str, info: dict) -> None:
        """Note a frame's publication sequence number (rclpy MessageInfo); a gap since the same publisher's
        previous frame counts the frames in it as lost. Unknown numbers (None, 0) count nothing."""
        sequence = info.get("publication_sequence_number")
        if not sequence:
            return
        key = (source, bytes(info["publisher_gid"]["data"]) if info.get("publisher_gid") else b"")
        with self._lock:
            last = self._last_sequence.get(key)
            self._last_sequence[key] = sequence
            if last is not None and sequence > last + 1:
                self._lost[source] += sequence - last - 1

    def forget_publishers(self) -> None:
        """Start the sequence numbers afresh (new subscriptions: what was sent in between is not lost)."""
        with self._lock:
            self._last_sequence.clear()

    def count_rejected(self, source: str, code: str) -> int:
        """Count a rejected frame of `source`; returns the rejections so far, all cameras."""
        with self._lock:
            self._rejected[source] += 1
            self._rejected_by_code[code] += 1
            return self._rejected.total()

    def count_failed(self, frames: int) -> None:
        """Count `frames` lost to an inference failure."""
        with self._lock:
            self._failed += frames

    def count_published(self, source: str, latency_ms: float, inference_ms: float) -> None:
        """Count a published frame of `source`: arrival-to-publication latency and inference time, ms."""
        with self._lock:
            self._processed[source] += 1
            self._latency.setdefault(source, diagnostics.RollingStats()).add(latency_ms)
            self._inference.add(inference_ms)

    def cameras(self, slot_counts: dict) -> dict:
        """{source: {received, processed, dropped, rejected}} for every camera that sent a frame;
        `slot_counts`: FrameSlots.counts()."""
        with self._lock:
            sources = {*slot_counts, *self._rejected, *self._lost}
            empty = {"received": 0, "dropped": 0}
            return {
                source: {
                    "received": slot_counts.get(source, empty)["received"],
                    "processed": self._processed[source],
                    "dropped": slot_counts.get(source, empty)["dropped"],
                    "rejected": self._rejected[source],
                    "lost": self._lost[source],
                }
                for source in sorted(sources)
            }

    def totals(self, slot_counts: dict) -> dict:
        """Frame counters over all cameras: received (handed to the worker), processed, dropped, rejected,
        lost (before the mixer), failed."""
        cameras = self.cameras(slot_counts).values()
        keys = ("received", "processed", "dropped", "rejected", "lost")
        totals = {key: sum(camera[key] for camera in cameras) for key in keys}
        with self._lock:
            return totals | {"failed": self._failed}

    def statuses(self, name: str, state: str, settings: dict, slot_counts: dict) -> list:
        """The DiagnosticStatuses "<name>: inference" (totals, `settings`: alpha, device, ...) and "<name>: camera
        <topic>" (one per camera) of node `name` (its fully qualified name, e.g. /cell1/mixer: unique among the
        mixers of a robot) in lifecycle `state` ("active" | "inactive" | "unconfigured")."""
        totals, cameras = self.totals(slot_counts), self.cameras(slot_counts)
        with self._lock:
            inference_p50 = self._inference.latency_percentile(50)
            by_code = dict(self._rejected_by_code)
            latency = {source: (stats.rate(), stats.latency_percentile(50), stats.latency_percentile(99))
                       for source, stats in self._latency.items()}  # fmt: skip
        level, message = {"active": (0, "active"), "inactive": (1, "configured, inactive")}.get(state, (1, state))
        if totals["failed"]:
            level, message = 1, "inference failed on some frames"
        values = {
            "state": state,
            "rate_hz": sum(rate for rate, _, _ in latency.values()),
            "latency_p50_ms": max((p50 for _, p50, _ in latency.values()), default=0.0),
            "latency_p99_ms": max((p99 for _, _, p99 in latency.values()), default=0.0),
            "inference_p50_ms": inference_p50,
            "frames_received": totals["received"],
            "frames_processed": totals["processed"],
            "frames_dropped": totals["dropped"],
            "frames_rejected": totals["rejected"],
            "frames_lost": totals["lost"],
            "inference_failures": totals["failed"],
        }
        values |= settings
        values.update({f"rejected_{code}": count for code, count in sorted(by_code.items())})
        statuses = [diagnostics.make_status(f"{name}: inference", level, message, values)]
        for source, numbers in cameras.items():
            rate, p50, p99 = latency.get(source, (0.0, 0.0, 0.0))
            camera_values = numbers | {"rate_hz": rate, "latency_p50_ms": p50, "latency_p99_ms": p99}
            statuses.append(diagnostics.make_status(f"{name}: camera {source}", 0, "", camera_values))
        return statuses
