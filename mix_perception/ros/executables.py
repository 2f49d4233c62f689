"""Entry points of the node executables (`ros2 run mix_perception <name>`): the stop request is installed
first (and, for the mixer, the malloc settings, before any thread starts), then the node module, with
rclpy and torch, is imported and run."""

from mix_perception.ros import allocator, stop_request


def mixer_node() -> None:
    stop_request.install()
    allocator.tune_malloc()
    from mix_perception.ros.mixer_node import main

    main()


def safety_monitor() -> None:
    stop_request.install()
    from mix_perception.ros.safety_monitor import main

    main()


def demo_camera() -> None:
    stop_request.install()
    from mix_perception.ros.demo_camera import main

    main()
