"""mixer_node and safety_monitor as separate processes over real DDS (issue 5, "Integration tests").

Both models are a TorchScript constant classifier (class 3 = "Dress"), so every frame is classified
3 and — with smoothing certification at alpha 0.8 — certified at radius ~0.13 (l2); the monitor
requires 0.01. The test process publishes images, calls the real parameter services
(rcl_interfaces/srv/SetParameters, what `ros2 param set` calls) and listens to every output topic.
"""

import io
import math
import time
import warnings

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from PIL import Image as PILImage
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from mix_perception.msg import MixedClassification, RejectedFrame, SafetyStatus
from mix_perception.ros.diagnostics import values_of
from mix_perception.ros.image_conversion import FrameConverter, InputSpec, array_to_image
from mix_perception.ros.safety_monitor import STATUS_QOS

pytestmark = pytest.mark.slow  # nodes in separate processes over DDS

MAX_FRAME_AGE = 1.0
WATCHDOG_PERIOD = 0.1
MAX_PIXELS = 10_000
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class Probe:
    """The test's side of the graph: publishers, collecting subscriptions, parameter clients."""

    def __init__(self, node, executor, spin):
        self.node, self.executor, self.spin = node, executor, spin
        self.classifications, self.statuses, self.rejected, self.diagnostics = [], [], [], []
        node.create_subscription(MixedClassification, "/mixer/classification", self.classifications.append, RELIABLE)
        node.create_subscription(SafetyStatus, "/safety_monitor/status", self.statuses.append, STATUS_QOS)
        node.create_subscription(RejectedFrame, "/mixer/rejected", self.rejected.append, RELIABLE)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.image_pub = node.create_publisher(Image, "/image", qos_profile_sensor_data)
        self.compressed_pub = node.create_publisher(CompressedImage, "/image/compressed", qos_profile_sensor_data)
        self.set_clients = {
            name: node.create_client(SetParameters, f"/{name}/set_parameters") for name in ("mixer", "safety_monitor")
        }
        self.get_mixer = node.create_client(GetParameters, "/mixer/get_parameters")
        self.sequence = 0

    def wait_for_graph(self):
        """Every endpoint matched: the nodes are up, discovered, and subscribed to each other."""
        node = self.node

        def ready():
            return (
                self.image_pub.get_subscription_count() >= 1
                and self.compressed_pub.get_subscription_count() >= 1
                and node.count_subscribers("/mixer/classification") >= 2  # the monitor and us
                and node.count_subscribers("/mixer/rejected") >= 2
                and node.count_publishers("/safety_monitor/status") >= 1
                and all(client.service_is_ready() for client in self.set_clients.values())
                and self.get_mixer.service_is_ready()
            )

        self.spin(self.executor, ready, timeout=60.0, what="mixer and safety monitor to be discovered")

    def stamp_image(self, msg, frame_id: str):
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        return msg

    def good_image(self, frame_id: str | None = None):
        self.sequence += 1
        pixels = np.random.default_rng(self.sequence).integers(0, 256, (28, 28), dtype=np.uint8)
        return self.stamp_image(array_to_image(pixels, "mono8"), frame_id or f"frame_{self.sequence}")

    def classification_for(self, frame_id: str, timeout: float = 30.0):
        def found():
            return next((m for m in self.classifications if m.header.frame_id == frame_id), None)

        return self.spin(self.executor, found, timeout, f"a classification of {frame_id}")

    def send_until_classified(self, publisher, msg, timeout: float = 30.0):
        """Publish msg (best effort, as a camera does: a sample may be lost, the first ones after
        discovery most of all) every 0.5 s until its classification arrives; returns the classification."""
        deadline = time.monotonic() + timeout
        while True:
            publisher.publish(msg)
            try:
                return self.classification_for(msg.header.frame_id, timeout=0.5)
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise

    def send_until_judged(self, publisher, msg, timeout: float = 60.0):
        """Publish msg every 1 s until the monitor's status of its frame arrives; returns the status. A
        malformed frame yields no classification, only a rejection, and the first rejection can go out
        before the mixer's ~/rejected has matched the monitor (the probe's graph shows the subscription
        sooner)."""
        deadline = time.monotonic() + timeout
        while True:
            publisher.publish(msg)
            try:
                return self.status_for(msg.header.frame_id, timeout=1.0)
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise

    def status_for(self, frame_id: str, timeout: float = 30.0):
        def found():
            return next((m for m in self.statuses if m.header.frame_id == frame_id), None)

        return self.spin(self.executor, found, timeout, f"a safety status of {frame_id}")

    def classify(self, frame_id: str | None = None):
        """Publish a good frame and wait for its classification; returns (message, frame_id)."""
        image = self.good_image(frame_id)
        return self.send_until_classified(self.image_pub, image), image.header.frame_id

    def set_parameter(self, node_name: str, name: str, value):
        """Call /<node>/set_parameters; returns rcl_interfaces/SetParametersResult."""
        request = SetParameters.Request(parameters=[Parameter(name=name, value=parameter_value(value))])
        future = self.set_clients[node_name].call_async(request)
        self.spin(self.executor, future.done, 30.0, f"set_parameters {name}")
        return future.result().results[0]

    def mixer_alpha(self) -> float:
        future = self.get_mixer.call_async(GetParameters.Request(names=["alpha"]))
        self.spin(self.executor, future.done, 30.0, "get_parameters alpha")
        return future.result().values[0].double_value


def parameter_value(value) -> ParameterValue:
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))


@pytest.fixture(scope="module")
def pipeline(start_node, constant_model, ros, spin):
    _, node, executor = ros
    mixer = start_node(
        "mixer_node",
        {
            "standard_model": str(constant_model),
            "robust_model": str(constant_model),
            "certification": "smoothing",
            "robust_logit_scale": 1.0,
            "alpha": 0.8,
            "smoothing.samples": 64,
            "smoothing.select_samples": 8,
            "smoothing.seed": 0,
            "input.max_pixels": MAX_PIXELS,
            "subscribe_compressed": True,
            "diagnostics_period": 0.2,
            "cpu_threads": 1,
        },
    )
    monitor = start_node(
        "safety_monitor",
        {"required_radius": 0.01, "max_frame_age": MAX_FRAME_AGE, "watchdog_period": WATCHDOG_PERIOD},
    )
    probe = Probe(node, executor, spin)
    try:
        probe.wait_for_graph()
    except BaseException:
        print("mixer log:\n" + mixer.output() + "\nmonitor log:\n" + monitor.output())
        raise
    yield probe, mixer, monitor
    if not (mixer.alive() and monitor.alive()):
        print("mixer log:\n" + mixer.output() + "\nmonitor log:\n" + monitor.output())


def test_classification_copies_the_image_header(pipeline):
    probe, mixer, _ = pipeline
    image = probe.good_image("camera_optical_7")
    image.header.stamp.sec, image.header.stamp.nanosec = 1234, 567_000_000
    msg = probe.send_until_classified(probe.image_pub, image)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1234, 567_000_000)
    assert (msg.class_id, msg.label, msg.robust_class_id) == (3, "Dress", 3)
    assert msg.alpha == pytest.approx(0.8)
    assert math.isclose(sum(msg.probabilities), 1.0, rel_tol=1e-5) and len(msg.probabilities) == 10
    assert msg.certified and msg.certificate == MixedClassification.CERTIFICATE_SMOOTHING
    assert msg.certified_radius > 0.05 and msg.norm == "l2"
    assert msg.certificate_confidence == pytest.approx(0.999)
    assert mixer.alive()


def test_compressed_images_are_classified_with_their_header(pipeline):
    probe, _, _ = pipeline
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((40, 30), 128, np.uint8), mode="L").save(buffer, format="PNG")
    compressed = probe.stamp_image(CompressedImage(format="png", data=buffer.getvalue()), "png_camera")
    msg = probe.send_until_classified(probe.compressed_pub, compressed)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (
        compressed.header.stamp.sec,
        compressed.header.stamp.nanosec,
    )
    assert msg.class_id == 3


def test_alpha_set_through_the_parameter_service(pipeline):
    probe, mixer, _ = pipeline
    result = probe.set_parameter("mixer", "alpha", 0.9)
    assert result.successful, result.reason
    msg, _ = probe.classify()
    assert msg.alpha == pytest.approx(0.9)

    for bad in (math.nan, -0.1, 1.5, math.inf, "high", 1):
        result = probe.set_parameter("mixer", "alpha", bad)
        assert not result.successful, f"alpha {bad!r} was accepted"
        assert result.reason, f"alpha {bad!r} rejected without a reason"
    assert probe.mixer_alpha() == pytest.approx(0.9)
    msg, _ = probe.classify()
    assert msg.alpha == pytest.approx(0.9)

    read_only = probe.set_parameter("mixer", "device", "cuda")
    assert not read_only.successful and "deactivate" in read_only.reason
    assert probe.set_parameter("mixer", "alpha", 0.8).successful
    assert mixer.alive()


def malformed_images():
    """(frame_id, message, expected rejection code) for every kind of unusable frame."""

    def image(encoding, width, height, step, data):
        msg = Image(encoding=encoding, width=width, height=height, step=step)
        msg.data = bytes(data)
        return msg

    broken_png = CompressedImage(format="png", data=b"\x89PNG\r\n\x1a\n not really")
    return [
        ("unknown_encoding", image("bayer_xyz8", 28, 28, 28, b"\0" * 784), "unknown_encoding"),
        ("wrong_step", image("rgb8", 28, 28, 28, b"\0" * 784), "bad_step"),
        ("truncated", image("mono8", 28, 28, 28, b"\0" * 700), "bad_size"),
        ("trailing_bytes", image("mono8", 28, 28, 28, b"\0" * 800), "bad_size"),
        ("zero_size", image("mono8", 0, 0, 0, b""), "zero_size"),
        ("too_large", image("mono8", 200, 200, 200, b"\0" * 40_000), "too_large"),
        ("nan_pixels", image("32FC1", 2, 1, 8, np.array([0.5, np.nan], np.float32).tobytes()), "non_finite"),
        ("broken_png", broken_png, "decode_failed"),
    ]


def test_malformed_images_are_rejected_counted_and_announced(pipeline):
    probe, mixer, _ = pipeline
    cases = malformed_images()
    for frame_id, msg, code in cases:
        probe.stamp_image(msg, frame_id)
        publisher = probe.compressed_pub if isinstance(msg, CompressedImage) else probe.image_pub
        status = probe.send_until_judged(publisher, msg)
        rejected = probe.spin(
            probe.executor,
            lambda fid=frame_id: next((r for r in probe.rejected if r.header.frame_id == fid), None),
            30.0,
            f"rejection of {frame_id}",
        )
        assert rejected.code == code and rejected.detail and rejected.source == status.source == "/image"
        assert not status.safe and status.reason == "bad_input" and status.level == SafetyStatus.ERROR
        assert list(status.reasons) == ["bad_input"]
    msg, _ = probe.classify()
    assert msg.class_id == 3
    assert mixer.alive()
    assert not {m.header.frame_id for m in probe.classifications} & {frame_id for frame_id, _, _ in cases}

    def counted():
        for array in reversed(probe.diagnostics):
            for status in array.status:
                if status.name == "/mixer: inference":
                    return int(values_of(status)["frames_rejected"]) >= len(cases)
        return False

    probe.spin(probe.executor, counted, 30.0, "frames_rejected on /diagnostics")


def test_monitor_flags_uncertified_frames_and_a_stale_stream_then_recovers(pipeline):
    probe, mixer, monitor = pipeline
    msg, frame_id = probe.classify()
    assert probe.status_for(frame_id).safe

    assert probe.set_parameter("safety_monitor", "required_radius", 5.0).successful
    _, frame_id = probe.classify()
    status = probe.status_for(frame_id)
    assert not status.safe and status.reason == "radius_below_required" and status.required_radius == 5.0
    assert probe.set_parameter("safety_monitor", "required_radius", 0.01).successful

    assert probe.set_parameter("mixer", "alpha", 0.4).successful
    msg, frame_id = probe.classify()
    assert not msg.certified and msg.certified_radius == 0.0
    assert msg.certificate == MixedClassification.CERTIFICATE_NONE
    status = probe.status_for(frame_id)
    assert not status.safe and status.reason == "alpha_not_above_half; not_certified"
    assert list(status.reasons) == ["alpha_not_above_half", "not_certified"]
    assert status.consecutive_unsafe >= 1
    assert probe.set_parameter("mixer", "alpha", 0.8).successful

    # Stop the camera: the watchdog must flag the stream within max_frame_age plus one tick.
    _, frame_id = probe.classify()
    last = probe.status_for(frame_id)
    assert last.safe
    seen = len(probe.statuses)
    stale = probe.spin(
        probe.executor,
        lambda: next((s for s in probe.statuses[seen:] if s.level == SafetyStatus.STALE), None),
        30.0,
        "a STALE status",
    )
    assert not stale.safe and stale.reason == "stale_stream"
    silence = (stale.header.stamp.sec - last.header.stamp.sec) + (
        stale.header.stamp.nanosec - last.header.stamp.nanosec
    ) / 1e9
    # measured from the last frame's stamp: + its delivery and inference time; generous for loaded CI machines
    assert MAX_FRAME_AGE <= silence <= MAX_FRAME_AGE + WATCHDOG_PERIOD + 2.0

    # Frames return: safe again.
    _, frame_id = probe.classify()
    recovered = probe.status_for(frame_id)
    assert recovered.safe and recovered.consecutive_unsafe == 0
    assert mixer.alive() and monitor.alive()


def test_diagnostics_report_rate_latency_and_device(pipeline):
    probe, _, _ = pipeline
    for _ in range(3):
        probe.classify()

    def mixer_status():  # this pipeline's mixer: /diagnostics also carries the other mixers of the session
        for array in reversed(probe.diagnostics):
            for status in array.status:
                if status.name == "/mixer: inference":
                    return status
        return None

    status = probe.spin(probe.executor, mixer_status, 30.0, "mixer diagnostics")
    values = values_of(status)
    for key in ("rate_hz", "latency_p50_ms", "latency_p99_ms", "frames_dropped", "frames_rejected", "device"):
        assert key in values
    assert values["device"] == "cpu"
    probe.spin(
        probe.executor,
        lambda: any(s.name.startswith("/safety_monitor: safety") for a in probe.diagnostics for s in a.status),
        30.0,
        "safety monitor diagnostics",
    )


def test_startup_with_a_missing_or_corrupt_model_exits_with_one_line(start_node, constant_model, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a model")
    for path in (tmp_path / "missing.pt", corrupt):
        node = start_node("mixer_node", {"standard_model": str(constant_model), "robust_model": str(path)})
        deadline = time.monotonic() + 60
        while node.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.stop() == 1
        lines = [line for line in node.output().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("mixer_node: error: ") and str(path.name) in lines[0]


SOFT_LOGITS = [0.0, 0, 0, 0.5, 0, 1.0, 0, 0, 0, 0]  # h: class 5 ahead of class 3, softly


def test_robust_logit_scale_multiplies_h_logits_before_mixing(
    start_node, constant_model, constant_logits, ros, spin, tmp_path
):
    soft = tmp_path / "soft.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(constant_logits(SOFT_LOGITS)), str(soft))
    parameters = {
        "standard_model": str(constant_model),
        "robust_model": str(soft),
        "robust_logit_scale": 3.0,
        "certification": "none",
        "alpha": 0.6,
        "cpu_threads": 1,
    }
    mixer = start_node("mixer_node", parameters, namespace="/sharp")
    _, node, executor = ros
    received = []
    node.create_subscription(MixedClassification, "/sharp/mixer/classification", received.append, RELIABLE)
    images = node.create_publisher(Image, "/sharp/image", qos_profile_sensor_data)
    spin(executor, lambda: images.get_subscription_count() >= 1 or not mixer.alive(), 60.0, "the sharpened mixer")
    assert mixer.alive(), mixer.output()
    image = array_to_image(np.zeros((28, 28), np.uint8), "mono8")
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:  # best-effort images: publish until one is classified
        images.publish(image)
        executor.spin_once(timeout_sec=0.2)
    assert received, mixer.output()
    g = torch.nn.functional.one_hot(torch.tensor(3), 10).double() * 20.0
    h = torch.tensor(SOFT_LOGITS, dtype=torch.float64)
    expected = 0.4 * torch.softmax(g, 0) + 0.6 * torch.softmax(3.0 * h, 0)
    unsharpened = 0.4 * torch.softmax(g, 0) + 0.6 * torch.softmax(h, 0)
    assert np.allclose(received[0].probabilities, expected.numpy(), atol=1e-6)
    assert not np.allclose(received[0].probabilities, unsharpened.numpy(), atol=1e-2)
    assert (received[0].class_id, received[0].certified, received[0].certified_radius) == (3, False, 0.0)


def test_lipschitz_certification_is_deterministic_and_matches_the_core(start_node, constant_model, ros, spin):
    """certification lipschitz with the embedded Lipschitz h (its constant proven at configure): one forward,
    confidence 1, no noise samples, the radius of core.certify.lipschitz_logit_radius on the same frame, the
    constant on /diagnostics; a model whose constant cannot be bounded is refused at startup with one line."""
    from mix_perception.core.certify import lipschitz_logit_radius
    from mix_perception.core.lipschitz import lipschitz_bound, margin_lipschitz
    from mix_perception.core.models import load_default
    from mix_perception.experiments.data import load_split

    parameters = {
        "standard_model": "default:standard",
        "robust_model": "default:lipschitz",
        "alpha": 0.8,
        "certification": "lipschitz",
        "robust_logit_scale": 4.0,
        "cpu_threads": 1,
        "diagnostics_period": 0.2,
    }
    mixer = start_node("mixer_node", parameters, namespace="/lip")
    _, node, executor = ros
    received, diagnostics = [], []
    node.create_subscription(MixedClassification, "/lip/mixer/classification", received.append, RELIABLE)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    images = node.create_publisher(Image, "/lip/image", qos_profile_sensor_data)
    spin(executor, lambda: images.get_subscription_count() >= 1 or not mixer.alive(), 60.0, "the Lipschitz mixer")
    assert mixer.alive(), mixer.output()
    h = load_default("lipschitz")
    constants = lipschitz_bound(h, (1, 28, 28)), margin_lipschitz(h, (1, 28, 28))
    frames = (load_split("test").images[:20, 0].numpy() * 255).round().astype(np.uint8)
    with torch.no_grad():  # the radii the core gives these frames: the node's float32 input, h's float64 logits
        z = h.double()((torch.from_numpy(frames).float() * (1.0 / 255.0)).double().unsqueeze(1))
    radii = lipschitz_logit_radius(z, 0.8, *constants, 4.0)
    pixels = frames[int(radii.argmax())]  # a frame the mixture certifies; its radius in the frame's pixels:
    bound = FrameConverter(InputSpec()).frame_bound(pixels[:, :, None], "mono")
    expected = (float(radii.max()) - bound.offset) / bound.divisor  # divisor 1, offset: float32 rounding
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:  # best-effort images: publish until one is classified
        images.publish(array_to_image(pixels, "mono8"))
        executor.spin_once(timeout_sec=0.2)
    assert received, mixer.output()
    msg = received[0]
    assert msg.certificate == MixedClassification.CERTIFICATE_LIPSCHITZ and msg.certified
    assert msg.certificate_confidence == 1.0 and msg.samples == 0 and msg.norm == "l2"
    assert msg.certified_radius == pytest.approx(expected, rel=1e-5) and msg.certified_radius <= expected

    def constant():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name == "/lip/mixer: inference" and "lipschitz_constant" in values_of(status):
                    return float(values_of(status)["lipschitz_constant"])
        return None

    published = spin(executor, constant, 30.0, "the proven constant on /diagnostics")
    assert published == pytest.approx(constants[0], abs=1e-3)

    refused = start_node("mixer_node", {**parameters, "robust_model": str(constant_model)}, namespace="/lip_refused")
    deadline = time.monotonic() + 60
    while refused.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused.stop() == 1
    lines = [line for line in refused.output().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mixer_node: error: cannot bound the Lipschitz constant"), lines
