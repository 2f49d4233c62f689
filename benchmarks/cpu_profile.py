"""Where a node process spends its CPU: per-thread CPU time from /proc, and, with py-spy, the share of each
Python thread's samples by stage of the mixer's per-frame path.

Per-thread CPU (`thread_cpu`) is the kernel's count (utime + stime of /proc/<pid>/task/<tid>/stat), so
it holds on a busy machine, where wall-clock figures do not. py-spy (`PySpy`, a sampling profiler that
reads the process from outside: no change to the node, pinned in requirements/dev.txt) counts a thread
while it is running or runnable, so on a loaded machine its raw sample counts overstate the threads
that wait for a core; `breakdown` therefore only takes each thread's split by stage from py-spy and
scales it by that thread's CPU time from /proc. Threads py-spy does not see (DDS, other native threads)
are reported by name.
"""

import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

# Stages of the mixer, by the innermost frame of a sample that names one of these functions. Those of the model
# (FrameClassifier.classify and what it calls) start with "model".
STAGES = (
    ("FrameClassifier.classify", "model: g, h, certificate"),
    ("Mahalanobis.score", "model: OOD score of h's features (Mahalanobis)"),
    ("raw_statistics", "model: frame statistics (stream-shift input)"),
    ("energy", "model: g's energy (stream-shift input)"),
    ("_p_values", "model: OOD and shift p-values"),
    ("OODModel.per_frame", "model: OOD model, other"),
    ("FrameConverter.__call__", "conversion to the model input"),
    ("frame_pixels", "image checks (frame_pixels)"),
    ("MixerNode._publish", "results -> messages, publish"),
    ("MixerNode._publish_batch", "results -> messages, publish"),
    ("MixerNode._reject", "rejections"),
    ("MixerNode._on_image", "image callback (counters, slot)"),
    ("Executor._take_subscription", "take + deserialize (rclpy)"),
    ("MixerNode._publish_diagnostics", "/diagnostics"),
    ("FrameSlots.take_all", "worker: waiting for frames"),
    ("MixerNode._process", "worker: batching, other"),
    ("SingleThreadedExecutor.spin_once", "executor: wait set, dispatch"),
)


def thread_cpu(pid: int) -> dict:
    """{tid: (thread name, CPU seconds so far)} of every thread of process `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) * TICK_S)
    return threads


def cpu_between(before: dict, after: dict) -> dict:
    """{tid: (name, CPU seconds spent between two `thread_cpu` snapshots)}."""
    return {tid: (name, seconds - before.get(tid, (name, 0.0))[1]) for tid, (name, seconds) in after.items()}


def thread_groups(pid: int, spent: dict) -> dict:
    """CPU seconds by kind of thread: the main thread (the executor), DDS threads, the other threads."""
    groups = Counter()
    for tid, (name, seconds) in spent.items():
        kind = "main thread (executor)" if tid == pid else "DDS threads" if name.startswith("dds.") else "other threads"
        groups[kind] += seconds
    return dict(groups)


class PySpy:
    """`py-spy record` of one process for `seconds`, raw (collapsed) stacks with thread ids, not pausing
    the process (--nonblocking). FileNotFoundError when py-spy is not installed."""

    def __init__(self, pid: int, seconds: float, output: Path, rate: int = 100):
        executable = shutil.which("py-spy") or str(Path(sys.prefix) / "bin" / "py-spy")
        if not Path(executable).is_file():
            raise FileNotFoundError("py-spy is not installed (pip install -r requirements/dev.txt)")
        self.output = output
        command = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking", "--output", str(output)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def samples(self) -> dict:
        """Wait for py-spy; {tid: Counter(stage: samples)}."""
        self.process.wait()
        by_thread = defaultdict(Counter)
        if not self.output.is_file():
            return {}
        for line in self.output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not frames[0].startswith("thread (") or not count.isdigit():
                continue
            tid = int(frames[0].split("(")[1].split(")")[0], 0)
            by_thread[tid][stage_of(frames[1:])] += int(count)
        return by_thread


def stage_of(frames: list) -> str:
    """The stage of the innermost frame that names one, else "other"."""
    for frame in reversed(frames):
        function = frame.split(" (")[0]
        for marker, stage in STAGES:
            if function == marker:
                return stage
    return "other"


def breakdown(spent: dict, samples: dict) -> dict:
    """CPU seconds by stage: each sampled thread's CPU split by its samples' stages, and the threads
    py-spy did not sample by name."""
    stages = Counter()
    for tid, (name, seconds) in spent.items():
        counts = samples.get(tid)
        if counts and counts.total():
            for stage, count in counts.items():
                stages[stage] += seconds * count / counts.total()
        elif seconds > 0:
            stages[f"native threads ({'DDS' if name.startswith('dds.') else name})"] += seconds
    return dict(stages)
