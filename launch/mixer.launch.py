"""Start the mixer and the safety monitor (and, with demo:=true, the demo camera) from one parameter file.

    ros2 launch mix_perception mixer.launch.py image_topic:=/camera/image_raw
    ros2 launch mix_perception mixer.launch.py image_topics:="['/front/image_raw', '/rear/image_raw']"
    ros2 launch mix_perception mixer.launch.py demo:=true device:=cpu
    ros2 launch mix_perception mixer.launch.py params_file:=/path/to/my_mixer.yaml autostart:=false

Arguments: image_topic (one camera, default `image`; `image/compressed` follows it as
<image_topic>/compressed), image_topics (several cameras, a YAML list; sets the mixer's image_topics
and the monitor's sources), params_file (default: the installed config/mixer.yaml), device (auto |
cpu | cuda | cuda:N), autostart (true: the mixer configures and activates itself, as the installed
config says; false: it waits for lifecycle transitions), demo (true: also publish the shipped
Fashion-MNIST test images on image_topic). device, autostart and image_topics override the params
file only when they are given.
Topics: /mixer/classification, /mixer/rejected, /safety_monitor/status, /diagnostics.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def overrides(context) -> tuple[dict, dict]:
    """(mixer, monitor) parameters that override the params file: only the arguments given."""
    from mix_perception.ros.launch_arguments import launch_overrides

    def given(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    return launch_overrides(given("device"), given("autostart"), given("image_topics"))


def nodes(context):
    image_topic = LaunchConfiguration("image_topic")
    params_file = LaunchConfiguration("params_file")
    mixer, monitor = overrides(context)
    return [
        Node(
            package="mix_perception",
            executable="mixer_node",
            name="mixer",
            parameters=[params_file, mixer],
            remappings=[("image", image_topic), ("image/compressed", [image_topic, "/compressed"])],
            output="screen",
        ),
        Node(
            package="mix_perception",
            executable="safety_monitor",
            name="safety_monitor",
            parameters=[params_file, monitor],
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


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("image_topic", default_value="image", description="camera image topic"),
            DeclareLaunchArgument(
                "image_topics", default_value="", description="several cameras: a YAML list of image topics"
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([FindPackageShare("mix_perception"), "config", "mixer.yaml"]),
                description="ROS 2 parameter file for mixer, safety_monitor and demo_camera",
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="auto | cpu | cuda | cuda:N (default: the params file's)"
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="",
                description="true: bring the mixer to active; false: leave it unconfigured (default: params file)",
            ),
            DeclareLaunchArgument("demo", default_value="false", description="also start the demo camera"),
            OpaqueFunction(function=nodes),
        ]
    )
