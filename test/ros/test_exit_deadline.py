"""exit_deadline ends a process with the chosen status even while its main thread holds the GIL in one
long C call (where no Python signal handler or timer thread can run): the case of a DDS teardown that
blocks in rcl_publisher_fini."""

import ctypes
import subprocess
import sys

from mix_perception.ros import exit_deadline

HOLDS_THE_GIL = """
import re, sys
from mix_perception.ros import exit_deadline
print("armed", exit_deadline.arm(0.5, status=3), flush=True)
re.match(r"(a+)+$", "a" * 40 + "b")  # exponential backtracking inside one C call, GIL held for hours
print("the deadline did not fire", flush=True)
"""


def test_the_sigevent_structure_has_linux_size():
    assert ctypes.sizeof(exit_deadline._SigEvent) == 64


def test_a_process_stuck_in_c_with_the_gil_ends_at_the_deadline_with_its_status():
    result = subprocess.run([sys.executable, "-c", HOLDS_THE_GIL], capture_output=True, text=True, timeout=60)
    assert result.stdout == "armed True\n", result.stdout + result.stderr
    assert result.returncode == 3, result.stderr
