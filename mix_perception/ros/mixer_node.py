"""Node `mixer` (executable `mixer_node`): classifies each camera frame with the mixed classifier.

Topics (relative names; remap `image` to the camera):
- subscribes `image` (sensor_msgs/Image), QoS sensor data (best effort, keep last `image_depth`;
  `image_reliability` makes it reliable), and `image/compressed` when `subscribe_compressed`;
- publishes `~/classification` (mix_perception/MixedClassification, reliable, depth 10) per frame,
  header copied from the image;
- publishes `~/rejected` (diagnostic_msgs/DiagnosticArray, reliable, depth 10) per frame it cannot
  use: header copied from the image, one ERROR status named "mixer: rejected frame" whose message
  is "bad_input: <code>: <detail>" and whose values hold `code`, `encoding`, `width`, `height`.
  The safety monitor subscribes to it; no classification is published for such a frame;
- publishes `/diagnostics` every `diagnostics_period` seconds.

Threads: the subscription callback validates the frame (a raw image: its fields checked, its pixels
a view of the message's buffer; a compressed image: decoded there, with its size checked first) and
puts it in a one-place `FrameSlot`; one worker thread converts, classifies and publishes, so the
executor never waits for the model and only the newest frame waits (older ones are counted as dropped).

Parameters: see `mix_perception.ros.parameters.MIXER` and config/mixer.yaml. `robust_sharpening` S
multiplies h's logits before mixing (certification none only). `alpha` is dynamic
(validated: a finite double in [0, 1]; <= 0.5 is accepted but logged as uncertifiable); everything
else is read-only.
"""

import math
import sys
import threading
import time

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from mix_perception.core.errors import first_line
from mix_perception.ros import diagnostics, parameters
from mix_perception.ros.frame_slot import FrameSlot
from mix_perception.ros.image_conversion import ENCODINGS, ImageError, InputSpec, compressed_to_array, image_to_array
from mix_perception.ros.spin import reliability_policy, run_node

NODE_NAME = "mixer"
REJECTED_STATUS_NAME = "mixer: rejected frame"
LOG_THROTTLE_S = 5.0


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


# The embedded model that `robust_model: default` names, per certification: the base of the smoothed h
# when certifying, the adversarially trained h otherwise.
DEFAULT_ROBUST = {"none": "robust", "smoothing": "smoothing", "lipschitz": "smoothing"}


def load_models(values: dict, device):
    """(standard, robust) nn.Modules from the model parameters. Raises ModelLoadError."""
    from mix_perception.core.models import default_spec, load_model

    standard_path = default_spec(values["standard_model"], "standard")
    robust_path = default_spec(values["robust_model"], DEFAULT_ROBUST[values["certification"]])
    standard = load_model(standard_path, arch=values["standard_arch"] or None, device=device)
    robust = load_model(robust_path, arch=values["robust_arch"] or None, device=device)
    return standard, robust


def sharpened(robust, values: dict):
    """h with its logits x robust_sharpening (h itself at 1). Raises ValueError when certifying with S != 1:
    Theorems 4 and 5 bound the smoothed h's own probabilities, which a sharpened h does not have."""
    from mix_perception.core.transforms import ScaledLogits

    scale = values["robust_sharpening"]
    if scale == 1.0:
        return robust
    if values["certification"] != "none":
        raise ValueError(
            f"robust_sharpening {scale} needs certification none (got {values['certification']}): "
            "the certificates hold for h itself, not for a sharpened h"
        )
    return ScaledLogits(robust, scale)


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
    )
    return Certification(values["certification"], smoothing, None if seed < 0 else seed)


class HeaderOnly:
    """Stands for a frame known only by its header (the pixels were already converted)."""

    def __init__(self, header):
        self.header = header


class MixerNode(Node):
    """The mixer. `standard` and `robust` (nn.Modules on [0, 1] pixels) may be passed in (tests);
    otherwise they are loaded from the `standard_model` / `robust_model` parameters."""

    def __init__(self, standard=None, robust=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        import torch

        from mix_perception.core.models import resolve_device
        from mix_perception.ros.inference import FrameClassifier

        values = parameters.declare(self, parameters.MIXER)
        alpha_problem = check_alpha_parameter(self.get_parameter("alpha"))
        if alpha_problem:
            raise ValueError(alpha_problem)
        if values["cpu_threads"] > 0:
            torch.set_num_threads(values["cpu_threads"])
        self.spec = input_spec(values)
        self.labels = list(values["labels"])
        self.max_pixels = values["input.max_pixels"]
        self.device = resolve_device(values["device"])
        if standard is None or robust is None:
            standard, robust = load_models(values, self.device)
        robust = sharpened(robust, values)
        self.sharpening = values["robust_sharpening"]
        self.certification = certification_of(values)
        self.classifier = FrameClassifier(standard, robust, self.certification, self.device)
        self.alpha = values["alpha"]

        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image

        from mix_perception.msg import MixedClassification

        self._message_type = MixedClassification
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.classification_pub = self.create_publisher(MixedClassification, "~/classification", reliable)
        self.rejected_pub = self.create_publisher(DiagnosticArray, "~/rejected", reliable)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        image_qos = QoSProfile(
            depth=values["image_depth"],
            reliability=reliability_policy(values["image_reliability"]),
            durability=qos_profile_sensor_data.durability,
            history=qos_profile_sensor_data.history,
        )
        self.image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        self.compressed_sub = None
        if values["subscribe_compressed"]:
            self.compressed_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed, image_qos
            )

        self.slot = FrameSlot()
        self.stats_lock = threading.Lock()
        self.processed = 0
        self.rejected = 0
        self.rejected_by_code: dict[str, int] = {}
        self.failed = 0
        self.stats = diagnostics.RollingStats()
        self.inference_stats = diagnostics.RollingStats()
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics)
        self.worker = threading.Thread(target=self._work, name="mixer-inference", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"mixer ready: device {self.device}, certification {self.certification.method}, alpha {self.alpha}"
            + ("" if self.sharpening == 1.0 else f", h's logits x {self.sharpening}")
            + ("" if self.alpha > 0.5 else " (alpha <= 0.5: no frame can be certified)")
        )

    # --- parameters -------------------------------------------------------------------------
    def _validate_parameters(self, params) -> SetParametersResult:
        for parameter in params:
            if parameter.name == "alpha":
                problem = check_alpha_parameter(parameter)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        for parameter in params:
            if parameter.name == "alpha":
                self.alpha = float(parameter.value)
                note = "" if self.alpha > 0.5 else " (alpha <= 0.5: frames cannot be certified)"
                self.get_logger().info(f"alpha set to {self.alpha}{note}")

    # --- input ------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        received = time.monotonic()
        try:
            pixels = image_to_array(msg, self.max_pixels)
        except ImageError as error:
            self._reject(msg, error)
            return
        self.slot.put((msg.header, pixels, ENCODINGS[msg.encoding].order, received))

    def _on_compressed(self, msg) -> None:
        received = time.monotonic()
        try:
            pixels, encoding = compressed_to_array(msg, self.max_pixels)
        except ImageError as error:
            self._reject(msg, error)
            return
        self.slot.put((msg.header, pixels, ENCODINGS[encoding].order, received))

    def _reject(self, msg, error: ImageError) -> None:
        """Count, log (throttled) and announce on ~/rejected a frame that yields no classification."""
        with self.stats_lock:
            self.rejected += 1
            self.rejected_by_code[error.code] = self.rejected_by_code.get(error.code, 0) + 1
            count = self.rejected
        self.get_logger().warning(f"rejected frame ({count} so far): {error}", throttle_duration_sec=LOG_THROTTLE_S)
        values = {
            "code": error.code,
            "encoding": getattr(msg, "encoding", None) or getattr(msg, "format", ""),
            "width": getattr(msg, "width", 0),
            "height": getattr(msg, "height", 0),
        }
        status = diagnostics.make_status(REJECTED_STATUS_NAME, 2, f"bad_input: {error}", values)
        array = diagnostics.make_array(msg.header.stamp, [status])
        array.header.frame_id = msg.header.frame_id
        self.rejected_pub.publish(array)

    # --- inference worker -------------------------------------------------------------------
    def _work(self) -> None:
        while not self.slot.closed:
            item = self.slot.take(timeout=0.5)
            if item is not None:
                self._process(*item)

    def _process(self, header, pixels, order, received) -> None:
        from mix_perception.ros.image_conversion import array_to_tensor

        try:
            tensor = array_to_tensor(pixels, order, self.spec, self.device)
            result = self.classifier.classify(tensor, self.alpha)
        except Exception as error:  # a model that fails on one frame must not stop the node
            with self.stats_lock:
                self.failed += 1
            self.get_logger().error(f"inference failed: {error}", throttle_duration_sec=LOG_THROTTLE_S)
            self._reject(HeaderOnly(header), ImageError("inference_failed", first_line(error)))
            return
        msg = self._message_type()
        msg.header = header
        msg.class_id = result.class_id
        msg.label = self.labels[result.class_id] if 0 <= result.class_id < len(self.labels) else ""
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
        self.classification_pub.publish(msg)
        latency_ms = (time.monotonic() - received) * 1000.0
        with self.stats_lock:
            self.processed += 1
            self.stats.add(latency_ms)
            self.inference_stats.add(result.inference_ms)

    # --- health -----------------------------------------------------------------------------
    def counters(self) -> dict:
        """Frame counters: received (valid frames handed to the worker), processed, dropped, rejected, failed."""
        with self.stats_lock:
            return {
                "received": self.slot.received,
                "processed": self.processed,
                "dropped": self.slot.dropped,
                "rejected": self.rejected,
                "failed": self.failed,
            }

    def _publish_diagnostics(self) -> None:
        counters = self.counters()
        with self.stats_lock:
            rate = self.stats.rate()
            p50, p99 = self.stats.latency_percentile(50), self.stats.latency_percentile(99)
            inference_p50 = self.inference_stats.latency_percentile(50)
            by_code = dict(self.rejected_by_code)
        level, message = 0, "ok"
        if counters["failed"]:
            level, message = 1, "inference failed on some frames"
        values = {
            "rate_hz": rate,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "inference_p50_ms": inference_p50,
            "frames_received": counters["received"],
            "frames_processed": counters["processed"],
            "frames_dropped": counters["dropped"],
            "frames_rejected": counters["rejected"],
            "inference_failures": counters["failed"],
            "device": str(self.device),
            "alpha": self.alpha,
            "robust_sharpening": self.sharpening,
            "certification": self.certification.method,
        }
        values.update({f"rejected_{code}": count for code, count in sorted(by_code.items())})
        status = diagnostics.make_status(f"{self.get_name()}: inference", level, message, values)
        self.diagnostics_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(), [status]))

    def destroy_node(self):
        slot, worker = getattr(self, "slot", None), getattr(self, "worker", None)  # None: __init__ failed early
        if slot is not None:
            slot.close()
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=5.0)
        return super().destroy_node()


def main(argv=None) -> int:
    """Entry point of `mixer_node`: exits 1 with one line on stderr when the node cannot start."""
    return run_node("mixer_node", MixerNode, argv)


if __name__ == "__main__":
    sys.exit(main())
