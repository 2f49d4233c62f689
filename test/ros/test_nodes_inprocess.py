"""The nodes built in this process: declared parameters and descriptors, injected models, startup
validation. (Behaviour across processes is in test_integration.py.)"""

import math

import pytest
import rclpy
from rclpy.parameter import Parameter
from torch import nn

from mix_perception.ros import parameters
from mix_perception.ros.demo_camera import EXTRA as DEMO_EXTRA
from mix_perception.ros.demo_camera import DemoCameraNode
from mix_perception.ros.demo_sources import Frame
from mix_perception.ros.mixer_node import MixerNode
from mix_perception.ros.safety_monitor import SafetyMonitorNode


@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def check_declared(node, table):
    names = [spec.name for spec in table]
    assert set(names) <= {name for name in node._parameters}
    for spec, descriptor in zip(table, node.describe_parameters(names), strict=True):
        assert descriptor.description == spec.description
        assert descriptor.read_only == spec.read_only
        if spec.bounds and isinstance(spec.default, float):
            assert (descriptor.floating_point_range[0].from_value, descriptor.floating_point_range[0].to_value) == (
                pytest.approx(spec.bounds[0]),
                pytest.approx(spec.bounds[1]),
            )


def test_mixer_declares_every_parameter_and_uses_injected_models(context):
    node = MixerNode(tiny(), tiny(), context=context, parameter_overrides=[Parameter("certification", value="none")])
    try:
        check_declared(node, parameters.MIXER)
        alpha = node.describe_parameter("alpha")
        assert not alpha.read_only and alpha.floating_point_range[0].to_value == 1.0
        assert node.certification.method == "none" and str(node.device) == "cpu"
        assert node.counters() == {"received": 0, "processed": 0, "dropped": 0, "rejected": 0, "failed": 0}
    finally:
        node.destroy_node()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("alpha", math.nan, r"Parameter alpha out of range Min: 0.0, Max: 1.0, value: nan"),
        ("certification", "exact", r"parameter certification must be one of none, lipschitz, smoothing, got 'exact'"),
        ("input.size", [28], r"input.size must be \[height, width\] of positive ints, got \[28\]"),
        ("input.std", [0.0], r"input.std must be positive"),
        ("device", "tpu", r"invalid device 'tpu'"),
    ],
)
def test_mixer_refuses_bad_startup_parameters(context, name, value, message):
    with pytest.raises(Exception, match=message):
        MixerNode(tiny(), tiny(), context=context, parameter_overrides=[Parameter(name, value=value)])


def test_mixer_refuses_robust_sharpening_with_a_certificate(context):
    for certification in ("smoothing", "lipschitz"):
        overrides = [Parameter("robust_sharpening", value=2.0), Parameter("certification", value=certification)]
        with pytest.raises(ValueError, match="robust_sharpening 2.0 needs certification none"):
            MixerNode(tiny(), tiny(), context=context, parameter_overrides=overrides)
    node = MixerNode(
        tiny(),
        tiny(),
        context=context,
        parameter_overrides=[Parameter("robust_sharpening", value=2.0), Parameter("certification", value="none")],
    )
    try:
        assert node.classifier.robust.scale == 2.0
    finally:
        node.destroy_node()


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
