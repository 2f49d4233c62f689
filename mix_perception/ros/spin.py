"""Running nodes until Ctrl-C, SIGTERM, rclpy shutdown or an optional deadline, then stopping them cleanly.

Shutdown is ours, not rclpy's: rclpy is initialised without its signal handlers, and SIGINT and
SIGTERM only set an event (`stop_request.STOP`) that the spin loop checks every 0.1 s. The nodes are then destroyed (the
mixer stops its inference thread first) and the context is shut down last, so no thread ever
publishes on a dead context. A second signal, e.g. the one `ros2 launch` forwards after the
terminal's Ctrl-C, sets the same event again and changes nothing: the process ends with status 0.
A signal during a node executable's startup ends the startup at once (see stop_request).

A node executable then leaves with os._exit: everything was already closed in order (nodes,
context, which also flushes the ROS log files, then stdio), and the interpreter's own finalization
with torch loaded takes seconds, longer than a robot stack waits for a node to stop. A node executable
that crashes in C (SIGSEGV, SIGABRT, ...) prints every thread's Python stack to stderr first (faulthandler).
"""

import faulthandler
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from mix_perception.core.errors import first_line
from mix_perception.ros import exit_deadline, stop_request


def init(args=None) -> threading.Event:
    """rclpy.init without rclpy's signal handlers; returns the event that SIGINT and SIGTERM set."""
    stop = stop_request.install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop_request.ros_started()
    return stop


def spin_nodes(nodes, stop: threading.Event, duration: float | None = None) -> None:
    """Spin `nodes` on one executor until `stop` is set, rclpy shuts down or `duration` seconds pass.

    Single-threaded: the callbacks are all short (the mixer's inference runs on its own worker
    thread), and rclpy 9.1's MultiThreadedExecutor.shutdown destroys its guard condition while pool
    threads still run callbacks ("cannot use Destroyable" at exit)."""
    executor = SingleThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set() and rclpy.ok() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown()  # waits for the callbacks in flight
        for node in nodes:
            executor.remove_node(node)


def shut_down(nodes) -> None:
    """Destroy the nodes, then shut rclpy down. Safe to call twice."""
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()


def run_node(executable: str, make_node, argv=None) -> None:
    """Entry point of one node executable: init rclpy, `make_node()`, spin until stopped, exit 0.

    Startup (rclpy.init and make_node) ends at the first signal when the executable installed the stop
    request with `during_startup` (stop_request.StopRequested): the nodes made so far are destroyed and
    the process exits 0; make_node destroys a node it was still starting.

    A node that cannot start (missing or corrupt model, bad parameter, absent device) exits 1 with
    one line `<executable>: error: <reason>` on stderr. The teardown is bounded by stop_request.EXIT_WITHIN_S
    (exit_deadline): the process ends with its status even when DDS blocks in it. Never returns."""
    faulthandler.enable(all_threads=True)
    nodes, status = [], 0
    try:
        try:
            stop = init(sys.argv if argv is None else argv)
            nodes.append(make_node())
        finally:
            stop_request.end_startup()  # from here a signal only sets the stop request
        spin_nodes(nodes, stop)
    except stop_request.StopRequested:  # Ctrl-C during startup: what exists is destroyed below, exit 0
        pass
    except Exception as error:  # noqa: BLE001 - any startup failure is reported as one line
        # unless a stop was requested: then the stop caused it (a StopRequested raised inside a C++-backed
        # call comes back out as another exception), and the process ends with 0 like any stop
        if not stop_request.STOP.is_set():
            print(f"{executable}: error: {first_line(error)}", file=sys.stderr)
            status = 1
    finally:
        stop_request.flush_stdio()
        exit_deadline.arm(stop_request.EXIT_WITHIN_S, status)
        shut_down(nodes)
    stop_request.exit_now(status)


def reliability_policy(name: str) -> ReliabilityPolicy:
    """ "reliable" -> RELIABLE, anything else ("best_effort") -> BEST_EFFORT."""
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
