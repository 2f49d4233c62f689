"""Spinning nodes until Ctrl-C, SIGTERM, rclpy shutdown or an optional deadline; then destroying them."""

import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import ReliabilityPolicy

from mix_perception.core.errors import first_line


def spin_nodes(nodes, duration: float | None = None, executor=None, destroy: bool = True) -> int:
    """Spin `nodes` on one executor for `duration` seconds (None: until interrupted). Destroys the
    nodes at the end unless `destroy` is False. Returns 0.

    Default executor: single-threaded. The callbacks are all short (the mixer's inference runs on its
    own worker thread), and rclpy 9.1's MultiThreadedExecutor.shutdown destroys its guard condition
    while pool threads still run callbacks ("cannot use Destroyable" at exit)."""
    executor = executor or SingleThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while rclpy.ok() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()  # waits for the callbacks in flight
        for node in nodes:
            executor.remove_node(node)
            if destroy:
                node.destroy_node()
    return 0


def run_node(executable: str, node_class, argv=None) -> int:
    """Entry point of one node executable: init rclpy, build `node_class()`, spin until interrupted.

    A node that cannot start (missing or corrupt model, bad parameter, absent device) exits 1 with
    one line `<executable>: error: <reason>` on stderr."""
    rclpy.init(args=sys.argv if argv is None else argv)
    try:
        try:
            node = node_class()
        except Exception as error:  # noqa: BLE001 - any startup failure is reported as one line
            print(f"{executable}: error: {first_line(error)}", file=sys.stderr)
            return 1
        return spin_nodes([node])
    finally:
        if rclpy.ok():
            rclpy.shutdown()


def reliability_policy(name: str) -> ReliabilityPolicy:
    """ "reliable" -> RELIABLE, anything else ("best_effort") -> BEST_EFFORT."""
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
