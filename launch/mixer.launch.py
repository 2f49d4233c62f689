"""Start the mixer and the safety monitor (and, with demo:=true, the demo camera) from one parameter file.

    ros2 launch mix_perception mixer.launch.py image_topic:=/camera/image_raw
    ros2 launch mix_perception mixer.launch.py demo:=true device:=cpu
    ros2 launch mix_perception mixer.launch.py params_file:=/path/to/my_mixer.yaml

Arguments: image_topic (default `image`; `image/compressed` follows it as <image_topic>/compressed),
params_file (default: the installed config/mixer.yaml), device (auto | cpu | cuda | cuda:N),
demo (true: also publish the shipped Fashion-MNIST test images on image_topic).
Topics: /mixer/classification, /mixer/rejected, /safety_monitor/status, /diagnostics.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    image_topic = LaunchConfiguration("image_topic")
    params_file = LaunchConfiguration("params_file")
    image_remaps = [("image", image_topic), ("image/compressed", [image_topic, "/compressed"])]
    return LaunchDescription(
        [
            DeclareLaunchArgument("image_topic", default_value="image", description="camera image topic"),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([FindPackageShare("mix_perception"), "config", "mixer.yaml"]),
                description="ROS 2 parameter file for mixer, safety_monitor and demo_camera",
            ),
            DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda | cuda:N"),
            DeclareLaunchArgument("demo", default_value="false", description="also start the demo camera"),
            Node(
                package="mix_perception",
                executable="mixer_node",
                name="mixer",
                parameters=[params_file, {"device": LaunchConfiguration("device")}],
                remappings=image_remaps,
                output="screen",
            ),
            Node(
                package="mix_perception",
                executable="safety_monitor",
                name="safety_monitor",
                parameters=[params_file],
                output="screen",
            ),
            Node(
                package="mix_perception",
                executable="demo_camera",
                name="demo_camera",
                parameters=[params_file],
                remappings=[("image", image_topic)],
                output="screen",
                condition=IfCondition(LaunchConfiguration("demo")),
            ),
        ]
    )
