"""Entry points of the node executables (`ros2 run mix_perception <name>`): the stop request is installed
first, raising during startup (and, for the mixer, the malloc settings, before any thread starts), then
the node module, with rclpy and torch, is imported and run. A Ctrl-C before the node module's
spin.run_node takes over (while importing) ends the process here with status 0, no traceback.

Every node process also gets the Fast DDS profile for large frames (config/fastdds_large_frames.xml: a 16 MiB
shared-memory segment instead of 512 KB, so that a 640x480 rgb8 frame is not sent as UDP fragments, which best
effort drops) unless FASTDDS_DEFAULT_PROFILES_FILE is set already. It must be in the environment before rclpy
creates the DDS participant, hence here. A camera driver of another package needs the same variable (README).
"""

import importlib
import os

from mix_perception.ros import allocator, stop_request

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def use_large_frame_profile() -> None:
    """Set PROFILE_VARIABLE to the installed config/fastdds_large_frames.xml unless it is set (even to "")."""
    from mix_perception.commands.run import default_config

    profile = default_config().parent / "fastdds_large_frames.xml"
    if PROFILE_VARIABLE not in os.environ and profile.is_file():
        os.environ[PROFILE_VARIABLE] = str(profile)


def run_module(module: str) -> None:
    """Import `module` and run its main(); exit 0 on a stop request that arrives before main handles it."""
    use_large_frame_profile()
    try:
        importlib.import_module(module).main()
    except stop_request.StopRequested:
        stop_request.exit_now(0)


def mixer_node() -> None:
    stop_request.install(during_startup=True, exit_within=stop_request.EXIT_WITHIN_S)
    allocator.tune_malloc()
    run_module("mix_perception.ros.mixer_node")


def safety_monitor() -> None:
    stop_request.install(during_startup=True, exit_within=stop_request.EXIT_WITHIN_S)
    run_module("mix_perception.ros.safety_monitor")


def demo_camera() -> None:
    stop_request.install(during_startup=True, exit_within=stop_request.EXIT_WITHIN_S)
    run_module("mix_perception.ros.demo_camera")
