"""Node `run_summary`: listens to the pipeline and sums it up (what `mix-perception run` prints).

Subscribes /mixer/classification, /safety_monitor/status and /demo_camera/ground_truth. Latency of a
frame = time its classification arrived here - its header stamp (same clock when the camera runs in
this process or on this machine). Accuracy matches classifications to ground truth by header stamp, and
the monitor's verdicts to both (a SafetyStatus carries its frame's stamp): `safe_wrong` of `safe_with_truth`
is the error rate among the frames the monitor passed, the rate its acceptance rule bounds;
`safe_without_truth` counts passed frames of no known class (e.g. the --demo-ood digits).
"""

import threading

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from mix_perception.ros.safety_monitor import STATUS_QOS

TRUTH_MEMORY = 10_000


def stamp_key(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class SummaryNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("run_summary", **node_kwargs)
        from mix_perception.msg import GroundTruth, MixedClassification, SafetyStatus

        self.lock = threading.Lock()
        self.truth: dict[int, int] = {}
        self.latencies_ms: list[float] = []
        self.inference_ms: list[float] = []
        self.radii: list[float] = []
        self.certified = 0
        self.frames = 0
        self.by_source: dict[str, int] = {}
        self.with_truth = 0
        self.correct = 0
        self.statuses = 0
        self.unsafe = 0
        self.flags: dict[str, int] = {}
        self.outcomes: dict[int, bool] = {}  # stamp -> classified correctly, until its verdict arrives
        self.verdicts: dict[int, bool] = {}  # stamp -> safe, until its outcome arrives
        self.safe_with_truth = 0
        self.safe_wrong = 0
        self.safe_without_truth = 0
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(GroundTruth, "/demo_camera/ground_truth", self._on_truth, reliable)
        self.create_subscription(MixedClassification, "/mixer/classification", self._on_classification, reliable)
        self.create_subscription(SafetyStatus, "/safety_monitor/status", self._on_status, STATUS_QOS)

    def _on_truth(self, msg) -> None:
        with self.lock:
            self.truth[stamp_key(msg.header.stamp)] = msg.label_id
            if len(self.truth) > TRUTH_MEMORY:
                self.truth.pop(next(iter(self.truth)))

    def _on_classification(self, msg) -> None:
        now = self.get_clock().now()
        latency_ms = (now - Time.from_msg(msg.header.stamp, clock_type=now.clock_type)).nanoseconds / 1e6
        with self.lock:
            self.frames += 1
            self.by_source[msg.source] = self.by_source.get(msg.source, 0) + 1
            self.latencies_ms.append(latency_ms)
            self.inference_ms.append(msg.inference_ms)
            if msg.certified:
                self.certified += 1
                self.radii.append(msg.certified_radius)
            label = self.truth.pop(stamp_key(msg.header.stamp), -1)
            if label >= 0:
                self.with_truth += 1
                self.correct += int(label == msg.class_id)
            correct = label == msg.class_id if label >= 0 else None
            self._match(self.outcomes, self.verdicts, stamp_key(msg.header.stamp), correct)

    def _match(self, mine: dict, theirs: dict, key: int, value) -> None:
        """Pair a frame's outcome (correct: bool, or None without ground truth) with its verdict (safe),
        whichever arrives first (under the lock)."""
        if key not in theirs:
            mine[key] = value
            if len(mine) > TRUTH_MEMORY:
                mine.pop(next(iter(mine)))
            return
        other = theirs.pop(key)
        correct, safe = (value, other) if mine is self.outcomes else (other, value)
        self.safe_with_truth += int(safe and correct is not None)
        self.safe_wrong += int(safe and correct is False)
        self.safe_without_truth += int(safe and correct is None)

    def _on_status(self, msg) -> None:
        with self.lock:
            self.statuses += 1
            if msg.level != msg.STALE:  # a frame's verdict, not a watchdog tick
                self._match(self.verdicts, self.outcomes, stamp_key(msg.header.stamp), msg.safe)
            if not msg.safe:
                self.unsafe += 1
                for reason in msg.reasons:
                    self.flags[reason] = self.flags.get(reason, 0) + 1

    def report(self, seconds: float, mixer_counters: dict) -> dict:
        """Summary dict: frames (in all and by source camera), rate_hz, latency p50/p99 (ms), accuracy, certified
        fraction, flags by reason."""
        with self.lock:
            latencies = np.asarray(self.latencies_ms, dtype=float)
            return {
                "seconds": seconds,
                "frames": self.frames,
                "frames_by_source": dict(self.by_source),
                "rate_hz": self.frames / seconds if seconds > 0 else 0.0,
                "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else 0.0,
                "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies.size else 0.0,
                "inference_p50_ms": float(np.median(self.inference_ms)) if self.inference_ms else 0.0,
                "frames_with_truth": self.with_truth,
                "accuracy": self.correct / self.with_truth if self.with_truth else None,
                "certified_fraction": self.certified / self.frames if self.frames else None,
                "median_certified_radius": float(np.median(self.radii)) if self.radii else 0.0,
                "statuses": self.statuses,
                "unsafe": self.unsafe,
                "flags_by_reason": dict(self.flags),
                "safe_with_truth": self.safe_with_truth,
                "safe_wrong": self.safe_wrong,
                "safe_without_truth": self.safe_without_truth,
                "mixer": dict(mixer_counters),
            }
