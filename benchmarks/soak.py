"""Soak benchmark of the mixer: 10,000 mixed frames, good and bad, and the mixer's memory over time.

The mixer runs as its own process with the parameter file's models and certification (default: the
config/mixer.yaml: the embedded g and Lipschitz h) and compressed input on; this process publishes, as fast as `--rate`
allows, a repeating mix of
- 640x480 bgr8 frames (a VGA camera),
- malformed raw frames: a wrong step, truncated data, an unknown encoding,
- oversized raw frames (more pixels than input.max_pixels),
- valid 640x480 JPEG frames, garbage bytes behind a JPEG or PNG signature, and PNG headers that
  claim 20000+ x 20000 pixels (a decompression bomb),
- large valid frames of random sizes: rgb8 up to 2500 x 2000, JPEG up to 3000 x 3000,
every bad or large frame with a size of its own (as a fuzzer sends them),
and samples the mixer's resident memory (VmRSS) every `--sample-every` frames. Printed, not asserted:
RSS at every sample, and the growth over the last two thirds (target < 5%): the median of the samples
of the last third against the median of the middle third (a single sample can catch a large frame in
flight), with the largest sample.

    .venv/bin/python benchmarks/soak.py [--frames 10000] [--rate 200] [--config config/mixer.yaml]

`--mode flood` (issue 17) publishes instead, as fast as the publisher can, reliable with depth 10 (the
mixer's subscription too: image_reliability reliable, image_depth 10, input.max_pixels 1,000,000),
random frames of the issue's mix, each with a frame_id of 0-5,000 characters:
- 15% good raw frames, 28x28 up to 1280x720 (rgb8, bgr8, mono8, finite 32FC1),
- 70% malformed: raw (bad step, truncated or padded data, unknown or upper-case encodings, huge or zero
  dimensions, the big-endian flag on 16-bit data with an odd step, NaN / inf floats); with
  `--mix mixed` half of them compressed instead (garbage behind a JPEG or PNG signature, PNG bombs,
  empty data),
- 15% oversized raw frames (valid layouts of 1.0-2.0 million pixels, more than input.max_pixels);
  with `--mix mixed` valid JPEG frames of 28x28 up to 1280x720 instead.
It prints the mixer's RSS at each third, the growth over the last third (RSS at the end against RSS at
two thirds; target < 5%), the frames sent by kind, the mixer's counters from /diagnostics (received,
classified, dropped, rejected by code: every frame sent must be one of them), Python tracebacks in
the mixer's stderr, and whether good frames sent afterwards are classified.

    .venv/bin/python benchmarks/soak.py --mode flood [--frames 20000] [--mix raw|mixed]
"""

import argparse
import io
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from processes import isolate_ros, node_command, rss_mib


def png_bomb_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that claims width x height pixels (signature, IHDR, a bit of IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))


def frames(rng: np.random.Generator, max_pixels: int):
    """The repeating mix: (kind, message factory) pairs, in the order they are published."""
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage, Image

    from mix_perception.ros.image_conversion import array_to_image

    vga = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    PILImage.fromarray(vga).save(jpeg, format="JPEG")
    side = int(max_pixels**0.5) + 1

    def raw(encoding, width, height, step, size):
        msg = Image(encoding=encoding, width=width, height=height, step=step)
        msg.data = bytes(size)
        return msg

    def compressed(fmt, data):
        return CompressedImage(format=fmt, data=data)

    def size(low: int, high: int) -> int:  # fuzz-like: every bad frame has its own size
        return int(rng.integers(low, high))

    # Pools of large valid frames, made once (encoding them per frame would limit the rate).
    def noise(height: int, width: int) -> np.ndarray:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    large = [noise(size(500, 2500), 2000) for _ in range(8)]
    large_jpegs = [jpeg_of(noise(size(1000, 3000), size(1000, 3000))) for _ in range(8)]

    mix = [
        ("vga_bgr8", lambda: array_to_image(vga, "bgr8")),
        ("vga_bgr8", lambda: array_to_image(vga, "bgr8")),
        ("vga_bgr8", lambda: array_to_image(vga, "bgr8")),
        ("bad_step", lambda: raw("rgb8", w := size(64, 2000), 480, w, w * 480)),
        ("truncated", lambda: raw("bgr8", 640, 480, 1920, size(1, 1920 * 480))),
        ("unknown_encoding", lambda: raw("bayer_rggb8", w := size(64, 2000), 480, w, w * 480)),
        ("jpeg", lambda: compressed("jpeg", jpeg.getvalue())),
        ("garbage_jpeg", lambda: compressed("jpeg", b"\xff\xd8\xff\xe0" + rng.bytes(size(1_000, 3_000_000)))),
        ("garbage_png", lambda: compressed("png", b"\x89PNG\r\n\x1a\n" + rng.bytes(size(1_000, 3_000_000)))),
        ("png_bomb", lambda: compressed("png", png_bomb_header(size(20_000, 60_000), 20_000))),
        ("oversized", lambda: raw("mono8", s := size(side, side + 900), s, s, s * s)),
        ("large_rgb8", lambda: array_to_image(large[size(0, len(large))], "rgb8")),
        ("large_jpeg", lambda: compressed("jpeg", large_jpegs[size(0, len(large_jpegs))])),
    ]
    return mix


FLOOD_MAX_PIXELS = 1_000_000  # input.max_pixels in flood mode: above 1280x720, below the oversized frames
FLOOD_PARAMETERS = ("image_reliability:=reliable", "image_depth:=10", f"input.max_pixels:={FLOOD_MAX_PIXELS}")
BAD_ENCODINGS = ("bayer_rggb8", "yuv422", "nv21", "RGB8", "BGR8", "MONO8", "Rgb8", "")


def flood_frames(rng: np.random.Generator, mix: str):
    """A function () -> (kind, message) that draws one frame of the flood (see the module docstring).

    Pixel data are slices of pools made once, so the publisher, not the encoder, limits the rate."""
    from sensor_msgs.msg import CompressedImage, Image

    pool = rng.integers(0, 256, 1600 * 1300 * 3, dtype=np.uint8).tobytes()
    floats = rng.random(1280 * 720, dtype=np.float32).astype("<f4").tobytes()
    jpegs = [jpeg_of(rng.integers(0, 256, (int(rng.integers(28, 721)), int(rng.integers(28, 1281)), 3), np.uint8))
             for _ in range(8)]  # fmt: skip

    def between(low: int, high: int) -> int:
        return int(rng.integers(low, high + 1))

    def raw(encoding, width, height, step, data, bigendian=0):
        msg = Image(encoding=encoding, width=width, height=height, step=step, is_bigendian=bigendian)
        msg.data = data
        return msg

    def good():
        height, width = between(28, 720), between(28, 1280)
        encoding, pixel_bytes = [("rgb8", 3), ("bgr8", 3), ("mono8", 1), ("32FC1", 4)][between(0, 3)]
        size = height * width * pixel_bytes
        return raw(encoding, width, height, width * pixel_bytes, (floats if pixel_bytes == 4 else pool)[:size])

    def non_finite():
        height, width = between(28, 720), between(28, 1280)
        at = 4 * between(0, height * width - 1)
        bad = np.array([[np.nan, np.inf, -np.inf][between(0, 2)]], "<f4").tobytes()
        return raw("32FC1", width, height, width * 4, floats[:at] + bad + floats[at + 4 : height * width * 4])

    def malformed_raw():
        height, width = between(28, 720), between(28, 1280)
        kind = ("bad_step", "truncated", "padded", "bad_encoding", "huge", "zero", "big_endian", "non_finite")[
            between(0, 7)
        ]
        if kind == "bad_step":
            msg = raw("rgb8", width, height, 3 * width - between(1, width), pool[: width * height * 3])
        elif kind == "truncated":
            msg = raw("bgr8", width, height, 3 * width, pool[: between(0, 3 * width * height - 1)])
        elif kind == "padded":
            msg = raw("rgb8", width, height, 3 * width, pool[: 3 * width * height + between(1, 100_000)])
        elif kind == "bad_encoding":
            msg = raw(BAD_ENCODINGS[between(0, len(BAD_ENCODINGS) - 1)], width, height, width, pool[: width * height])
        elif kind == "huge":
            msg = raw("mono8", between(2**16, 2**32 - 1), between(2**16, 2**32 - 1), 2**20, pool[: between(0, 1000)])
        elif kind == "zero":
            msg = (
                raw("rgb8", 0, height, 0, pool[: between(0, 1000)])
                if between(0, 1)
                else raw("rgb8", width, 0, 3 * width, b"")
            )
        elif kind == "big_endian":
            msg = raw("mono16", width, height, 2 * width + 1, pool[: (2 * width + 1) * height], bigendian=1)
        else:
            msg = non_finite()
        return kind, msg

    def malformed_compressed():
        kind = ("garbage_jpeg", "garbage_png", "png_bomb", "empty")[between(0, 3)]
        if kind == "garbage_jpeg":
            return kind, CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + pool[: between(1_000, 3_000_000)])
        if kind == "garbage_png":
            return kind, CompressedImage(format="png", data=b"\x89PNG\r\n\x1a\n" + pool[: between(1_000, 3_000_000)])
        if kind == "png_bomb":
            return kind, CompressedImage(format="png", data=png_bomb_header(between(20_000, 60_000), 20_000))
        return kind, CompressedImage(format="jpeg", data=b"")

    def oversized():
        pixels = between(FLOOD_MAX_PIXELS + 1, 2 * FLOOD_MAX_PIXELS)
        width = between(1000, 1600)
        height = -(-pixels // width)
        encoding, pixel_bytes = [("rgb8", 3), ("mono8", 1)][between(0, 1)]
        return raw(encoding, width, height, width * pixel_bytes, pool[: width * height * pixel_bytes])

    def draw():
        share = rng.random()
        if share < 0.15:
            return "good", good()
        if share < 0.85:
            return malformed_compressed() if mix == "mixed" and between(0, 1) else malformed_raw()
        if mix == "mixed":
            return "good_jpeg", CompressedImage(format="jpeg", data=jpegs[between(0, len(jpegs) - 1)])
        return "oversized", oversized()

    return draw


def jpeg_of(pixels: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=20)
    return buffer.getvalue()


def mixer_command(config: Path, *parameters: str, log_level: str = "error") -> list[str]:
    arguments = ["--log-level", log_level, "--params-file", str(config), "-p", "subscribe_compressed:=true"]
    for parameter in parameters:
        arguments += ["-p", parameter]
    return node_command("mixer_node", *arguments)


class MixerTotals:
    """The mixer's latest totals from /diagnostics (its status "<name>: inference"), as ints."""

    KEYS = (
        "frames_received", "frames_processed", "frames_dropped", "frames_rejected", "frames_lost", "inference_failures"
    )
    # every frame sent ends as one of these: classified, dropped for a newer one, rejected, lost before the mixer
    ACCOUNTED = ("frames_processed", "frames_dropped", "frames_rejected", "frames_lost")

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray

        self.values: dict[str, int] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, array) -> None:
        for status in array.status:
            if status.name.endswith(": inference"):
                values = {item.key: item.value for item in status.values}
                self.values = {
                    key: int(value) for key, value in values.items() if key in self.KEYS or key.startswith("rejected_")
                }

    def arrived(self) -> int:
        """Frames the mixer accounted for: classified, dropped for a newer one, rejected, or lost before it."""
        return sum(self.values.get(key, 0) for key in self.ACCOUNTED)


def spin_until(node, done, timeout: float) -> bool:
    """Spin `node` until `done()` or `timeout` seconds; returns done()."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    return done()


def settle(node, totals: MixerTotals, sent: int, quiet: float = 3.0, timeout: float = 60.0) -> bool:
    """Spin until the mixer accounted for `sent` frames or its counters stayed still for `quiet` seconds
    (frames DDS never delivered); True when every frame was accounted for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and totals.arrived() < sent:
        before = totals.arrived()
        spin_until(node, lambda: totals.arrived() >= sent, quiet)
        if totals.arrived() == before:
            break
    return totals.arrived() >= sent


def publish_reliably(publisher, msg) -> int:
    """Publish `msg`, retrying while a reliable writer refuses it (history full of unacknowledged samples
    past its blocking time); returns the number of refusals."""
    from rclpy._rclpy_pybind11 import RCLError

    refusals = 0
    while True:
        try:
            publisher.publish(msg)
            return refusals
        except RCLError as error:  # "cannot publish data"
            if "cannot publish data" not in str(error):
                raise
            refusals += 1


def wait_for_subscribers(publishers, mixer: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 120
    while any(publisher.get_subscription_count() < 1 for publisher in publishers):
        if mixer.poll() is not None or time.monotonic() > deadline:
            print("mixer did not start", file=sys.stderr)
            return False
        time.sleep(0.05)
    return True


def stop(mixer: subprocess.Popen) -> None:
    mixer.send_signal(signal.SIGINT)
    try:
        mixer.wait(timeout=10)
    except subprocess.TimeoutExpired:
        mixer.kill()


def soak(args, config: Path) -> int:
    """The repeating mix at `--rate`; RSS every `--sample-every` frames, growth of the medians of the thirds."""
    import rclpy
    import yaml
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    mixer_parameters = yaml.safe_load(config.read_text())["/**/mixer"]["ros__parameters"]
    max_pixels = mixer_parameters.get("input", {}).get("max_pixels", 4096 * 4096)
    mixer = subprocess.Popen(mixer_command(config))
    rclpy.init()
    node = rclpy.create_node("soak_benchmark")
    raw_pub = node.create_publisher(Image, "/image", qos_profile_sensor_data)
    compressed_pub = node.create_publisher(CompressedImage, "/image/compressed", qos_profile_sensor_data)
    mix = frames(np.random.default_rng(0), max_pixels)
    counts: dict[str, int] = {}
    samples = []
    try:
        if not wait_for_subscribers((raw_pub, compressed_pub), mixer):
            return 1
        print(f"mixer up (pid {mixer.pid}); publishing {args.frames} frames, at most {args.rate:g} Hz")
        start = time.perf_counter()
        for index in range(args.frames):
            delay = start + index / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            kind, make = mix[index % len(mix)]
            msg = make()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = f"soak/{index}"
            (compressed_pub if isinstance(msg, CompressedImage) else raw_pub).publish(msg)
            counts[kind] = counts.get(kind, 0) + 1
            if (index + 1) % args.sample_every == 0:
                samples.append((index + 1, rss_mib(mixer.pid)))
                print(f"  {index + 1:6d} frames: mixer RSS {samples[-1][1]:8.1f} MiB", flush=True)
        elapsed = time.perf_counter() - start
    finally:
        stop(mixer)
        node.destroy_node()
        rclpy.shutdown()
    print(f"published {args.frames} frames in {elapsed:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    middle = np.median([rss for frame, rss in samples if args.frames / 3 < frame <= 2 * args.frames / 3])
    last = np.median([rss for frame, rss in samples if frame > 2 * args.frames / 3])
    growth = 100.0 * (last - middle) / middle
    print(
        f"mixer RSS: {samples[0][1]:.1f} MiB after {samples[0][0]} frames; median {middle:.1f} MiB over the middle "
        f"third, {last:.1f} MiB over the last third: growth {growth:+.2f}% (target < 5%); "
        f"largest sample {max(rss for _, rss in samples):.1f} MiB"
    )
    return 0


def flood(args, config: Path) -> int:
    """The issue's flood, reliable depth 10, unpaced; RSS at the thirds, counts, tracebacks, good frames after."""
    import tempfile

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from mix_perception.ros.image_conversion import array_to_image

    stderr = tempfile.TemporaryFile("w+")
    command = mixer_command(config, *FLOOD_PARAMETERS, *args.mixer_parameter, log_level=args.log_level)
    if args.trace_python:  # the same node, started by traced_mixer.py
        command = [sys.executable, "-P", str(Path(__file__).with_name("traced_mixer.py"))] + command[
            command.index("--ros-args") :
        ]
    mixer = subprocess.Popen(command, stderr=stderr)
    rclpy.init()
    node = rclpy.create_node("flood_benchmark")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    raw_pub = node.create_publisher(Image, "/image", reliable)
    compressed_pub = node.create_publisher(CompressedImage, "/image/compressed", reliable)
    totals = MixerTotals(node)
    heard: dict[str, int] = {"classification": 0, "rejected": 0}
    if args.listen:  # like the safety monitor, but only taken from DDS between the flood's phases: a slow one
        from mix_perception.msg import MixedClassification, RejectedFrame

        for name, kind in (("classification", MixedClassification), ("rejected", RejectedFrame)):
            node.create_subscription(
                kind, f"/mixer/{name}", lambda _, n=name: heard.update({n: heard[n] + 1}), reliable
            )
    rng = np.random.default_rng(args.seed)
    draw = flood_frames(rng, args.mix)
    letters = "abcdefghijklmnopqrstuvwxyz/_" * 180  # frame_ids of up to 5,000 characters
    thirds = {args.frames // 3, 2 * args.frames // 3, args.frames}
    counts: dict[str, int] = {}
    rss = {}
    blocked = 0
    try:
        if not wait_for_subscribers((raw_pub, compressed_pub), mixer):
            stderr.seek(0)
            print(stderr.read()[-2000:], file=sys.stderr)
            return 1
        print(f"mixer up (pid {mixer.pid}, {rss_mib(mixer.pid):.1f} MiB); flooding {args.frames} frames ({args.mix})")
        start = time.perf_counter()
        for index in range(args.frames):
            delay = start + index / args.rate - time.perf_counter() if args.rate else 0.0
            if delay > 0:
                time.sleep(delay)
            kind, msg = draw()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = f"{index}/" + letters[: int(rng.integers(0, 4990))]
            blocked += publish_reliably(compressed_pub if isinstance(msg, CompressedImage) else raw_pub, msg)
            counts[kind] = counts.get(kind, 0) + 1
            if (index + 1) % args.sample_every == 0 or index + 1 in thirds:
                rss[index + 1] = rss_mib(mixer.pid)
                print(f"  {index + 1:6d} frames: mixer RSS {rss[index + 1]:8.1f} MiB", flush=True)
        elapsed = time.perf_counter() - start
        settled = settle(node, totals, args.frames)
        rss["settled"] = rss_mib(mixer.pid)
        after_flood = dict(totals.values)
        good = array_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "rgb8")
        for _ in range(args.good_after):
            raw_pub.publish(good)
            spin_until(node, lambda: False, 0.2)
        target = after_flood.get("frames_processed", 0) + args.good_after
        spin_until(node, lambda: totals.values.get("frames_processed", 0) >= target, 10.0)
    finally:
        stop(mixer)
        node.destroy_node()
        rclpy.shutdown()
    stderr.seek(0)
    text = stderr.read()
    tracebacks = text.count("Traceback")
    a, b, c = (rss[k] for k in sorted(thirds))
    print(f"published {args.frames} frames in {elapsed:.0f} s ({args.frames / elapsed:.0f} Hz): "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
    print(f"publish calls refused while the writer's history was full (then retried): {blocked}")
    print(f"mixer RSS at the thirds: {a:.1f} -> {b:.1f} -> {c:.1f} MiB; growth over the last third "
          f"{100.0 * (c - b) / b:+.2f}% (target < 5%); {rss['settled']:.1f} MiB once its counters settled")  # fmt: skip
    arrived = sum(after_flood.get(key, 0) for key in MixerTotals.ACCOUNTED)
    print(f"mixer after the flood: {after_flood}")
    print(f"accounted for: {arrived} of {args.frames} sent ({'all' if settled else 'NOT all'}); "
          f"tracebacks in the mixer's stderr: {tracebacks}")  # fmt: skip
    classified = totals.values.get("frames_processed", 0) - after_flood.get("frames_processed", 0)
    change = {key: totals.values.get(key, 0) - value for key, value in after_flood.items() if key.startswith("frames_")}
    print(f"good frames after the flood: {classified} of {args.good_after} classified (counters' change {change})")
    traces = [line.split()[1:] for line in text.splitlines() if line.startswith("TRACE ")]
    if traces:
        print(
            "mixer's Python memory (s, traced MiB, gc objects): "
            + ", ".join("/".join(t) for t in traces[:: max(1, len(traces) // 8)] + traces[-1:])
        )
    if args.listen:
        print(f"messages heard: {heard}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode", choices=("soak", "flood"), default="soak", help="soak (paced mix) or flood (issue 17)"
    )
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    parser.add_argument("--frames", type=int, default=None, help="frames to publish (soak 10000, flood 20000)")
    parser.add_argument(
        "--rate", type=float, default=None, help="frames per second, at most (soak 200, flood 0: unpaced)"
    )
    parser.add_argument("--sample-every", type=int, default=500, help="frames between RSS samples (500)")
    parser.add_argument(
        "--mix", choices=("raw", "mixed"), default="raw", help="flood: raw frames, or raw and compressed"
    )
    parser.add_argument("--seed", type=int, default=0, help="flood: random seed (0)")
    parser.add_argument("--good-after", type=int, default=20, help="flood: good frames sent after it (20)")
    parser.add_argument("--listen", action="store_true", help="flood: subscribe ~/classification and ~/rejected")
    parser.add_argument("--mixer-parameter", action="append", default=[], help="flood: extra mixer -p NAME:=VALUE")
    parser.add_argument("--log-level", default="info", help="flood: the mixer's --log-level (info)")
    parser.add_argument("--trace-python", action="store_true", help="flood: run the mixer under tracemalloc")
    args = parser.parse_args()
    args.frames = args.frames or (10_000 if args.mode == "soak" else 20_000)
    args.rate = (200.0 if args.mode == "soak" else 0.0) if args.rate is None else args.rate
    isolate_ros()

    from mix_perception.commands.run import default_config

    config = args.config or default_config()
    return (soak if args.mode == "soak" else flood)(args, config)


if __name__ == "__main__":
    sys.exit(main())
