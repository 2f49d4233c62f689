"""Node `safety_monitor` (executable `safety_monitor`): a verdict for every frame, and a watchdog per camera.

Topics (relative names, remappable):
- subscribes `mixer/classification` (MixedClassification, reliable) and `mixer/rejected`
  (RejectedFrame, reliable: the frames the mixer could not use);
- publishes `~/status` (SafetyStatus; reliable, transient local, depth 10: a late joiner gets the
  last statuses, the newest last): one per classified frame, one per rejected frame (reason
  `bad_input`), and, per camera (`source`), one per watchdog tick while that camera sent no frame for
  longer than `max_frame_age` (level STALE, reason `stale_stream`);
- publishes `/diagnostics` every `diagnostics_period` seconds: one status per camera.

Each camera is judged and watched on its own: a silent camera is flagged STALE within max_frame_age
plus one watchdog tick while the others stay OK, and its consecutive_unsafe count is its own. The
cameras watched are those listed in `sources` (STALE until their first frame; "" stands for the
stream as a whole until any frame arrives, so a mixer that never publishes is flagged too) and every
camera that sends a frame. While the mixer is not active no frame arrives, so every camera is STALE.

The rules are in `safety_rules` (pure functions), the statistical layer (acceptance rule, OOD level,
per-camera shift watch; parameters acceptance.*, ood.*, shift.*) in `safety_guarantee`; a statistical
parameter set without what it needs (e.g. acceptance.score without epsilon, delta, calibration_size,
coverage) stops the node at startup with one line. Each camera's /diagnostics status states the
guarantee the monitor runs under. Frame age = this node's clock - header.stamp, so the camera's and
this node's clocks must agree (same machine, or synchronized). `required_radius` and `max_frame_age`
are dynamic parameters.
"""

import sys
import threading
import time
from dataclasses import dataclass, field

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from mix_perception.ros import diagnostics, parameters, safety_rules
from mix_perception.ros.safety_guarantee import SHIFT_STREAMS, ShiftWatch, guarantee_from

NODE_NAME = "safety_monitor"
STATUS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
WHOLE_STREAM = ""  # the source name of "any camera" before the first frame


@dataclass
class Camera:
    """What the monitor remembers of one source: when its last frame arrived (time.monotonic()),
    its unsafe streak, the alpha and level of its last verdict, its counters and its shift watch."""

    last_arrival: float
    shift: ShiftWatch | None
    consecutive_unsafe: int = 0
    last_alpha: float = 0.0
    last_level: int = safety_rules.STALE
    judged: int = 0
    unsafe: int = 0
    by_reason: dict = field(default_factory=dict)


def source_name(topic: str) -> str:
    """A `sources` entry as the mixer reports it: fully qualified ("/" prefixed), "" kept as it is."""
    return topic if not topic or topic.startswith("/") else "/" + topic


class SafetyMonitorNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        from diagnostic_msgs.msg import DiagnosticArray

        from mix_perception.msg import MixedClassification, RejectedFrame, SafetyStatus

        values = parameters.declare_and_read(self, parameters.SAFETY_MONITOR)
        self.limits = safety_rules.Limits(values["required_radius"], values["max_frame_age"])
        self.guarantee = guarantee_from(values)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._status_type = SafetyStatus
        self.lock = threading.Lock()
        started = time.monotonic()
        self.cameras = {source_name(topic): self._camera(started) for topic in values["sources"]}

        self.status_pub = self.create_publisher(SafetyStatus, "~/status", STATUS_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(MixedClassification, "mixer/classification", self._on_classification, reliable)
        self.create_subscription(RejectedFrame, "mixer/rejected", self._on_rejected, reliable)
        self.create_timer(values["watchdog_period"], self._on_watchdog)
        self.create_timer(values["diagnostics_period"], self._publish_diagnostics)

    def _camera(self, last_arrival: float) -> Camera:
        shift = self.guarantee.shift
        return Camera(last_arrival, ShiftWatch(shift) if shift else None)

    def _apply_parameters(self, params) -> None:
        for parameter in params:
            if parameter.name == "required_radius":
                self.limits = self.limits._replace(required_radius=float(parameter.value))
            elif parameter.name == "max_frame_age":
                self.limits = self.limits._replace(max_frame_age=float(parameter.value))

    def _age(self, stamp) -> float:
        """Seconds between the frame's stamp and now on this node's clock."""
        return (self.get_clock().now() - Time.from_msg(stamp, clock_type=self.get_clock().clock_type)).nanoseconds / 1e9

    def _arrived(self, source: str) -> Camera:
        """The camera of `source`, marked as heard from now; the whole-stream stand-in retires."""
        with self.lock:
            if source != WHOLE_STREAM:
                self.cameras.pop(WHOLE_STREAM, None)
            camera = self.cameras.get(source)
            if camera is None:
                camera = self.cameras[source] = self._camera(0.0)
            camera.last_arrival = time.monotonic()
            return camera

    def _on_classification(self, msg) -> None:
        camera = self._arrived(msg.source)
        with self.lock:
            p_values = (msg.shift_p_value, msg.input_shift_p_value)  # safety_guarantee.SHIFT_STREAMS
            shifted = camera.shift.update(p_values) if camera.shift else False
        evidence = self.guarantee.evidence(msg, self.limits.required_radius, shifted)
        verdict = safety_rules.judge_frame(
            msg.certified, msg.certified_radius, msg.alpha, self._age(msg.header.stamp), self.limits, evidence
        )
        radius = msg.certified_radius if msg.certified else 0.0
        self._publish(msg.source, camera, verdict, msg.header, radius, msg.alpha)

    def _on_rejected(self, msg) -> None:
        camera = self._arrived(msg.source)
        self._publish(msg.source, camera, safety_rules.judge_rejected(), msg.header, 0.0, camera.last_alpha)

    def _on_watchdog(self) -> None:
        from std_msgs.msg import Header

        now = time.monotonic()
        with self.lock:
            cameras = list(self.cameras.items())
        for source, camera in cameras:
            verdict = safety_rules.judge_stream(now - camera.last_arrival, self.limits)
            if verdict is not None:
                header = Header(stamp=self.get_clock().now().to_msg())
                self._publish(source, camera, verdict, header, 0.0, camera.last_alpha)

    def _publish(self, source: str, camera: Camera, verdict, header, radius: float, alpha: float) -> None:
        with self.lock:
            camera.consecutive_unsafe = safety_rules.next_consecutive(camera.consecutive_unsafe, verdict)
            camera.judged += 1
            camera.unsafe += 0 if verdict.safe else 1
            for reason in verdict.reasons:
                camera.by_reason[reason] = camera.by_reason.get(reason, 0) + 1
            camera.last_level = verdict.level
            camera.last_alpha = alpha
            consecutive = camera.consecutive_unsafe
        status = self._status_type()
        status.header = header
        status.safe = verdict.safe
        status.level = verdict.level
        status.reason = verdict.reason
        status.reasons = list(verdict.reasons)
        status.certified_radius = float(radius)
        status.required_radius = float(self.limits.required_radius)
        status.alpha = float(alpha)
        status.consecutive_unsafe = consecutive
        status.source = source
        self.status_pub.publish(status)

    def _publish_diagnostics(self) -> None:
        statuses = []
        with self.lock:
            for source, camera in sorted(self.cameras.items()):
                values = {
                    "verdicts": camera.judged,
                    "unsafe": camera.unsafe,
                    "consecutive_unsafe": camera.consecutive_unsafe,
                    "required_radius": self.limits.required_radius,
                    "max_frame_age_s": self.limits.max_frame_age,
                    **self.guarantee.values(),
                    **{f"shift_alarms_{s}": camera.shift.alarms[s] if camera.shift else 0 for s in SHIFT_STREAMS},
                }
                values.update({f"reason_{reason}": count for reason, count in sorted(camera.by_reason.items())})
                message = {0: "safe", 1: "warning", 2: "unsafe", 3: "stale"}[camera.last_level]
                name = f"{self.get_fully_qualified_name()}: safety {source or '(any camera)'}"
                statuses.append(diagnostics.make_status(name, camera.last_level, message, values))
        self.diagnostics_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(), statuses))


def main(argv=None) -> None:
    """Entry point of `safety_monitor`."""
    from mix_perception.ros.spin import run_node

    run_node("safety_monitor", SafetyMonitorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
