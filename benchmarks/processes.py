"""What the node benchmarks share: an isolated ROS 2 domain, node command lines, a process's memory.

Imported by the benchmark scripts next to it (run them as `.venv/bin/python benchmarks/<name>.py`:
the script's folder is then on sys.path, and the repository root is not, so the installed
mix_perception is the one imported).
"""

import os
import random
import sys
from pathlib import Path


def isolate_ros() -> None:
    """A random ROS_DOMAIN_ID and discovery on this machine only, unless the caller set them."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def node_command(executable: str, *ros_arguments: str) -> list[str]:
    """The installed node executable (lib/mix_perception/<name>) with `--ros-args ros_arguments`."""
    script = Path(sys.prefix) / "lib" / "mix_perception" / executable
    module = f"mix_perception.ros.{executable}"
    start = [sys.executable, str(script)] if script.is_file() else [sys.executable, "-P", "-m", module]
    return start + ["--ros-args", *ros_arguments]


def rss_mib(pid: int) -> float:
    """Resident set size of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0
