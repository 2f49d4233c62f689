"""Entry points of the node executables (`ros2 run mix_perception <name>`): the stop request is installed
first, raising during startup (and, for the mixer, the malloc settings, before any thread starts), then
the node module, with rclpy and torch, is imported and run. A Ctrl-C before the node module's
spin.run_node takes over (while importing) ends the process here with status 0, no traceback."""

import importlib

from mix_perception.ros import allocator, stop_request


def run_module(module: str) -> None:
    """Import `module` and run its main(); exit 0 on a stop request that arrives before main handles it."""
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
