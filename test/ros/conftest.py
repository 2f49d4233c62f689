"""Fixtures of the ROS tests: an isolated DDS domain per test session, nodes started as separate
processes (the installed executables, as `ros2 run` would start them), tiny TorchScript models.

ROS_DOMAIN_ID is random per session and discovery stays on this machine, so parallel sessions
and other users of the network do not see each other. Tests wait for matched endpoints, never sleep.
"""

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

EXECUTABLES = Path(sys.prefix) / "lib" / "mix_perception"
MODULES = {
    "mixer_node": "mix_perception.ros.mixer_node",
    "safety_monitor": "mix_perception.ros.safety_monitor",
    "demo_camera": "mix_perception.ros.demo_camera",
}


def command_for(executable: str) -> list[str]:
    """The installed entry script (lib/mix_perception/<name>), else `python -P -m <module>`."""
    script = EXECUTABLES / executable
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-P", "-m", MODULES[executable]]


def ros_value(value) -> str:
    """A parameter value as `-p name:=value` wants it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(ros_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class NodeProcess:
    """A node in its own process; stdout+stderr go to a log file shown when a test fails."""

    def __init__(
        self, executable: str, parameters: dict, log_dir: Path, namespace: str = "", params_file: Path | None = None
    ):
        args = ["--ros-args", "--log-level", "warn"] + (["-r", f"__ns:={namespace}"] if namespace else [])
        args += ["--params-file", str(params_file)] if params_file else []
        for name, value in parameters.items():
            args += ["-p", f"{name}:={ros_value(value)}"]
        self.log_path = log_dir / f"{executable}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command_for(executable) + args, stdout=self.log, stderr=subprocess.STDOUT, cwd=log_dir
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def command_for_executable():
    """command_for(executable) -> the command line that starts an installed node executable."""
    return command_for


@pytest.fixture(scope="session")
def parameter_text():
    """ros_value(value) -> the value as `-p name:=value` wants it."""
    return ros_value


@pytest.fixture(scope="session")
def start_node(tmp_path_factory):
    """start_node(executable, parameters, namespace="", params_file=None) -> NodeProcess (`parameters` override
    the file's); all stopped at the end of the session."""
    started = []

    def start(executable: str, parameters: dict, namespace: str = "", params_file: Path | None = None) -> NodeProcess:
        node = NodeProcess(executable, parameters, tmp_path_factory.mktemp(executable), namespace, params_file)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def constant_model(tmp_path_factory, constant_logits):
    """Path of a TorchScript model that gives class 3 logit 20 (others 0) for any (N, 1, 28, 28) input."""
    import torch

    model = constant_logits(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 20.0)
    path = tmp_path_factory.mktemp("models") / "constant3.pt"
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; load_model still supports it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.fixture(scope="module")
def ros():
    """(context, node, executor) for the test process, in its own rclpy context."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"test_client_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield context, node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def spin_until(executor, predicate, timeout: float = 30.0, what: str = "condition", required: bool = True):
    """Spin `executor` until predicate() is truthy; returns its value; after `timeout` s fails the test, or
    (`required` False) returns the falsy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        executor.spin_once(timeout_sec=0.05)
    value = predicate()
    if not value and required:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")
    return value


@pytest.fixture(scope="session")
def spin():
    return spin_until
