"""Ctrl-C under `ros2 launch`, repeated: how often every node exits cleanly, and how fast.

Each run starts mixer (the parameter file's models and certification), safety monitor and demo camera
(30 Hz) as separate processes in one process group, as `ros2 launch` does, waits until the mixer has
classified a few frames, then does what a terminal's Ctrl-C and launch do: SIGINT to the whole group,
then launch's own SIGINT to each node. A run is clean when every node exits with status 0 within 2 s
and prints no traceback and no abort. Printed, not asserted: clean runs out of `--runs`, and the
slowest exit of each run. A node still running after 2 s gets SIGABRT, and the Python stacks of
its threads (faulthandler, on in every node here) are printed: where it was stuck.

    .venv/bin/python benchmarks/shutdown.py [--runs 20] [--config config/mixer.yaml]
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import isolate_ros, node_command

NODES = {"mixer_node": [], "safety_monitor": [], "demo_camera": ["-p", "rate:=30.0"]}
BAD_SIGNS = ("Traceback", "terminate called", "Aborted", "Failed to publish")


def command(executable: str, config: Path) -> list[str]:
    return node_command(executable, "--params-file", str(config), *NODES[executable])


def classified(node, executor, count: int, timeout: float) -> bool:
    """Spin until `count` classifications of /mixer/classification arrived."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mix_perception.msg import MixedClassification

    received = []
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    subscription = node.create_subscription(MixedClassification, "/mixer/classification", received.append, reliable)
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    node.destroy_subscription(subscription)
    return len(received) >= count


def stacks(process: subprocess.Popen, log) -> str:
    """SIGABRT to a node that does not stop; the end of its log: faulthandler's dump of every thread."""
    process.send_signal(signal.SIGABRT)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    log.flush()
    return "\n".join(Path(log.name).read_text().splitlines()[-60:])


def one_run(config: Path, node, executor, folder: Path) -> tuple[bool, float, str]:
    """(clean, slowest exit in s, what went wrong)."""
    processes, leader = {}, None
    for name in NODES:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - closed below
        processes[name] = (subprocess.Popen(command(name, config), stdout=log, stderr=subprocess.STDOUT,
                                            env=os.environ | {"PYTHONFAULTHANDLER": "1"},
                                            process_group=0 if leader is None else leader), log)  # fmt: skip
        leader = leader or processes[name][0].pid
    try:
        if not classified(node, executor, 5, 120.0):
            return False, 0.0, "the mixer classified nothing"
        signalled = time.monotonic()
        os.killpg(leader, signal.SIGINT)
        time.sleep(0.05)
        for process, _ in processes.values():
            process.send_signal(signal.SIGINT)
        slowest, problems = 0.0, []
        for name, (process, log) in processes.items():
            try:
                code = process.wait(timeout=max(0.1, signalled + 2.0 - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"{name} still running after 2 s; its stacks:\n{stacks(process, log)}")
                continue
            slowest = max(slowest, time.monotonic() - signalled)
            log.flush()
            output = (folder / f"{name}.log").read_text()
            if code != 0:
                problems.append(f"{name} exited {code}")
            problems += [f"{name} printed {sign!r}" for sign in BAD_SIGNS if sign in output]
        return not problems, slowest, "; ".join(problems)
    finally:
        for process, log in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    args = parser.parse_args()
    isolate_ros()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from mix_perception.commands.run import default_config

    config = args.config or default_config()
    rclpy.init()
    node = rclpy.create_node("shutdown_benchmark")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    clean = 0
    try:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                ok, slowest, problems = one_run(config, node, executor, Path(folder))
            clean += ok
            verdict = "clean" if ok else "NOT clean"
            print(f"run {run + 1:2d}: {verdict}, slowest exit {slowest:.2f} s {problems}", flush=True)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    print(f"{clean} of {args.runs} runs clean (every node: status 0 within 2 s, no traceback, no abort)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
