"""Node `safety_monitor` (executable `safety_monitor`): a verdict for every frame, and a watchdog.

Topics (relative names, remappable):
- subscribes `mixer/classification` (MixedClassification, reliable) and `mixer/rejected`
  (diagnostic_msgs/DiagnosticArray: the frames the mixer could not use, see mixer_node);
- publishes `~/status` (SafetyStatus; reliable, transient local, depth 10: a late joiner gets the
  last statuses, the newest last): one per classified frame, one per rejected frame (reason
  `bad_input`), and one per watchdog tick while no frame arrived for longer than `max_frame_age`
  (level STALE, reason `stale_stream`; also before the first frame);
- publishes `/diagnostics` every `diagnostics_period` seconds.

The rules are in `safety_rules` (pure functions). Frame age = this node's clock - header.stamp, so
the camera's and this node's clocks must agree (same machine, or synchronized). `required_radius`
and `max_frame_age` are dynamic parameters.
"""

import sys
import threading
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from mix_perception.ros import diagnostics, parameters, safety_rules

NODE_NAME = "safety_monitor"
STATUS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class SafetyMonitorNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        from diagnostic_msgs.msg import DiagnosticArray

        from mix_perception.msg import MixedClassification, SafetyStatus

        values = parameters.declare(self, parameters.SAFETY_MONITOR)
        self.limits = safety_rules.Limits(values["required_radius"], values["max_frame_age"])
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._status_type = SafetyStatus
        self.lock = threading.Lock()
        self.last_arrival = time.monotonic()
        self.consecutive_unsafe = 0
        self.judged = 0
        self.unsafe = 0
        self.by_reason: dict[str, int] = {}
        self.last_level = safety_rules.STALE
        self.last_alpha = 0.0

        self.status_pub = self.create_publisher(SafetyStatus, "~/status", STATUS_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(MixedClassification, "mixer/classification", self._on_classification, reliable)
        self.create_subscription(DiagnosticArray, "mixer/rejected", self._on_rejected, reliable)
        self.create_timer(values["watchdog_period"], self._on_watchdog)
        self.create_timer(values["diagnostics_period"], self._publish_diagnostics)

    def _apply_parameters(self, params) -> None:
        for parameter in params:
            if parameter.name == "required_radius":
                self.limits = self.limits._replace(required_radius=float(parameter.value))
            elif parameter.name == "max_frame_age":
                self.limits = self.limits._replace(max_frame_age=float(parameter.value))

    def _age(self, stamp) -> float:
        """Seconds between the frame's stamp and now on this node's clock."""
        return (self.get_clock().now() - Time.from_msg(stamp, clock_type=self.get_clock().clock_type)).nanoseconds / 1e9

    def _on_classification(self, msg) -> None:
        self.last_arrival = time.monotonic()
        verdict = safety_rules.judge_frame(
            msg.certified, msg.certified_radius, msg.alpha, self._age(msg.header.stamp), self.limits
        )
        self._publish(verdict, msg.header, msg.certified_radius if msg.certified else 0.0, msg.alpha)

    def _on_rejected(self, msg) -> None:
        self.last_arrival = time.monotonic()
        self._publish(safety_rules.judge_rejected(), msg.header, 0.0, self.last_alpha)

    def _on_watchdog(self) -> None:
        verdict = safety_rules.judge_stream(time.monotonic() - self.last_arrival, self.limits)
        if verdict is not None:
            from std_msgs.msg import Header

            header = Header(stamp=self.get_clock().now().to_msg())
            self._publish(verdict, header, 0.0, self.last_alpha)

    def _publish(self, verdict: safety_rules.Verdict, header, radius: float, alpha: float) -> None:
        with self.lock:
            self.consecutive_unsafe = safety_rules.next_consecutive(self.consecutive_unsafe, verdict)
            self.judged += 1
            self.unsafe += 0 if verdict.safe else 1
            for reason in verdict.reasons:
                self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            self.last_level = verdict.level
            self.last_alpha = alpha
            consecutive = self.consecutive_unsafe
        status = self._status_type()
        status.header = header
        status.safe = verdict.safe
        status.level = verdict.level
        status.reason = verdict.reason
        status.certified_radius = float(radius)
        status.required_radius = float(self.limits.required_radius)
        status.alpha = float(alpha)
        status.consecutive_unsafe = consecutive
        self.status_pub.publish(status)

    def _publish_diagnostics(self) -> None:
        with self.lock:
            values = {
                "verdicts": self.judged,
                "unsafe": self.unsafe,
                "consecutive_unsafe": self.consecutive_unsafe,
                "required_radius": self.limits.required_radius,
                "max_frame_age_s": self.limits.max_frame_age,
            }
            values.update({f"reason_{reason}": count for reason, count in sorted(self.by_reason.items())})
            level = self.last_level
        message = {0: "safe", 1: "warning", 2: "unsafe", 3: "stale"}[level]
        status = diagnostics.make_status(f"{self.get_name()}: safety", level, message, values)
        self.diagnostics_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(), [status]))


def main(argv=None) -> int:
    """Entry point of `safety_monitor`."""
    from mix_perception.ros.spin import run_node

    return run_node("safety_monitor", SafetyMonitorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
