"""Benchmark of a user's camera model on the node's per-frame path: a C x H x W Lipschitz mixture on
large colour frames (issue 19: 3x64x64 on a 640x480 rgb8 camera), on the CPU and on CUDA when present.

g: architectures.plain_cnn, h: architectures.lipschitz_cnn with the widths `mix-perception train` gives
that input (experiments.lipschitz_training.recipe_for), random weights (the time does not depend on them).
Per frame, as the mixer does it at batch 1: FrameConverter (resize, channels) and its cached frame bound,
then FrameClassifier.classify (certification lipschitz: g, h in float64, the radius). Prints the median
and 99th percentile over `--frames` frames after a warm-up, and the one-off cost of configure (the proven
constant) and of the first frame of a size (its preprocessing bound). No DDS: benchmarks/node.py measures
the node end to end. Nothing is asserted.

    .venv/bin/python benchmarks/camera_model.py [--input 3 64 64] [--frame 480 640] [--frames 300] [--threads 1]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from mix_perception.core.architectures import lipschitz_cnn, plain_cnn
from mix_perception.experiments.lipschitz_training import recipe_for
from mix_perception.ros.image_conversion import FrameConverter, InputSpec
from mix_perception.ros.inference import Certification, FrameClassifier


def measure(device: torch.device, input_shape, frame_size, frames: int) -> str:
    channels, height, width = input_shape
    torch.manual_seed(0)
    recipe = recipe_for(input_shape)
    g = plain_cnn(10, channels, height, width)
    h = lipschitz_cnn(10, recipe.blocks, recipe.dense, channels, height, width)
    started = time.perf_counter()
    classifier = FrameClassifier(g, h, Certification("lipschitz", 12.0), device, input_shape)
    configure_s = time.perf_counter() - started
    converter = FrameConverter(InputSpec(channels, (height, width), (), ()), device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8) for _ in range(8)]
    started = time.perf_counter()
    converter.frame_bound(images[0], "rgb")
    bound_s = time.perf_counter() - started
    times = []
    for i in range(frames + 20):
        pixels = images[i % len(images)]
        started = time.perf_counter()
        bound = converter.frame_bound(pixels, "rgb")
        result = classifier.classify(converter(pixels, "rgb"), 0.65, 0.1, [bound])[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000.0)
    times = sorted(times[20:])
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return (
        f"{device.type:5s} h blocks {recipe.blocks}: per frame p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms "
        f"({frames} frames, batch 1); configure (proven constant) {configure_s:.2f} s; first frame of the size "
        f"(preprocessing bound) {bound_s:.2f} s; last radius {result.certified_radius:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=int, nargs=3, default=[3, 64, 64], metavar=("C", "H", "W"))
    parser.add_argument("--frame", type=int, nargs=2, default=[480, 640], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the node's cpu_threads)")
    parser.add_argument("--cpu", action="store_true", help="the CPU only, even where CUDA is present")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'x'.join(map(str, args.input))} Lipschitz mixture on {args.frame[1]}x{args.frame[0]} rgb8 frames")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and not args.cpu else [])
    for device in devices:
        print(measure(device, tuple(args.input), tuple(args.frame), args.frames), flush=True)


if __name__ == "__main__":
    main()
