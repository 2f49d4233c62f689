"""The nodes built in this process: declared parameters and descriptors, injected models, the mixer's
lifecycle and its configure-time validation. (Behaviour across processes is in test_integration.py.)"""

import math

import pytest
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from torch import nn

from mix_perception.ros import parameters
from mix_perception.ros.demo_camera import EXTRA as DEMO_EXTRA
from mix_perception.ros.demo_camera import DemoCameraNode
from mix_perception.ros.demo_sources import Frame
from mix_perception.ros.mixer_node import MixerNode, start_mixer
from mix_perception.ros.safety_monitor import SafetyMonitorNode


@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def check_declared(node, table, reconfigurable=False):
    names = [spec.name for spec in table]
    assert set(names) <= {name for name in node._parameters}
    for spec, descriptor in zip(table, node.describe_parameters(names), strict=True):
        assert descriptor.description == spec.description
        assert descriptor.read_only == (not spec.dynamic and (spec.startup or not reconfigurable))
        if spec.bounds and isinstance(spec.default, float):
            assert (descriptor.floating_point_range[0].from_value, descriptor.floating_point_range[0].to_value) == (
                pytest.approx(spec.bounds[0]),
                pytest.approx(spec.bounds[1]),
            )


def started(context, overrides=()):
    """A mixer with injected models, brought to active by `start` (autostart)."""
    return start_mixer(tiny(), tiny(), context=context, parameter_overrides=list(overrides))


def test_mixer_declares_every_parameter_and_uses_injected_models(context):
    node = started(context, [Parameter("certification", value="none")])
    try:
        check_declared(node, parameters.MIXER, reconfigurable=True)
        alpha = node.describe_parameter("alpha")
        assert not alpha.read_only and alpha.floating_point_range[0].to_value == 1.0
        assert node.certification.method == "none" and str(node.device) == "cpu" and node.active
        assert node.counters() == {"received": 0, "processed": 0, "dropped": 0, "rejected": 0, "lost": 0, "failed": 0}
    finally:
        node.destroy_node()


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "certification",
            "exact",
            r"parameter certification must be one of none, lipschitz, smoothing, smoothing_theorem4, got 'exact'",
        ),
        ("input.size", [28], r"input.size must be \[height, width\] of positive ints, got \[28\]"),
        ("input.std", [0.0], r"input.std must be positive"),
        ("device", "tpu", r"invalid device 'tpu'"),
        ("image_topics", [""], r"image_topics must list at least one topic"),
    ],
)
def test_mixer_refuses_bad_configure_parameters_with_one_line(context, name, value, message):
    with pytest.raises(RuntimeError, match=message):
        started(context, [Parameter(name, value=value)])


def test_mixer_refuses_an_out_of_range_alpha_at_once():
    """... and its context, which destroys the half-constructed node (the traceback keeps it alive), shuts
    down cleanly."""
    own = rclpy.Context()
    rclpy.init(context=own)
    with pytest.raises(Exception, match=r"Parameter alpha out of range Min: 0.0, Max: 1.0, value: nan") as refused:
        MixerNode(tiny(), tiny(), context=own, parameter_overrides=[Parameter("alpha", value=math.nan)])
    rclpy.shutdown(context=own)
    assert refused.traceback  # still referenced here, so the shutdown above met the half-constructed node


def test_mixer_refuses_robust_logit_scale_with_a_smoothing_certificate(context):
    for certification in ("smoothing", "smoothing_theorem4"):
        overrides = [Parameter("robust_logit_scale", value=2.0), Parameter("certification", value=certification)]
        with pytest.raises(RuntimeError, match="robust_logit_scale 2.0 needs certification none or lipschitz"):
            started(context, overrides)
    node = started(context, [Parameter("robust_logit_scale", value=2.0), Parameter("certification", value="none")])
    try:
        assert node.certification.logit_scale == 2.0 and node.runtime.classifier.certifier.logit_scale == 2.0
    finally:
        node.destroy_node()


def test_mixer_refuses_the_old_name_robust_sharpening_at_configure(context, tmp_path):
    """rclpy ignores an undeclared parameter given in a params file or as an override; the mixer names it."""
    params_file = tmp_path / "old.yaml"
    params_file.write_text("/**/mixer:\n  ros__parameters:\n    robust_sharpening: 3.0\n")
    given = (
        {"cli_args": ["--ros-args", "--params-file", str(params_file)]},
        {"parameter_overrides": [Parameter("robust_sharpening", value=3.0)]},
    )
    for how in given:
        with pytest.raises(RuntimeError, match=r"^parameter robust_sharpening was renamed robust_logit_scale$"):
            start_mixer(tiny(), tiny(), context=context, **how)


def test_mixer_lifecycle_swaps_its_configuration_without_a_restart(context):
    """deactivate -> set parameters -> cleanup -> configure -> activate; configure-time parameters are
    refused while active, accepted while inactive, and in force after the next configure."""
    node = MixerNode(tiny(), tiny(), context=context, parameter_overrides=[Parameter("autostart", value=False)])
    try:
        node.start()  # autostart false: stays unconfigured
        assert node.runtime is None and not node.active and not node.image_subscriptions
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS and node.runtime is not None
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.active and node.worker.is_alive() and len(node.image_subscriptions) == 1
        assert node.certification.method == "lipschitz"  # the default

        refused = node.set_parameters([Parameter("certification", value="none")])[0]
        assert not refused.successful and "deactivate" in refused.reason
        assert node.set_parameters([Parameter("alpha", value=0.9)])[0].successful  # dynamic: any time

        worker = node.worker
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert not node.active and not worker.is_alive() and not node.image_subscriptions
        topics = ["/cam_a/image", "cam_b/image"]
        changes = [Parameter("certification", value="none"), Parameter("image_topics", value=topics)]
        results = node.set_parameters(changes)
        assert all(r.successful for r in results)
        bad = node.set_parameters([Parameter("certification", value="exact")])[0]
        assert not bad.successful and "must be one of" in bad.reason
        assert node.certification.method == "lipschitz"  # in force only after the next configure
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.runtime is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.certification.method == "none" and node.alpha == 0.9
        assert sorted(s.topic_name for s in node.image_subscriptions) == ["/cam_a/image", "/cam_b/image"]
    finally:
        node.destroy_node()
    assert node.worker is None


def test_safety_monitor_declares_every_parameter(context):
    node = SafetyMonitorNode(context=context)
    try:
        check_declared(node, parameters.SAFETY_MONITOR)
        assert node.limits.required_radius == 0.1
        node.set_parameters([Parameter("required_radius", value=0.3)])
        assert node.limits.required_radius == 0.3
    finally:
        node.destroy_node()


def test_demo_camera_with_an_injected_source_stops_at_its_limit(context):
    import numpy as np

    source = [Frame(np.zeros((4, 4, 1), np.uint8), 2, 0)]
    node = DemoCameraNode(source, context=context, parameter_overrides=[Parameter("limit", value=3)])
    try:
        check_declared(node, parameters.DEMO_CAMERA + DEMO_EXTRA)
        for _ in range(5):
            node._tick()
        assert node.published == 3 and node.finished
    finally:
        node.destroy_node()


def test_mixer_counts_the_frames_a_publisher_sent_that_never_reached_it(context, spin):
    """Reliable, keep last 1: frames published while the mixer does not take them replace each other in its
    DDS queue; the publication sequence numbers of the ones that arrive tell how many never did."""
    import numpy as np
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from mix_perception.ros.image_conversion import array_to_image

    overrides = [Parameter(name, value=value) for name, value in
                 (("certification", "none"), ("image_reliability", "reliable"), ("image_depth", 1))]  # fmt: skip
    mixer = started(context, overrides)
    camera = rclpy.create_node("lost_frames_camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(mixer)
    try:
        reliable = QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE)
        publisher = camera.create_publisher(Image, "image", reliable)
        frame = array_to_image(np.zeros((28, 28), np.uint8), "mono8")
        spin(executor, lambda: publisher.get_subscription_count() > 0, what="the mixer's subscription")
        publisher.publish(frame)
        spin(executor, lambda: mixer.counters()["received"] == 1, what="the first frame")
        for _ in range(20):  # the mixer's executor is not spun: its queue keeps only the newest
            publisher.publish(frame)
        spin(executor, lambda: mixer.counters()["received"] == 2, what="the newest frame")
        executor.spin_once(timeout_sec=0.2)
        assert mixer.counters()["received"] == 2 and mixer.counters()["lost"] == 19
    finally:
        executor.shutdown()
        camera.destroy_node()
        mixer.destroy_node()


def test_mixer_publishes_the_fingerprint_of_its_pipeline_and_a_new_one_after_alpha_changes(context, spin):
    """What the monitor checks a calibrated acceptance rule against (core.fingerprint): computed here
    independently from the same models, input shape, certification key and alpha."""
    import numpy as np
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from mix_perception.core.fingerprint import PipelineFingerprint
    from mix_perception.msg import MixedClassification
    from mix_perception.ros.image_conversion import array_to_image

    g, h = tiny(), tiny()
    overrides = [Parameter("certification", value="none")]  # own namespace: no other test's mixer answers
    mixer = start_mixer(g, h, context=context, namespace="/fingerprint", parameter_overrides=overrides)
    client = rclpy.create_node("fingerprint_client", context=context, namespace="/fingerprint")
    executor = SingleThreadedExecutor(context=context)
    for node in (mixer, client):
        executor.add_node(node)
    try:
        received = []
        client.create_subscription(MixedClassification, "mixer/classification", received.append, 10)
        publisher = client.create_publisher(Image, "image", 10)
        frame = array_to_image(np.zeros((28, 28), np.uint8), "mono8")
        scale, first = mixer.get_parameter("robust_logit_scale").value, mixer.get_parameter("alpha").value
        expected = PipelineFingerprint(g, h, (1, 28, 28), f"none {scale!r}")

        def classified_with(alpha):
            received.clear()
            publisher.publish(frame)
            spin(executor, lambda: received, what="a classification")
            assert received[0].alpha == alpha
            return received[0].pipeline

        spin(executor, lambda: publisher.get_subscription_count() > 0, what="the mixer's subscription")
        before = classified_with(first)
        assert mixer.set_parameters([Parameter("alpha", value=0.9)])[0].successful
        after = classified_with(0.9)
        assert (before, after) == (expected.for_alpha(first), expected.for_alpha(0.9)) and before != after
    finally:
        executor.shutdown()
        client.destroy_node()
        mixer.destroy_node()
