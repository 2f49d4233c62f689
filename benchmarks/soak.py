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

    def jpeg_of(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=20)
        return buffer.getvalue()

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


def mixer_command(config: Path) -> list[str]:
    arguments = ["--log-level", "error", "--params-file", str(config), "-p", "subscribe_compressed:=true"]
    return node_command("mixer_node", *arguments)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/mixer.yaml)")
    parser.add_argument("--frames", type=int, default=10_000, help="frames to publish (10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="frames per second, at most (200)")
    parser.add_argument("--sample-every", type=int, default=500, help="frames between RSS samples (500)")
    args = parser.parse_args()
    isolate_ros()

    import rclpy
    import yaml
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from mix_perception.commands.run import default_config

    config = args.config or default_config()
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
        deadline = time.monotonic() + 120
        while raw_pub.get_subscription_count() < 1 or compressed_pub.get_subscription_count() < 1:
            if mixer.poll() is not None or time.monotonic() > deadline:
                print("mixer did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
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
        mixer.send_signal(signal.SIGINT)
        try:
            mixer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mixer.kill()
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


if __name__ == "__main__":
    sys.exit(main())
