"""Benchmark of the mixer node (issue 5): camera and mixer in separate processes, real DDS.

This process is the camera (publishes shipped Fashion-MNIST test images, best effort, stamped at
publish time) and the listener (receives ~/classification); the mixer runs as its own process
(`mixer_node`) with the parameter file's models and certification (default: the embedded models,
smoothing certification). Printed, no asserts:

- pure inference time: FrameClassifier.classify on one frame in this process, before the node
  starts (nothing else running), p50 / p99; and the node's own `inference_ms` field per frame;
- end-to-end latency (publish -> classification received) p50 / p99 at 30 Hz and at 200 Hz;
- overhead ratio node p50 / inference p50 and the target node p50 <= 1.2 x inference + 2 ms (when
  inference takes longer than the frame period, a classified frame also waited for the inference in
  flight, up to one frame period: at 200 Hz that wait is <= 5 ms; `--certification none` measures
  the node's own overhead with a fast model);
- frames dropped at 200 Hz (the mixer keeps only the newest frame, so latency stays bounded);
- resident memory (VmRSS) of the mixer process after warm-up and after 5,000 frames: growth %.

    .venv/bin/python -P benchmarks/node.py [--config config/mixer.yaml] [--device cpu] [--frames 5000]
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mixer_command(config: Path, overrides: dict) -> list[str]:
    script = Path(sys.prefix) / "lib" / "mix_perception" / "mixer_node"
    command = (
        [sys.executable, str(script)]
        if script.is_file()
        else [sys.executable, "-P", "-m", "mix_perception.ros.mixer_node"]
    )
    command += ["--ros-args", "--log-level", "warn", "--params-file", str(config)]
    for name, value in overrides.items():
        command += ["-p", f"{name}:={value}"]
    return command


def pure_inference_ms(config: Path, overrides: dict, repeats: int) -> np.ndarray:
    """Per-frame FrameClassifier.classify times (ms) with the config's models and torch threads, in this process."""
    import torch
    import yaml

    from mix_perception.core.models import resolve_device
    from mix_perception.experiments.data import load_split
    from mix_perception.ros import parameters
    from mix_perception.ros.image_conversion import array_to_tensor
    from mix_perception.ros.inference import FrameClassifier
    from mix_perception.ros.mixer_node import certification_of, input_spec, load_models

    values = parameters.defaults(parameters.MIXER)
    listed = yaml.safe_load(config.read_text())["mixer"]["ros__parameters"]

    def flatten(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    values.update(dict(flatten(listed)))
    values.update(overrides)
    if values["cpu_threads"] > 0:
        torch.set_num_threads(values["cpu_threads"])
    resolved = resolve_device(values["device"])
    standard, robust = load_models(values, resolved)
    classifier = FrameClassifier(standard, robust, certification_of(values), resolved)
    spec = input_spec(values)
    images = (load_split("test").images[:repeats, 0].numpy() * 255).round().astype(np.uint8)
    times = []
    for index in range(repeats):
        tensor = array_to_tensor(images[index][:, :, None], "mono", spec, resolved)
        times.append(classifier.classify(tensor, values["alpha"]).inference_ms)
    return np.asarray(times[3:])  # first calls warm up allocators / kernels


class Camera:
    """Publishes test images at `rate` Hz from its own thread; records publish stamps."""

    def __init__(self, node, images):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.node = node
        self.images = images
        self.publisher = node.create_publisher(Image, "/image", qos_profile_sensor_data)

    def run(self, rate: float, count: int, tag: str) -> None:
        from mix_perception.ros.image_conversion import array_to_image

        period = 1.0 / rate
        start = time.perf_counter()
        for index in range(count):
            delay = start + index * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            msg = array_to_image(self.images[index % len(self.images)], "mono8")
            msg.header.frame_id = f"{tag}/{index}"
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.publisher.publish(msg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    parser.add_argument("--device", help="override the mixer's device")
    parser.add_argument("--samples", type=int, help="override smoothing.samples")
    parser.add_argument("--certification", choices=("none", "lipschitz", "smoothing"), help="override certification")
    parser.add_argument("--seconds-30hz", type=float, default=10.0, help="length of the 30 Hz phase (10 s)")
    parser.add_argument("--frames", type=int, default=5000, help="frames published at 200 Hz (5000)")
    args = parser.parse_args()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mix_perception.commands.run import default_config
    from mix_perception.experiments.data import load_split
    from mix_perception.msg import MixedClassification
    from mix_perception.ros.diagnostics import values_of

    config = args.config or default_config()
    overrides = {}
    if args.device:
        overrides["device"] = args.device
    if args.samples:
        overrides["smoothing.samples"] = args.samples
    if args.certification:
        overrides["certification"] = args.certification
    inference = pure_inference_ms(config, overrides, repeats=60)
    print(
        f"pure inference (this process, {len(inference)} frames): p50 {np.percentile(inference, 50):.2f} ms, "
        f"p99 {np.percentile(inference, 99):.2f} ms"
    )

    mixer = subprocess.Popen(mixer_command(config, {**overrides, "diagnostics_period": 0.5}))
    rclpy.init()
    node = rclpy.create_node("node_benchmark")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    received: dict[str, tuple[float, float]] = {}
    dropped = {"value": 0}
    lock = threading.Lock()

    def on_classification(msg):
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            received[msg.header.frame_id] = ((now - stamp) / 1e6, msg.inference_ms)

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == "mixer: inference":
                values = values_of(status)
                dropped["value"] = int(values["frames_dropped"])
                dropped["internal_p50"] = float(values["latency_p50_ms"])

    from diagnostic_msgs.msg import DiagnosticArray

    node.create_subscription(
        MixedClassification,
        "/mixer/classification",
        on_classification,
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE),
    )
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    images = (load_split("test").images[:, 0].numpy() * 255).round().astype(np.uint8)
    camera = Camera(node, images)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        deadline = time.monotonic() + 120
        while camera.publisher.get_subscription_count() < 1 or node.count_publishers("/mixer/classification") < 1:
            if mixer.poll() is not None or time.monotonic() > deadline:
                print("mixer did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        camera.run(5.0, 10, "warmup")
        time.sleep(1.0)

        def phase(rate, count, tag):
            dropped_before = dropped["value"]
            camera.run(rate, count, tag)
            time.sleep(2.0)
            with lock:
                rows = [value for key, value in received.items() if key.startswith(tag + "/")]
            latency = np.asarray([r[0] for r in rows])
            node_inference = np.asarray([r[1] for r in rows])
            return latency, node_inference, dropped["value"] - dropped_before

        def report(rate, count, latency, node_inference, lost):
            if latency.size == 0:
                print(f"{rate:g} Hz: no frame classified")
                return
            p50, p99 = np.percentile(latency, 50), np.percentile(latency, 99)
            inf50 = np.percentile(inference, 50)
            print(
                f"{rate:g} Hz: {count} published, {latency.size} classified, {lost} dropped by the mixer "
                f"({count - latency.size} not classified in all)"
            )
            print(
                f"  end-to-end latency p50 {p50:.2f} ms, p99 {p99:.2f} ms (inside the mixer, image callback -> "
                f"publish, p50 of its last 500 frames: {dropped.get('internal_p50', float('nan')):.2f} ms)"
            )
            node50 = np.percentile(node_inference, 50)
            for name, reference in (("pure inference", inf50), ("the node's inference_ms", node50)):
                target = 1.2 * reference + 2.0
                verdict = "met" if p50 <= target else "NOT met"
                print(
                    f"  overhead: node p50 / {name} p50 ({reference:.2f} ms) = {p50 / reference:.2f}; "
                    f"target p50 <= 1.2 x {reference:.2f} + 2 = {target:.2f} ms: {verdict}"
                )

        count_30 = int(30 * args.seconds_30hz)
        report(30, count_30, *phase(30.0, count_30, "hz30"))
        rss_start = rss_kib(mixer.pid)
        report(200, args.frames, *phase(200.0, args.frames, "hz200"))
        rss_end = rss_kib(mixer.pid)
        growth = 100.0 * (rss_end - rss_start) / rss_start if rss_start else float("nan")
        print(
            f"mixer RSS: {rss_start / 1024:.1f} MiB before the 200 Hz phase, {rss_end / 1024:.1f} MiB after "
            f"{args.frames} frames: growth {growth:+.2f}% (target < 5%)"
        )
    finally:
        stop.set()
        spinner.join()
        mixer.send_signal(signal.SIGINT)
        try:
            mixer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mixer.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
