"""launch/mixer.launch.py against the real launch / launch_ros (skipped where ROS 2 launch is not installed,
as on a PyPI-only machine)."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("launch_ros")

LAUNCH_FILE = pathlib.Path(__file__).resolve().parents[2] / "launch" / "mixer.launch.py"


def load_description():
    spec = importlib.util.spec_from_file_location("mixer_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def text(value) -> str:
    """A launch attribute (str or list of substitutions) as text."""
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions

    from launch import LaunchContext

    return perform_substitutions(LaunchContext(), normalize_to_list_of_substitutions(value))


def test_launch_description_declares_arguments_and_nodes():
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    description = load_description()
    arguments = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert arguments == {"image_topic", "params_file", "device", "demo"}
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert [text(n.node_executable) for n in nodes] == ["mixer_node", "safety_monitor", "demo_camera"]
    assert {text(n.node_package) for n in nodes} == {"mix_perception"}
    assert nodes[2].condition is not None
