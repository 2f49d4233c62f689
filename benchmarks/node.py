"""Benchmark of the mixer node with one or more cameras, everything in separate processes over real DDS.

This process is the cameras (topics /camera_<k>/image; shipped Fashion-MNIST test images as mono8, or with
`--frame H W --encoding rgb8` the same images enlarged (nearest neighbour) to H x W colour frames; best
effort, stamped when published, each camera at `--rate` Hz, the cameras out of phase) and the listener of
every classification; the mixer runs as its own process with the parameter file's models and certification
(default: config/mixer.yaml), `cpu_threads` 1. For each number of cameras of `--cameras` it runs, for
`--seconds`:
- one mixer subscribed to every camera (`image_topics`: the newest frame of each in one forward), and
- with `--compare`, one mixer process per camera, each with its own copy of the models.
Printed, not asserted: per camera, frames published, classified (%), certified at the required
radius (% of the frames published: a dropped frame is an uncertified frame), latency p50 / p99
(publish stamp -> classification received, ms); in all, frames classified per second, the spread of
the cameras' classified shares, the mixers' memory (VmRSS, summed over the processes) and CPU: the
mixer processes' CPU time over the measured seconds (from /proc, so it holds on a busy machine) per
frame classified, frames classified per second of CPU, and by thread (the main thread runs the
executor and the image callbacks; the others: the inference worker, DDS). With `--profile` (py-spy,
requirements/dev.txt; `--profile-rate` samples a second, 100 by default) also the per-frame breakdown by
stage (cpu_profile.py, the OOD model's parts apart); "outside the model" is everything but
FrameClassifier.classify and what it calls.

    .venv/bin/python benchmarks/node.py [--cameras 1 4 8 16] [--rate 30] [--seconds 20] [--compare]
        [--profile [DIR]] [--profile-rate HZ] [--config FILE] [--frame H W] [--encoding mono8|rgb8] [-p name:=value ...]
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from cpu_profile import PySpy, breakdown, cpu_between, thread_cpu, thread_groups
from processes import isolate_ros, node_command, rss_mib


def start_mixer(config: Path, namespace: str, topics: list[str], overrides: list[str]) -> subprocess.Popen:
    """A mixer process in `namespace` subscribed to `topics`."""
    arguments = ["--log-level", "warn", "-r", f"__ns:={namespace}", "--params-file", str(config)]
    arguments += ["-p", "image_topics:=[" + ", ".join(topics) + "]", "-p", "cpu_threads:=1"]
    for override in overrides:
        arguments += ["-p", override]
    return subprocess.Popen(node_command("mixer_node", *arguments))


class Listener:
    """Classifications of every mixer: {frame_id: (latency ms, certified radius or 0)}, from this
    process's own node."""

    def __init__(self, node, namespaces):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from mix_perception.msg import MixedClassification

        self.node, self.lock, self.latency = node, threading.Lock(), {}
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for namespace in namespaces:
            topic = f"{namespace}/mixer/classification"
            node.create_subscription(MixedClassification, topic, self.on_message, reliable)

    def on_message(self, msg) -> None:
        now = self.node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.latency[msg.header.frame_id] = ((now - stamp) / 1e6, msg.certified_radius if msg.certified else 0.0)


def camera_frames(images: np.ndarray, size, encoding: str) -> np.ndarray:
    """(N, 28, 28, 1) uint8 test images as the cameras' frames: enlarged to `size` (H, W) by repeating
    pixels (nearest neighbour; None: as they are), three equal channels for rgb8."""
    if size is not None:
        rows = np.arange(size[0]) * images.shape[1] // size[0]
        columns = np.arange(size[1]) * images.shape[2] // size[1]
        images = images[:, rows][:, :, columns]
    return np.repeat(images, 3, axis=3) if encoding == "rgb8" else images


def publish_cameras(node, publishers, images, rate: float, seconds: float, tag: str) -> int:
    """Every camera publishes at `rate` Hz for `seconds`, camera k shifted by k / (rate * cameras) s.
    frame_id = <tag>/<camera>/<index>. Returns the frames per camera."""
    from mix_perception.ros.image_conversion import array_to_image

    count, cameras = int(rate * seconds), len(publishers)
    start = time.perf_counter()
    for index in range(count):
        for camera, publisher in enumerate(publishers):
            delay = start + (index + camera / cameras) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            frame = images[(index * cameras + camera) % len(images)]
            msg = array_to_image(frame, "rgb8" if frame.shape[2] == 3 else "mono8")
            msg.header.frame_id = f"{tag}/{camera}/{index}"
            msg.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(msg)
    return count


def measure(node, mixers, publishers, images, args, tag: str) -> tuple:
    """Publish for `args.seconds` while counting the mixers' CPU (and sampling them with py-spy when
    `args.profile`). Returns (frames per camera, seconds counted, [(pid, CPU seconds by thread, samples)])."""
    before, start = {m.pid: thread_cpu(m.pid) for m in mixers}, time.monotonic()
    spies = {}
    if args.profile:
        rate = args.profile_rate
        spies = {m.pid: PySpy(m.pid, args.seconds, args.profile / f"{tag}-{m.pid}.txt", rate) for m in mixers}
    count = publish_cameras(node, publishers, images, args.rate, args.seconds, tag)
    time.sleep(2.0)  # the last frames' classifications
    spent = [(m.pid, cpu_between(before[m.pid], thread_cpu(m.pid))) for m in mixers]
    elapsed = time.monotonic() - start
    return count, elapsed, [(pid, cpu, spies[pid].samples() if spies else {}) for pid, cpu in spent]


def print_cpu(usage, frames: int, seconds: float) -> None:
    """The mixers' CPU per frame classified, by thread, and by stage when py-spy sampled them."""
    total = sum(s for _, cpu, _ in usage for _, s in cpu.values())
    if not frames or not total:
        return
    groups, stages = Counter(), Counter()
    for pid, cpu, samples in usage:
        groups.update(thread_groups(pid, cpu))
        stages.update(breakdown(cpu, samples) if samples else {})
    per_frame = ", ".join(f"{kind} {1000 * s / frames:.2f}" for kind, s in sorted(groups.items()))
    print(f"  mixer CPU {100 * total / seconds:.0f}% of a core: {1000 * total / frames:.2f} ms per frame classified "
          f"({frames / total:.0f} frames per CPU-second); by thread, ms per frame: {per_frame}")  # fmt: skip
    if stages:
        model = sum(seconds for stage, seconds in stages.items() if stage.startswith("model"))
        print(f"  per frame by stage (py-spy shares x thread CPU), ms: outside the model "
              f"{1000 * (total - model) / frames:.2f}")  # fmt: skip
        for stage, s in sorted(stages.items(), key=lambda item: -item[1]):
            print(f"    {1000 * s / frames:6.2f}  {stage}")


def run_phase(node, listener, config, cameras, args, separate: bool, images) -> None:
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    topics = [f"/camera_{k}/image" for k in range(cameras)]
    overrides = [f"required_radius:={args.required_radius!r}", *args.parameter]
    if separate:
        mixers = [start_mixer(config, f"/bench_{k}", [topic], overrides) for k, topic in enumerate(topics)]
    else:
        mixers = [start_mixer(config, "/bench_0", topics, overrides)]
    publishers = [node.create_publisher(Image, topic, qos_profile_sensor_data) for topic in topics]
    tag = f"{'separate' if separate else 'one'}-{cameras}"
    try:
        deadline = time.monotonic() + 180
        while not all(p.get_subscription_count() >= 1 for p in publishers):
            if any(m.poll() is not None for m in mixers) or time.monotonic() > deadline:
                print("a mixer did not start", file=sys.stderr)
                return
            time.sleep(0.05)
        publish_cameras(node, publishers, images, 5.0, 2.0, f"warmup-{tag}")
        time.sleep(1.0)
        count, elapsed, usage = measure(node, mixers, publishers, images, args, tag)
        memory = sum(rss_mib(m.pid) for m in mixers)
    finally:
        for mixer in mixers:
            mixer.send_signal(signal.SIGINT)
        for mixer in mixers:
            try:
                mixer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mixer.kill()
        for publisher in publishers:
            node.destroy_publisher(publisher)
    with listener.lock:
        rows = {key: value for key, value in listener.latency.items() if key.startswith(tag + "/")}
    mode = f"{cameras} mixer processes" if separate else "one mixer"
    shares = [100.0 * sum(1 for k in rows if k.split("/")[1] == str(c)) / count for c in range(cameras)]
    p99 = np.percentile([v[0] for v in rows.values()], 99) if rows else float("nan")
    print(f"{cameras} camera(s) at {args.rate:g} Hz, {mode}: {len(rows) / args.seconds:.1f} frames/s classified, "
          f"per camera {min(shares):.1f}-{max(shares):.1f}% classified, all frames' latency p99 {p99:.1f} ms, "
          f"mixer memory {memory:.0f} MiB")  # fmt: skip
    print_cpu(usage, len(rows), elapsed)
    for camera in range(cameras):
        frames = np.asarray([v for k, v in rows.items() if k.split("/")[1] == str(camera)]).reshape(-1, 2)
        if len(frames) == 0:
            print(f"  camera {camera}: {count} published, none classified")
            continue
        latency, certified = frames[:, 0], (frames[:, 1] >= args.required_radius) & (frames[:, 1] > 0)
        print(
            f"  camera {camera}: {count} published, {len(frames)} classified ({100.0 * len(frames) / count:.1f}%), "
            f"certified at r {args.required_radius:g}: {100.0 * certified.sum() / count:.1f}%, "
            f"latency p50 {np.percentile(latency, 50):.1f} ms, p99 {np.percentile(latency, 99):.1f} ms"
        )


def camera_counts(values: list[str]) -> list[int]:
    """--cameras 1 4 8 16, or the older comma list 1,2,4."""
    return [int(count) for value in values for count in value.split(",") if count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    parser.add_argument("--cameras", nargs="+", default=["1"], help="camera counts, e.g. 1 4 8 16 (default 1)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera (30)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--compare", action="store_true", help="also run one mixer process per camera")
    parser.add_argument(
        "--required-radius", type=float, default=0.1, help="the radius certified frames are counted at (0.1)"
    )
    parser.add_argument(
        "--profile", type=Path, nargs="?", const=Path("py-spy"), default=None,
        help="sample the mixers with py-spy, raw stacks into this folder (default ./py-spy)",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (100)")
    parser.add_argument("--frame", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size (28 28)")
    parser.add_argument("--encoding", choices=("mono8", "rgb8"), default="mono8", help="frame encoding (mono8)")
    parser.add_argument("-p", "--parameter", action="append", default=[], help="mixer parameter override name:=value")
    args = parser.parse_args()
    isolate_ros()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from mix_perception.commands.run import default_config
    from mix_perception.experiments.data import load_split
    from mix_perception.ros.executables import use_large_frame_profile

    use_large_frame_profile()  # the cameras are this process: large frames need the profile the nodes use

    config = args.config or default_config()
    counts = camera_counts(args.cameras)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"config {config}, overrides {args.parameter or 'none'}; {os.cpu_count()} CPUs, load {load:.1f}")
    rclpy.init()
    node = rclpy.create_node("node_benchmark")
    namespaces = ["/bench_0"] + [f"/bench_{k}" for k in range(1, max(counts))]
    listener = Listener(node, namespaces)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)])
    spinner.start()
    images = (load_split("test").images[:, 0].numpy() * 255).round().astype(np.uint8)[:, :, :, None]
    images = camera_frames(images[:300] if args.frame else images, args.frame, args.encoding)  # 300 VGA: 276 MB
    try:
        for cameras in counts:
            run_phase(node, listener, config, cameras, args, False, images)
            if args.compare:
                run_phase(node, listener, config, cameras, args, True, images)
    finally:
        stop.set()
        spinner.join()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
