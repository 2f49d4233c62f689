"""Node `mixer` (executable `mixer_node`): a managed (lifecycle) node that classifies the frames of one or
more cameras with the mixed classifier.

Lifecycle:
- configure: reads and validates the parameters and loads the models; a missing or corrupt model, a
  bad parameter or an absent device fails the transition with one clear line (the node stays
  unconfigured); creates the publishers;
- activate: subscribes to every camera and starts the inference worker;
- deactivate: unsubscribes and stops the worker (the batch in flight is finished and published);
- cleanup: frees the models. A model swap is deactivate, set parameters, cleanup, configure, activate.
With `autostart` (the default) the node configures and activates itself when it starts.

Topics (relative names; remap to the cameras):
- subscribes every topic of `image_topics` (default ["image"], sensor_msgs/Image) with QoS sensor data
  (best effort, keep last `image_depth`; `image_reliability` makes it reliable), and
  `<topic>/compressed` when `subscribe_compressed`;
- publishes `~/classification` (mix_perception/MixedClassification, reliable, depth 10) per frame:
  header copied from the image, `source` = the image topic (fully qualified);
- publishes `~/rejected` (diagnostic_msgs/DiagnosticArray, reliable, depth 10) per frame it cannot
  use: header copied from the image, one ERROR status named "mixer: rejected frame" whose message is
  "bad_input: <code>: <detail>" and whose values hold `code`, `encoding`, `width`, `height`, `source`.
  The safety monitor subscribes to it; no classification is published for such a frame;
- publishes `/diagnostics` every `diagnostics_period` seconds, in every state: the node's state and
  totals, and one status per camera.

Threads: a raw image is validated in its subscription callback (its fields checked, its pixels a view
of the message's buffer); a compressed one is only counted there and decoded on the worker. Each goes
into its camera's newest-frame mailbox (`FrameSlots`); one worker thread takes the newest frame of
every camera, classifies them in one batch and publishes, so the executor never waits for the model
and only the newest frame of each camera waits (older ones are counted as dropped).

Parameters: see `mix_perception.ros.parameters.MIXER` and config/mixer.yaml. `alpha` is dynamic
(validated: a finite double in [0, 1]; <= 0.5 is accepted but logged as uncertifiable); the others are
configure-time parameters: settable while the mixer is not active, in force from the next configure.
`robust_sharpening` T multiplies h's logits before mixing (certification none or lipschitz).
"""

import math
import sys
import threading
import time
from collections import Counter
from typing import NamedTuple

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from mix_perception.core.errors import first_line
from mix_perception.ros import diagnostics, parameters
from mix_perception.ros.frame_slot import FrameSlots
from mix_perception.ros.image_conversion import (
    ENCODINGS,
    FrameConverter,
    ImageError,
    InputSpec,
    compressed_to_array,
    image_to_array,
)
from mix_perception.ros.spin import reliability_policy, run_node

NODE_NAME = "mixer"
REJECTED_STATUS_NAME = "mixer: rejected frame"
LOG_THROTTLE_S = 5.0
SPECS = {spec.name: spec for spec in parameters.MIXER}


def check_alpha_parameter(parameter: Parameter) -> str | None:
    """Reason why `parameter` is not a valid alpha, or None when it is: a finite double in [0, 1]."""
    if parameter.type_ != Parameter.Type.DOUBLE:
        return f"alpha must be a double in [0, 1], got type {parameter.type_.name}"
    value = parameter.value
    if math.isnan(value) or math.isinf(value):
        return f"alpha must be finite, got {value}"
    if not 0.0 <= value <= 1.0:
        return f"alpha must be in [0, 1], got {value}"
    return None


def input_spec(values: dict) -> InputSpec:
    """InputSpec from the input.* parameters; raises ValueError for inconsistent ones."""
    size = list(values["input.size"])
    channels = values["input.channels"]
    mean, std = list(values["input.mean"]), list(values["input.std"])
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input.size must be [height, width] of positive ints, got {size}")
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(f"input.mean and input.std need 1 or {channels} values")
    if any(s <= 0 for s in std):
        raise ValueError("input.std must be positive")
    mean, std = mean * (channels // len(mean)), std * (channels // len(std))
    identity = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)
    return InputSpec(
        channels, (int(size[0]), int(size[1])), () if identity else tuple(mean), () if identity else tuple(std)
    )


# The embedded model that `robust_model: default` names, per certification: the Lipschitz network, the
# base of the smoothed h, or the adversarially trained h without a certificate.
DEFAULT_ROBUST = {
    "none": "robust",
    "lipschitz": "lipschitz",
    "smoothing": "smoothing",
    "smoothing_theorem4": "smoothing",
}


def load_models(values: dict, device):
    """(standard, robust) nn.Modules from the model parameters. Raises ModelLoadError."""
    from mix_perception.core.models import default_spec, load_model

    standard_path = default_spec(values["standard_model"], "standard")
    robust_path = default_spec(values["robust_model"], DEFAULT_ROBUST[values["certification"]])
    standard = load_model(standard_path, arch=values["standard_arch"] or None, device=device)
    robust = load_model(robust_path, arch=values["robust_arch"] or None, device=device)
    return standard, robust


def certification_of(values: dict):
    """Certification from the certification and smoothing.* parameters; ValueError for bad values."""
    from mix_perception.core.smoothing import SmoothingSettings
    from mix_perception.ros.inference import Certification

    seed = values["smoothing.seed"]
    smoothing = SmoothingSettings(
        sigma=values["smoothing.sigma"],
        n_select=values["smoothing.select_samples"],
        n_estimate=values["smoothing.samples"],
        delta=values["smoothing.delta"],
        mode=values["smoothing.mode"],
        batch_size=values["smoothing.batch_size"],
        n_max=values["smoothing.max_samples"],
    )
    return Certification(
        values["certification"],
        values["robust_sharpening"],
        smoothing,
        values["smoothing.sequential"],
        None if seed < 0 else seed,
    )


class Runtime(NamedTuple):
    """What configure builds from the parameters; cleanup drops it."""

    classifier: object  # inference.FrameClassifier
    converter: FrameConverter
    labels: list
    max_pixels: int
    topics: list
    image_qos: QoSProfile
    subscribe_compressed: bool


def build_runtime(values: dict, models=None) -> Runtime:
    """Validate the configure-time parameters and load the models (`models`: (g, h) given instead).
    Raises ValueError / ModelLoadError with a one-line reason."""
    import torch

    from mix_perception.core.models import resolve_device
    from mix_perception.ros.inference import FrameClassifier

    if not values["image_topics"] or not all(values["image_topics"]):
        raise ValueError(f"image_topics must list at least one topic, got {values['image_topics']}")
    if values["cpu_threads"] > 0:
        torch.set_num_threads(values["cpu_threads"])
    spec = input_spec(values)
    device = resolve_device(values["device"])
    certification = certification_of(values)
    standard, robust = models if models is not None else load_models(values, device)
    input_shape = (spec.channels, *spec.size)
    classifier = FrameClassifier(standard, robust, certification, device, input_shape)
    image_qos = QoSProfile(
        depth=values["image_depth"],
        reliability=reliability_policy(values["image_reliability"]),
        durability=qos_profile_sensor_data.durability,
        history=qos_profile_sensor_data.history,
    )
    return Runtime(
        classifier,
        FrameConverter(spec, device),
        list(values["labels"]),
        values["input.max_pixels"],
        list(values["image_topics"]),
        image_qos,
        values["subscribe_compressed"],
    )


class Frame(NamedTuple):
    """A frame waiting for the worker: a raw image's checked pixels, or a compressed image to decode."""

    header: object
    pixels: object  # (H, W, C) array, or None for a compressed image
    order: str
    compressed: object  # sensor_msgs/CompressedImage, or None
    received: float  # time.monotonic() at arrival


class HeaderOnly:
    """Stands for a frame known only by its header (the pixels were already converted)."""

    def __init__(self, header):
        self.header = header


class MixerNode(LifecycleNode):
    """The mixer. `standard` and `robust` (nn.Modules on [0, 1] pixels) may be passed in (tests); otherwise
    configure loads them from the `standard_model` / `robust_model` parameters. Unconfigured until
    `start` (autostart) or a lifecycle transition configures it."""

    def __init__(self, standard=None, robust=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        from diagnostic_msgs.msg import DiagnosticArray

        from mix_perception.msg import MixedClassification

        self._message_type = MixedClassification
        self.models = (standard, robust) if standard is not None and robust is not None else None
        # the state destroy_node() needs, before anything here can raise: the context destroys its nodes,
        # a half-constructed one too
        self.runtime: Runtime | None = None
        self.configure_error = ""
        self.autostarting = False
        self.active = False
        self.worker: threading.Thread | None = None
        self.image_subscriptions = []
        self.classification_pub = self.rejected_pub = None
        self.slots = FrameSlots()
        self.slots.close()

        parameters.declare(self, parameters.MIXER, reconfigurable=True)
        alpha_problem = check_alpha_parameter(self.get_parameter("alpha"))
        if alpha_problem:
            raise ValueError(alpha_problem)
        self.alpha = self.get_parameter("alpha").value
        self.required_radius = self.get_parameter("required_radius").value
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.stats_lock = threading.Lock()
        self.processed: Counter = Counter()
        self.rejected: Counter = Counter()
        self.rejected_by_code: Counter = Counter()
        self.failed = 0
        self.stats: dict[str, diagnostics.RollingStats] = {}
        self.inference_stats = diagnostics.RollingStats()
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

    @property
    def device(self):
        return self.runtime.classifier.device

    @property
    def certification(self):
        return self.runtime.classifier.certification

    # --- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        from diagnostic_msgs.msg import DiagnosticArray

        try:
            self.runtime = build_runtime(parameters.read(self, parameters.MIXER), self.models)
        except Exception as error:  # noqa: BLE001 - every reason is reported as one line
            self.configure_error = first_line(error)
            if not self.autostarting:
                self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.classification_pub = self.create_lifecycle_publisher(self._message_type, "~/classification", reliable)
        self.rejected_pub = self.create_lifecycle_publisher(DiagnosticArray, "~/rejected", reliable)
        runtime = self.runtime
        constant = runtime.classifier.lipschitz_constant
        self.get_logger().info(
            f"mixer configured: device {runtime.classifier.device}, certification {self.certification.method}, "
            f"alpha {self.alpha}, cameras {', '.join(runtime.topics)}"
            + ("" if self.certification.temperature == 1.0 else f", h's logits x {self.certification.temperature}")
            + (f", proven l2 constant of h's logits {constant:.6g}" if constant is not None else "")
            + ("" if self.alpha > 0.5 else " (alpha <= 0.5: no frame can be certified)")
        )
        return super().on_configure(state)

    def on_activate(self, state) -> TransitionCallbackReturn:
        from sensor_msgs.msg import CompressedImage, Image

        result = super().on_activate(state)  # enables the publishers before the first frame
        runtime = self.runtime
        for topic in runtime.topics:
            source = self.resolve_topic_name(topic)
            self.image_subscriptions.append(
                self.create_subscription(Image, topic, lambda msg, s=source: self._on_image(msg, s), runtime.image_qos)
            )
            if runtime.subscribe_compressed:
                self.image_subscriptions.append(
                    self.create_subscription(
                        CompressedImage,
                        f"{topic}/compressed",
                        lambda msg, s=source: self._on_compressed(msg, s),
                        runtime.image_qos,
                    )
                )
        self.slots.open()
        self.worker = threading.Thread(target=self._work, name="mixer-inference")
        self.worker.start()
        self.active = True
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_consuming()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_consuming()
        self._release()
        return super().on_shutdown(state)

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
        for publisher in (self.classification_pub, self.rejected_pub):
            if publisher is not None:
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
        for parameter in params:
            spec = SPECS.get(parameter.name)
            if spec is None:
                continue
            if parameter.name == "alpha":
                reason = check_alpha_parameter(parameter)
            elif not spec.dynamic and self.active:
                reason = (
                    f"{parameter.name} applies at configure: deactivate the mixer (and clean it up) before "
                    "changing it, then configure and activate"
                )
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
    def _on_image(self, msg, source: str) -> None:
        received = time.monotonic()
        try:
            pixels = image_to_array(msg, self.runtime.max_pixels)
        except ImageError as error:
            self._reject(msg, error, source)
            return
        self.slots.put(source, Frame(msg.header, pixels, ENCODINGS[msg.encoding].order, None, received))

    def _on_compressed(self, msg, source: str) -> None:
        self.slots.put(source, Frame(msg.header, None, "", msg, time.monotonic()))

    def _reject(self, msg, error: ImageError, source: str) -> None:
        """Count, log (throttled) and announce on ~/rejected a frame that yields no classification."""
        with self.stats_lock:
            self.rejected[source] += 1
            self.rejected_by_code[error.code] += 1
            count = self.rejected.total()
        self.get_logger().warning(
            f"rejected frame of {source} ({count} so far): {error}", throttle_duration_sec=LOG_THROTTLE_S
        )
        values = {
            "code": error.code,
            "encoding": getattr(msg, "encoding", None) or getattr(msg, "format", ""),
            "width": getattr(msg, "width", 0),
            "height": getattr(msg, "height", 0),
            "source": source,
        }
        status = diagnostics.make_status(REJECTED_STATUS_NAME, 2, f"bad_input: {error}", values)
        array = diagnostics.make_array(msg.header.stamp, [status])
        array.header.frame_id = msg.header.frame_id
        self.rejected_pub.publish(array)

    # --- inference worker -------------------------------------------------------------------
    def _work(self) -> None:
        while not self.slots.closed:
            batch = self.slots.take_all(timeout=0.5)
            if batch:
                self._process(batch)

    def _decoded(self, source: str, frame: Frame):
        """The frame's pixels and channel order; a compressed frame is decoded here (None when rejected)."""
        if frame.compressed is None:
            return frame.pixels, frame.order
        try:
            pixels, encoding = compressed_to_array(frame.compressed, self.runtime.max_pixels)
        except ImageError as error:
            self._reject(frame.compressed, error, source)
            return None
        return pixels, ENCODINGS[encoding].order

    def _process(self, batch) -> None:
        """Convert the batch's frames, classify them in one forward and publish one message per frame."""
        import torch

        runtime = self.runtime
        frames, tensors = [], []
        for source, frame in batch:
            decoded = self._decoded(source, frame)
            if decoded is not None:
                try:
                    tensors.append(runtime.converter(*decoded))
                    frames.append((source, frame))
                except ImageError as error:
                    self._reject(HeaderOnly(frame.header), error, source)
        if not frames:
            return
        try:
            results = runtime.classifier.classify(torch.cat(tensors), self.alpha, self.required_radius)
        except Exception as error:  # a model that fails on a batch must not stop the node
            with self.stats_lock:
                self.failed += len(frames)
            self.get_logger().error(f"inference failed: {error}", throttle_duration_sec=LOG_THROTTLE_S)
            for source, frame in frames:
                self._reject(HeaderOnly(frame.header), ImageError("inference_failed", first_line(error)), source)
            return
        for (source, frame), result in zip(frames, results, strict=True):
            self._publish(source, frame, result)

    def _publish(self, source: str, frame: Frame, result) -> None:
        msg = self._message_type()
        msg.header = frame.header
        msg.class_id = result.class_id
        labels = self.runtime.labels
        msg.label = labels[result.class_id] if 0 <= result.class_id < len(labels) else ""
        msg.probabilities = result.probabilities.tolist()
        msg.alpha = result.alpha
        msg.robust_class_id = result.robust_class_id
        msg.robust_margin = result.robust_margin
        msg.certified_radius = result.certified_radius
        msg.certificate = result.certificate
        msg.norm = result.norm
        msg.inference_ms = result.inference_ms
        msg.certified = result.certified
        msg.certificate_confidence = result.confidence
        msg.source = source
        msg.samples = result.samples
        self.classification_pub.publish(msg)
        latency_ms = (time.monotonic() - frame.received) * 1000.0
        with self.stats_lock:
            self.processed[source] += 1
            self.stats.setdefault(source, diagnostics.RollingStats()).add(latency_ms)
            self.inference_stats.add(result.inference_ms)

    # --- health -----------------------------------------------------------------------------
    def counters(self) -> dict:
        """Frame counters over all cameras: received (handed to the worker), processed, dropped, rejected, failed."""
        cameras = self.camera_counters().values()
        keys = ("received", "processed", "dropped", "rejected")
        totals = {key: sum(camera[key] for camera in cameras) for key in keys}
        with self.stats_lock:
            return totals | {"failed": self.failed}

    def camera_counters(self) -> dict:
        """{source: {received, processed, dropped, rejected}} for every camera that sent a frame."""
        with self.stats_lock:
            sources = {*self.slots.received, *self.rejected}
            return {
                source: {
                    "received": self.slots.received[source],
                    "processed": self.processed[source],
                    "dropped": self.slots.dropped[source],
                    "rejected": self.rejected[source],
                }
                for source in sorted(sources)
            }

    def _publish_diagnostics(self) -> None:
        counters, cameras = self.counters(), self.camera_counters()
        with self.stats_lock:
            inference_p50 = self.inference_stats.latency_percentile(50)
            by_code = dict(self.rejected_by_code)
            latency = {source: (stats.rate(), stats.latency_percentile(50), stats.latency_percentile(99))
                       for source, stats in self.stats.items()}  # fmt: skip
        runtime = self.runtime
        level, message = (0, "active") if self.active else (1, "configured, inactive" if runtime else "unconfigured")
        if counters["failed"]:
            level, message = 1, "inference failed on some frames"
        values = {
            "state": "active" if self.active else ("inactive" if runtime else "unconfigured"),
            "rate_hz": sum(rate for rate, _, _ in latency.values()),
            "latency_p50_ms": max((p50 for _, p50, _ in latency.values()), default=0.0),
            "latency_p99_ms": max((p99 for _, _, p99 in latency.values()), default=0.0),
            "inference_p50_ms": inference_p50,
            "frames_received": counters["received"],
            "frames_processed": counters["processed"],
            "frames_dropped": counters["dropped"],
            "frames_rejected": counters["rejected"],
            "inference_failures": counters["failed"],
            "alpha": self.alpha,
        }
        if runtime is not None:
            values |= {
                "device": str(runtime.classifier.device),
                "certification": self.certification.method,
                "robust_sharpening": self.certification.temperature,
                "cameras": len(runtime.topics),
            }
            if runtime.classifier.lipschitz_constant is not None:
                values["lipschitz_constant"] = runtime.classifier.lipschitz_constant
        values.update({f"rejected_{code}": count for code, count in sorted(by_code.items())})
        statuses = [diagnostics.make_status(f"{self.get_name()}: inference", level, message, values)]
        for source, numbers in cameras.items():
            rate, p50, p99 = latency.get(source, (0.0, 0.0, 0.0))
            camera_values = numbers | {"rate_hz": rate, "latency_p50_ms": p50, "latency_p99_ms": p99}
            statuses.append(diagnostics.make_status(f"{self.get_name()}: camera {source}", 0, "", camera_values))
        self.diagnostics_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(), statuses))


def start_mixer(standard=None, robust=None, **node_kwargs) -> MixerNode:
    """A MixerNode (arguments as MixerNode's) brought to active when `autostart`; the node is destroyed
    and the one-line reason raised when it cannot start."""
    node = MixerNode(standard, robust, **node_kwargs)
    try:
        node.start()
    except Exception:
        node.destroy_node()
        raise
    return node


def main(argv=None) -> None:
    """Entry point of `mixer_node`: exits 1 with one line on stderr when the node cannot start, else 0."""
    run_node("mixer_node", start_mixer, argv)


if __name__ == "__main__":
    sys.exit(main())
