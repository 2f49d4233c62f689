"""Benchmark of the core library: overhead of mixing, and Monte Carlo throughput of smoothing certify.

Prints, per device (CPU, and CUDA when present):
- batch 1 and 64: median time of MixedClassifier's forward / median time of g then h run back to back
  without mixing (target <= 1.05);
- noise samples per second of SmoothedClassifier.certify / inputs per second of hbar's plain
  batched forward at the same batch size (target >= 0.9);
- the node's hot path: a VGA bgr8 frame to the model input (ros.image_conversion.FrameConverter,
  target <= 3 ms), and hbar's forward in channels_last against NCHW (core.models.for_inference);
- certified inference with the Lipschitz h, batch 1 and 4: median time of the node's
  FrameClassifier.classify (certification lipschitz, alpha 0.65, T 12: g, h in float64, the radius)
  / median time of g then h run back to back in float32 without mixing (target <= 3).

Models: the embedded defaults (standard, robust, smoothing, lipschitz) when shipped, else freshly
initialised networks of the same architecture (the timing does not depend on the weights). Nothing
is asserted.

    .venv/bin/python benchmarks/core.py [--repeats 30] [--samples 10000] [--threads 2]
"""

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from mix_perception.core.architectures import build
from mix_perception.core.mixing import MixedClassifier
from mix_perception.core.models import ModelLoadError, for_inference, load_default
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings


def load_or_build(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The shipped default model `name`, or a fresh network of its architecture when it is not shipped."""
    try:
        return load_default(name, device=device), f"default:{name}"
    except ModelLoadError:
        architecture = "lipschitz_cnn" if name == "lipschitz" else "fmnist_cnn"
        return build(architecture).eval().to(device), f"{architecture} (random init)"


def seconds(function, device: torch.device) -> float:
    """Wall time of one call of function(), waiting for the GPU when there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def paired_medians(first, second, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median times of two functions, timed alternately (ABBA order, after 3 warm-up calls each), so
    that background load and call-order effects fall on both alike."""
    for _ in range(3):
        first(), second()
    a, b = [], []
    for index in range(repeats):
        if index % 2:
            b.append(seconds(second, device))
            a.append(seconds(first, device))
        else:
            a.append(seconds(first, device))
            b.append(seconds(second, device))
    return statistics.median(a), statistics.median(b)


@torch.inference_mode()
def mixing_overhead(standard, robust, device, batch: int, repeats: int) -> float:
    mixed = MixedClassifier(standard, robust, alpha=0.7)
    x = torch.rand(batch, 1, 28, 28, device=device)
    mixed_time, plain_time = paired_medians(lambda: mixed(x), lambda: (standard(x), robust(x)), repeats, device)
    print(f"  batch {batch:3d}: mixed {mixed_time * 1e3:8.3f} ms   g+h {plain_time * 1e3:8.3f} ms   "
          f"ratio {mixed_time / plain_time:.3f}  (target <= 1.05)")
    return mixed_time / plain_time


@torch.inference_mode()
def certify_throughput(base, device, samples: int, batch_size: int, repeats: int) -> float:
    n_select = 64
    settings = SmoothingSettings(sigma=0.25, n_select=n_select, n_estimate=samples - n_select, batch_size=batch_size)
    smoothed = SmoothedClassifier(base, settings, seed=0)
    x = torch.rand(1, 1, 28, 28, device=device)
    noisy = torch.rand(batch_size, 1, 28, 28, device=device)
    certify_time, forward_time = paired_medians(
        lambda: smoothed.certify(x, 0.8),
        lambda: base(noisy),
        repeats,
        device,
    )
    certify_rate = samples / certify_time
    forward_rate = batch_size / forward_time
    print(f"  certify {samples} samples: {certify_rate:10.0f} samples/s   plain forward (batch {batch_size}): "
          f"{forward_rate:10.0f} inputs/s   ratio {certify_rate / forward_rate:.3f}  (target >= 0.9)")
    return certify_rate / forward_rate


@torch.inference_mode()
def hot_path(base, device, repeats: int) -> None:
    from mix_perception.ros.image_conversion import FrameConverter, InputSpec

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    converter = FrameConverter(InputSpec(channels=1, size=(28, 28)), device)
    times = [seconds(lambda: converter(frame, "bgr"), device) for _ in range(repeats + 3)][3:]
    print(f"  VGA bgr8 frame -> (1, 1, 28, 28) input: median {statistics.median(times) * 1e3:.2f} ms  (target <= 3 ms)")
    nhwc = for_inference(copy.deepcopy(base), device)
    for batch in (64, 224):
        x = torch.rand(batch, 1, 28, 28, device=device)
        nchw_time, nhwc_time = paired_medians(lambda x=x: base(x), lambda x=x: nhwc(x), repeats, device)
        print(f"  hbar forward, batch {batch:3d}: NCHW {nchw_time * 1e3:7.2f} ms   channels_last "
              f"{nhwc_time * 1e3:7.2f} ms   speed-up {nchw_time / nhwc_time:.2f}x")


@torch.inference_mode()
def certified_inference(standard, lipschitz_h, device, repeats: int) -> None:
    from mix_perception.ros.inference import Certification, FrameClassifier

    classifier = FrameClassifier(standard, lipschitz_h, Certification("lipschitz", 12.0), device, (1, 28, 28))
    for batch in (1, 4):
        x = torch.rand(batch, 1, 28, 28, device=device)
        certified, plain = paired_medians(
            lambda x=x: classifier.classify(x, 0.65), lambda x=x: (standard(x), lipschitz_h(x)), repeats, device
        )
        print(f"  batch {batch}: certified {certified * 1e3:7.2f} ms   g+h {plain * 1e3:7.2f} ms   "
              f"ratio {certified / plain:.2f}  (target <= 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per figure")
    parser.add_argument("--samples", type=int, default=10_000, help="noise samples per certify call")
    parser.add_argument("--batch-size", type=int, default=1000, help="smoothing batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
        standard, standard_name = load_or_build("standard", device)
        robust, robust_name = load_or_build("robust", device)
        base, base_name = load_or_build("smoothing", device)
        lipschitz_h, lipschitz_name = load_or_build("lipschitz", device)
        print(f"device {device} ({name}); torch {torch.__version__}")
        print(f" g = {standard_name}, h = {robust_name}, smoothing base = {base_name}, Lipschitz h = {lipschitz_name}")
        print(" mixed forward / (g then h, unmixed):")
        for batch in (1, 64):
            mixing_overhead(standard, robust, device, batch, args.repeats)
        print(" smoothing certify throughput / plain batched forward of hbar:")
        certify_throughput(base, device, args.samples, args.batch_size, max(3, args.repeats // 10))
        print(" the node's hot path:")
        hot_path(base, device, args.repeats)
        print(" certified inference (Lipschitz h) / g then h, unmixed:")
        certified_inference(standard, lipschitz_h, device, args.repeats)


if __name__ == "__main__":
    main()
