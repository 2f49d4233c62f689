"""Node `mixer` (executable `mixer_node`): a managed (lifecycle) node that classifies the frames of one or
more cameras with the mixed classifier. This module is the node's lifecycle and wiring; `mixer_runtime`
turns the parameters into models, certifier and converter, `mixer_stats` counts and reports on
/diagnostics, `frame_slot` holds the newest frame per camera.

Lifecycle: configure validates the parameters, loads the models (else fails with one line) and creates
the publishers; activate subscribes and starts the worker; deactivate unsubscribes and stops it (the
batch in flight is published); cleanup frees the models. `autostart` (default): configure + activate at
startup. One INFO line each when the node is configured, becomes active and becomes inactive.
Topics (relative names; remap to the cameras):
- subscribes every topic of `image_topics` (sensor_msgs/Image; QoS sensor data, keep last `image_depth`,
  reliability `image_reliability`), and `<topic>/compressed` when `subscribe_compressed`;
- publishes `~/classification` (MixedClassification, reliable, depth 10 or two per camera if more) per
  frame: header copied from the image, `source` = the image topic (fully qualified);
- publishes `~/rejected` (RejectedFrame, reliable, the same depth) per frame it cannot use (header, `source`,
  `code`, `detail`); no classification is published for it; the safety monitor flags it;
- publishes `/diagnostics` every `diagnostics_period` seconds, in every state.
Threads: a raw image is checked in its callback (frames a publisher sent that never arrived are counted
as lost, from its sequence numbers), a compressed one decoded on the worker; one worker takes the newest
frame of every camera, classifies them in one batch and publishes.

Parameters (`parameters.MIXER`): `alpha` (checked here, at declaration and on set) and `required_radius`
are dynamic; the others apply at the next configure, settable while the mixer is not active.
"""

import sys
import threading
import time
from functools import partial
from typing import NamedTuple

from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from mix_perception.core.errors import first_line
from mix_perception.ros import diagnostics, parameters
from mix_perception.ros.frame_slot import FrameSlots
from mix_perception.ros.image_conversion import ImageError, frame_pixels
from mix_perception.ros.mixer_runtime import Runtime, build_runtime
from mix_perception.ros.mixer_stats import MixerStats
from mix_perception.ros.spin import reliability_policy, run_node

NODE_NAME = "mixer"
LOG_THROTTLE_S = 5.0
SPECS = {spec.name: spec for spec in parameters.MIXER}


class Frame(NamedTuple):
    """A frame waiting for the worker: a raw image's checked pixels, or a compressed image to decode."""

    header: object
    pixels: tuple | None  # ((H, W, C) array, order), or None for a compressed image
    compressed: object  # sensor_msgs/CompressedImage, or None
    received: float  # time.monotonic() at arrival


class MixerNode(LifecycleNode):
    """The mixer. `standard` and `robust` (nn.Modules on [0, 1] pixels) may be passed in (tests); otherwise
    configure loads them from the `standard_model` / `robust_model` parameters. Unconfigured until
    `start` (autostart) or a lifecycle transition configures it."""

    def __init__(self, standard=None, robust=None, **node_kwargs):
        # what destroy_node() needs, set before anything can raise, the base class's __init__ included: the
        # context destroys a half-built node when a Ctrl-C ends the startup inside it
        self.runtime: Runtime | None = None
        self.configure_error = ""
        self.autostarting = False
        self.active = False
        self.worker: threading.Thread | None = None
        self.image_subscriptions = []
        self.classification_pub = self.rejected_pub = None
        self.slots = FrameSlots()
        self.slots.close()
        self.stats = MixerStats()
        self.unbounded_logged = set()
        super().__init__(NODE_NAME, **node_kwargs)
        from diagnostic_msgs.msg import DiagnosticArray

        from mix_perception.msg import MixedClassification, RejectedFrame

        self._classification_type, self._rejected_type = MixedClassification, RejectedFrame
        self.models = (standard, robust) if standard is not None and robust is not None else None

        parameters.declare(self, parameters.MIXER, reconfigurable=True)
        self.alpha = self.get_parameter("alpha").value
        if parameters.alpha_problem(self.alpha):
            raise ValueError(parameters.alpha_problem(self.alpha))
        self.required_radius = self.get_parameter("required_radius").value
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.get_parameter("diagnostics_period").value, self._publish_diagnostics)

    def start(self) -> None:
        """With `autostart`: configure and activate; RuntimeError with the one-line reason when configuring fails."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info("mixer unconfigured (autostart false): waiting for lifecycle transitions")
            return
        self.autostarting = True  # the caller reports a failure: on_configure does not log it too
        try:
            configured = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        finally:
            self.autostarting = False
        if not configured:
            raise RuntimeError(self.configure_error)
        self.trigger_activate()

    device = property(lambda self: self.runtime.classifier.device, doc="torch device of the configured models")
    certification = property(lambda self: self.runtime.classifier.certification, doc="inference.Certification")

    def counters(self) -> dict:
        """Frame counters over all cameras: received (handed to the worker), processed, dropped, rejected, failed."""
        return self.stats.totals(self.slots.counts())

    # --- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            parameters.refuse_renamed(self._parameter_overrides, parameters.MIXER_RENAMED)
            self.runtime = build_runtime(parameters.read(self, parameters.MIXER), self.models)
        except Exception as error:  # noqa: BLE001 - every reason is reported as one line
            self.configure_error = first_line(error)
            if not self.autostarting:
                self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        # a batch publishes one message per camera at once: the queue holds two batches, so a reliable
        # listener that is a batch behind loses none
        depth = max(10, 2 * len(self.runtime.topics))
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.classification_pub = self.create_lifecycle_publisher(self._classification_type, "~/classification", qos)
        self.rejected_pub = self.create_lifecycle_publisher(self._rejected_type, "~/rejected", qos)
        constant = self.runtime.classifier.lipschitz_constant
        scale = self.certification.logit_scale
        self.get_logger().info(
            f"mixer configured: device {self.device}, certification {self.certification.method}, "
            f"alpha {self.alpha}, cameras {', '.join(self.runtime.topics)}"
            + ("" if scale == 1.0 else f", h's logits x {scale}")
            + (f", proven l2 constant of h's logits {constant:.6g}" if constant is not None else "")
            + ("" if self.alpha > 0.5 else " (alpha <= 0.5: no frame can be certified)")
        )
        return super().on_configure(state)

    def on_activate(self, state) -> TransitionCallbackReturn:
        from sensor_msgs.msg import CompressedImage, Image

        result = super().on_activate(state)  # enables the publishers before the first frame
        runtime = self.runtime
        sensor, reliability = qos_profile_sensor_data, reliability_policy(runtime.image_reliability)
        qos = QoSProfile(depth=runtime.image_depth, reliability=reliability, durability=sensor.durability,
                         history=sensor.history)  # fmt: skip
        # rclpy's default event handlers (incompatible QoS, incompatible type) are waitables the executor
        # re-adds to its wait set at every wake-up, two per camera, a cost on every frame. A best-effort,
        # volatile subscription is compatible with every publisher, so they are left out there (a
        # publisher of another type then shows as a stale camera, not as a warning).
        events = SubscriptionEventCallbacks(use_default_callbacks=reliability == ReliabilityPolicy.RELIABLE)
        inputs = [(Image, "", self._on_image)] + (
            [(CompressedImage, "/compressed", self._on_compressed)] if runtime.subscribe_compressed else []
        )
        for topic, source in zip(runtime.topics, self._sources(), strict=True):
            for message_type, suffix, on_frame in inputs:
                callback = partial(on_frame, source=source)
                subscription = self.create_subscription(
                    message_type, topic + suffix, callback, qos, event_callbacks=events
                )
                self.image_subscriptions.append(subscription)
        self.stats.forget_publishers()
        self.slots.open()
        self.worker = threading.Thread(target=self._work, name="mixer-inference")
        self.worker.start()
        self.active = True
        self.get_logger().info(f"mixer active: classifying {', '.join(self._sources())}")
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_consuming()
        self.get_logger().info(f"mixer inactive: no longer classifying {', '.join(self._sources())}")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_consuming()
        self._release()
        return super().on_shutdown(state)

    def _sources(self) -> list:
        """The cameras of the configured state, fully qualified."""
        return [self.resolve_topic_name(topic) for topic in self.runtime.topics]

    def _stop_consuming(self) -> None:
        """Unsubscribe, then stop the worker once its batch in flight is published."""
        self.active = False
        for subscription in self.image_subscriptions:
            self.destroy_subscription(subscription)
        self.image_subscriptions = []
        self.slots.close()
        if self.worker is not None and threading.current_thread() is not self.worker:
            self.worker.join()
        self.worker = None

    def _release(self) -> None:
        """Drop the models and the publishers of the configured state."""
        for publisher in filter(None, (self.classification_pub, self.rejected_pub)):
            self.destroy_lifecycle_publisher(publisher)
        self.classification_pub = self.rejected_pub = None
        self.runtime = None

    def destroy_node(self):
        """Stops the worker before the node (and then the context) goes away."""
        self._stop_consuming()
        self._release()
        return super().destroy_node()

    # --- parameters -------------------------------------------------------------------------
    def _validate_parameters(self, params) -> SetParametersResult:
        for parameter in (p for p in params if p.name in SPECS):
            spec = SPECS[parameter.name]
            if parameter.name == "alpha":
                reason = parameters.alpha_problem(parameter.value)
            elif not spec.dynamic and self.active:
                reason = f"{parameter.name} applies at configure: deactivate the mixer (and clean it up) first"
            else:
                reason = parameters.problem(spec, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        for parameter in params:
            if parameter.name == "required_radius":
                self.required_radius = float(parameter.value)
            if parameter.name == "alpha":
                self.alpha = float(parameter.value)
                note = "" if self.alpha > 0.5 else " (alpha <= 0.5: frames cannot be certified)"
                self.get_logger().info(f"alpha set to {self.alpha}{note}")

    # --- input ------------------------------------------------------------------------------
    def _on_image(self, msg, info, source: str) -> None:
        received = time.monotonic()
        self.stats.count_arrival(source, info)
        try:
            pixels = frame_pixels(msg, self.runtime.max_pixels)
        except ImageError as error:
            self._reject(msg.header, source, error)
            return
        self.slots.put(source, Frame(msg.header, pixels, None, received))

    def _on_compressed(self, msg, info, source: str) -> None:
        self.stats.count_arrival(source, info)
        self.slots.put(source, Frame(msg.header, None, msg, time.monotonic()))

    def _reject(self, header, source: str, error: ImageError) -> None:
        """Count, log (throttled) and announce on ~/rejected a frame that yields no classification."""
        count = self.stats.count_rejected(source, error.code)
        self.get_logger().warning(
            f"rejected frame of {source} ({count} so far): {error}", throttle_duration_sec=LOG_THROTTLE_S
        )
        detail = str(error).removeprefix(f"{error.code}: ")
        self.rejected_pub.publish(self._rejected_type(header=header, source=source, code=error.code, detail=detail))

    # --- inference worker -------------------------------------------------------------------
    def _work(self) -> None:
        while not self.slots.closed:
            batch = self.slots.take_all(timeout=0.5)
            if batch:
                self._process(batch)

    def _process(self, batch) -> None:
        """Decode and convert the batch's frames, classify them in one forward, publish one message per frame."""
        import torch

        runtime = self.runtime
        frames, tensors, bounds = [], [], []
        for source, frame in batch:
            try:
                pixels = frame.pixels or frame_pixels(frame.compressed, runtime.max_pixels)
                tensors.append(runtime.converter(*pixels))
                bounds.append(self._frame_bound(pixels))
                frames.append((source, frame))
            except ImageError as error:
                self._reject(frame.header, source, error)
        if not frames:
            return
        try:
            results = runtime.classifier.classify(torch.cat(tensors), self.alpha, self.required_radius, bounds)
        except Exception as error:  # a model that fails on a batch must not stop the node
            self.stats.count_failed(len(frames))
            self.get_logger().error(f"inference failed: {error}", throttle_duration_sec=LOG_THROTTLE_S)
            for source, frame in frames:
                self._reject(frame.header, source, ImageError("inference_failed", first_line(error)))
            return
        for (source, frame), result in zip(frames, results, strict=True):
            self._publish(source, frame, result)

    def _frame_bound(self, pixels):
        """The frame's preprocessing bound (radii in its own pixels); the reason a kind of frame is not
        certified is logged once."""
        bound = self.runtime.converter.frame_bound(*pixels)
        if bound.reason and bound.reason not in self.unbounded_logged:
            self.unbounded_logged.add(bound.reason)
            self.get_logger().warning(bound.reason)
        return bound

    def _publish(self, source: str, frame: Frame, result) -> None:
        """One MixedClassification: the frame's header and source, the FrameResult's fields, the class name."""
        labels = self.runtime.labels
        label = labels[result.class_id] if 0 <= result.class_id < len(labels) else ""
        fields = result._asdict() | {"probabilities": result.probabilities.tolist()}
        msg = self._classification_type(header=frame.header, source=source, label=label, **fields)
        self.classification_pub.publish(msg)
        self.stats.count_published(source, (time.monotonic() - frame.received) * 1000.0, result.inference_ms)

    # --- health -----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        runtime = self.runtime
        state = "active" if self.active else ("inactive" if runtime else "unconfigured")
        settings = {"alpha": self.alpha} | (runtime.settings() if runtime else {})
        statuses = self.stats.statuses(self.get_fully_qualified_name(), state, settings, self.slots.counts())
        self.diagnostics_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(), statuses))


def start_mixer(standard=None, robust=None, **node_kwargs) -> MixerNode:
    """A MixerNode (arguments as MixerNode's) brought to active when `autostart`; the node is destroyed
    and the one-line reason raised when it cannot start."""
    node = MixerNode(standard, robust, **node_kwargs)
    try:
        node.start()
    except BaseException:  # also stop_request.StopRequested: Ctrl-C while configuring
        node.destroy_node()
        raise
    return node


def main(argv=None) -> None:
    """Entry point of `mixer_node`: exits 1 with one line on stderr when the node cannot start, else 0."""
    run_node("mixer_node", start_mixer, argv)


if __name__ == "__main__":
    sys.exit(main())
