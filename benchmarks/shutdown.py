"""Ctrl-C under `ros2 launch`, repeated: how often every node exits cleanly, and how fast.

Each run starts mixer (the parameter file's models and certification), safety monitor and demo camera
(30 Hz) as separate processes in one process group, as `ros2 launch` does, then stops them one way:

- once: SIGINT to each node, after the mixer has classified a few frames;
- twice: the same, then SIGINT to each again after a gap (0.05, 0.2, 0.5, 1 s in turn);
- group: what a terminal's Ctrl-C and launch do: SIGINT to the whole group, then launch's own to each;
- startup-T: "group", T s after the launch (0.5, 1, 2, 3), while the nodes import, load and prove.

A run is clean when every node exits with status 0 within 2 s of the first signal and prints no
traceback and no abort. Printed, not asserted: clean runs out of `--runs` per case, and the slowest
exit. A node still running after 2 s gets SIGABRT, and the Python stacks of its threads
(faulthandler, on in every node here) are printed: where it was stuck. `--busy` runs two processes
that burn a CPU core each meanwhile.

    .venv/bin/python benchmarks/shutdown.py [--runs 20] [--cases once,twice,group,startup-0.5,...] [--busy]
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
CASES = ("once", "twice", "group", "startup-0.5", "startup-1", "startup-2", "startup-3")
TWICE_GAPS = (0.05, 0.2, 0.5, 1.0)
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


def send(case: str, run: int, leader: int, processes) -> None:
    """The signals of `case` (see the module docstring); run picks the gap of "twice"."""
    if case == "once" or case == "twice":
        for process in processes:
            process.send_signal(signal.SIGINT)
        if case == "twice":
            time.sleep(TWICE_GAPS[run % len(TWICE_GAPS)])
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
        return
    os.killpg(leader, signal.SIGINT)  # group and startup-T: the terminal's Ctrl-C, then launch's SIGINT
    time.sleep(0.05)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)


def one_run(case: str, run: int, config: Path, node, executor, folder: Path) -> tuple[bool, float, str]:
    """(clean, slowest exit in s after the first signal, what went wrong)."""
    processes, leader = {}, None
    for name in NODES:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - closed below
        processes[name] = (subprocess.Popen(command(name, config), stdout=log, stderr=subprocess.STDOUT,
                                            env=os.environ | {"PYTHONFAULTHANDLER": "1"},
                                            process_group=0 if leader is None else leader), log)  # fmt: skip
        leader = leader or processes[name][0].pid
    try:
        if case.startswith("startup-"):
            time.sleep(float(case.removeprefix("startup-")))
        elif not classified(node, executor, 5, 120.0):
            return False, 0.0, "the mixer classified nothing"
        signalled = time.monotonic()
        send(case, run, leader, [process for process, _ in processes.values()])
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
            printed = [sign for sign in BAD_SIGNS if sign in output]
            problems += [f"{name} printed {sign!r}" for sign in printed]
            if printed or code != 0:
                problems.append(f"the end of its output:\n{output[-1500:]}")
        return not problems, slowest, "; ".join(problems)
    finally:
        for process, log in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def burners(count: int) -> list[subprocess.Popen]:
    """`count` processes that each keep one CPU core busy."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs of each case (20)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)} (all)")
    parser.add_argument("--busy", action="store_true", help="two CPU-burning processes run meanwhile")
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if not set(cases) <= set(CASES):
        parser.error(f"unknown case in {args.cases}; cases: {', '.join(CASES)}")
    isolate_ros()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from mix_perception.commands.run import default_config

    config = args.config or default_config()
    rclpy.init()
    node = rclpy.create_node("shutdown_benchmark")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    busy = burners(2) if args.busy else []
    summary = []
    try:
        for case in cases:
            clean, slowest_of_all = 0, 0.0
            for run in range(args.runs):
                with tempfile.TemporaryDirectory() as folder:
                    ok, slowest, problems = one_run(case, run, config, node, executor, Path(folder))
                clean += ok
                slowest_of_all = max(slowest_of_all, slowest)
                verdict = "clean" if ok else "NOT clean"
                print(f"{case} run {run + 1:2d}: {verdict}, slowest exit {slowest:.2f} s {problems}", flush=True)
            summary.append(f"{case}: {clean} of {args.runs} runs clean, slowest exit {slowest_of_all:.2f} s")
    finally:
        for process in busy:
            process.kill()
            process.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    print(f"clean: every node status 0 within 2 s of the first signal, no traceback, no abort{' (--busy)' * args.busy}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
