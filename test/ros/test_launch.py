"""launch/mixer.launch.py against the real launch / launch_ros (skipped where ROS 2 launch is not installed,
as on a PyPI-only machine)."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("launch_ros")

LAUNCH_FILE = pathlib.Path(__file__).resolve().parents[2] / "launch" / "mixer.launch.py"
CONFIG = pathlib.Path(__file__).resolve().parents[2] / "config" / "mixer.yaml"


def load_module():
    spec = importlib.util.spec_from_file_location("mixer_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context_with(description, **given):
    """A LaunchContext holding every declared argument: the given values, else the defaults."""
    from launch.actions import DeclareLaunchArgument
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions

    from launch import LaunchContext

    context = LaunchContext()
    for argument in (e for e in description.entities if isinstance(e, DeclareLaunchArgument)):
        default = given.get(argument.name)
        if default is None:
            default = perform_substitutions(context, normalize_to_list_of_substitutions(argument.default_value))
        context.launch_configurations[argument.name] = default
    return context


def test_launch_description_declares_arguments_and_nodes():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    module = load_module()
    description = module.generate_launch_description()
    arguments = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert arguments == {"image_topic", "image_topics", "params_file", "device", "autostart", "demo"}
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    nodes = opaque.execute(context_with(description, params_file=str(CONFIG)))
    assert all(isinstance(n, Node) for n in nodes) and len(nodes) == 3
    assert nodes[2].condition is not None


def test_device_autostart_and_topics_override_the_params_file_only_when_given():
    module = load_module()
    description = module.generate_launch_description()
    assert module.overrides(context_with(description, params_file=str(CONFIG))) == ({}, {})
    given = context_with(
        description, params_file=str(CONFIG), device="cpu", autostart="false", image_topics="['/a/image', 'b/image']"
    )
    mixer, monitor = module.overrides(given)
    assert mixer == {"device": "cpu", "autostart": False, "image_topics": ["/a/image", "b/image"]}
    assert monitor == {"sources": ["/a/image", "/b/image"]}
