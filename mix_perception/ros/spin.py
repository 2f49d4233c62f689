"""Spinning nodes until Ctrl-C, SIGTERM, rclpy shutdown or an optional deadline; then destroying them."""

import time

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.qos import ReliabilityPolicy


def spin_nodes(nodes, duration: float | None = None, executor=None) -> int:
    """Spin `nodes` on one executor (default: MultiThreadedExecutor with 4 threads) for `duration`
    seconds (None: until interrupted). Destroys the nodes at the end. Returns 0."""
    executor = executor or MultiThreadedExecutor(num_threads=4)
    for node in nodes:
        executor.add_node(node)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while rclpy.ok() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    return 0


def startup_message(error: Exception) -> str:
    """First line of an exception's message (model file, parameter value, device), for a one-line exit."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def reliability_policy(name: str) -> ReliabilityPolicy:
    """ "reliable" -> RELIABLE, anything else ("best_effort") -> BEST_EFFORT."""
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
