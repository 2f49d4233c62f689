"""Benchmark of the certified radius in the frame's own pixels (issue 21): what it changes, what it costs.

The node's own per-frame code in one process (ros.image_conversion.FrameConverter, its frame_bound, and
ros.inference.FrameClassifier with the embedded g and Lipschitz h, certification lipschitz at the
shipped alpha and logit scale (the mixer's defaults), 28x28 mono model input); no DDS. Prints:
- VGA rgb8 camera (test images upsampled to 640x480): certified fraction at the required radius and
  median radius, on the model input (what was published before) and in the frame's pixels (now);
- 14x14 mono8 frames and the 28x28 32FC1 frames of their upsample (the same model input): median ratio
  of the radii; l2 PGD in the 14x14 frame's pixels through the converter and both models, inside the
  published radius: class changes and model inputs moved beyond the model radius (broken premises);
- per-frame cost of converter + classify without and with the bound (VGA and 28x28 frames, batch 1,
  median over interleaved repeats): target within 5%; and the added work alone (the cached bound, the
  division, the model radius sequential smoothing would need), timed by itself: robust to a busy machine.
Nothing is asserted.

    .venv/bin/python benchmarks/frame_radius.py [--frames 500] [--attack-frames 100] [--repeats 200] [--threads 1]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from mix_perception.core.mixing import mix_logits
from mix_perception.core.models import load_default
from mix_perception.core.preprocessing_bounds import frame_radii
from mix_perception.experiments.attacks import PGDConfig, pgd
from mix_perception.experiments.data import load_split
from mix_perception.ros import parameters
from mix_perception.ros.image_conversion import FrameConverter, InputSpec
from mix_perception.ros.inference import Certification, FrameClassifier, model_radius

ALPHA, SCALE = parameters.shipped_mixture()


def resized(images: torch.Tensor, size) -> np.ndarray:
    """(N, 1, 28, 28) [0, 1] images -> (N, H, W) uint8 frames, bilinear (antialiased when shrinking)."""
    shrink = size[0] < images.shape[-2]
    frames = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=shrink)
    return (frames[:, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def certified_fraction(results, required: float) -> tuple[float, float]:
    radii = np.array([r.certified_radius for r in results])
    return float(np.mean(radii >= required)), float(np.median(radii))


def vga(classifier, converter, images, required: float) -> None:
    model, frame = [], []
    for gray in resized(images, (480, 640)):
        pixels = np.repeat(gray[:, :, None], 3, axis=2)
        x = converter(pixels, "rgb")
        model += classifier.classify(x, ALPHA, required)
        frame += classifier.classify(x, ALPHA, required, [converter.frame_bound(pixels, "rgb")])
    bound = converter.frame_bound(pixels, "rgb")
    print(f"VGA rgb8, {len(images)} frames: bound ||P||_2 {bound.divisor:.5f}, rounding offset {bound.offset:.2e}")
    for name, results in (("model input (before)", model), ("frame pixels (now)", frame)):
        fraction, median = certified_fraction(results, required)
        print(f"  radius on the {name}: certified at {required}: {100 * fraction:.1f}%, median radius {median:.4f}")


def stretch_and_attacks(classifier, converter, g, h, images, steps: int) -> None:
    small = resized(images, (14, 14))
    x = converter.convert_tensor(torch.from_numpy(small).unsqueeze(1), 1 / 255, "mono")
    small_bound = converter.frame_bound(small[0][:, :, None], "mono")
    large_bound = converter.frame_bound(x[0].permute(1, 2, 0).numpy(), "mono")
    model = classifier.classify(x, ALPHA)
    r_small = classifier.classify(x, ALPHA, 0.0, [small_bound] * len(x))
    r_large = classifier.classify(x, ALPHA, 0.0, [large_bound] * len(x))
    certified = [i for i, r in enumerate(r_small) if r.certified]
    ratios = [r_large[i].certified_radius / r_small[i].certified_radius for i in certified]
    print(f"14x14 mono8 vs its 28x28 32FC1 upsample, {len(x)} frames: {len(certified)} certified (both),")
    print(f"  radius ratio 28x28 / 14x14: median {statistics.median(ratios):.4f}, min {min(ratios):.4f}")

    def forward(frames):
        y = converter.convert_tensor(frames, 1.0, "mono")
        return mix_logits(g(y), SCALE * h(y), ALPHA)

    for factor in (1 - 1e-6, 10.0):  # inside the radius; and 10x outside it, to show the attack bites
        changed = broken = 0
        for i in certified:
            frame = torch.from_numpy(small[i : i + 1]).unsqueeze(1).float() / 255
            attack = PGDConfig(norm="l2", eps=r_small[i].certified_radius * factor, steps=steps)
            label = torch.tensor([model[i].class_id])
            adversarial = pgd(forward, frame, label, attack, torch.Generator().manual_seed(i))
            moved = converter.convert_tensor(adversarial, 1.0, "mono")
            broken += int(torch.linalg.vector_norm((moved - x[i : i + 1]).double()) > model[i].certified_radius)
            changed += int(classifier.classify(moved, ALPHA)[0].class_id != model[i].class_id)
        where = "inside the published 14x14 radius" if factor < 1 else f"at {factor:g}x that radius (control)"
        print(f"  PGD-{steps} l2 {where}: {changed} class changes, {broken} model inputs beyond the model radius")


def per_frame_cost(classifier, converter, frames, order: str, repeats: int, required: float) -> None:
    def old(pixels):
        return classifier.classify(converter(pixels, order), ALPHA, required)

    def new(pixels):
        return classifier.classify(converter(pixels, order), ALPHA, required, [converter.frame_bound(pixels, order)])

    times = {old: [], new: []}
    for k in range(repeats):
        pixels = frames[k % len(frames)]
        for path in (old, new) if k % 2 else (new, old):  # interleaved: load on the machine hits both alike
            start = time.perf_counter()
            path(pixels)
            times[path].append(time.perf_counter() - start)
    before, after = statistics.median(times[old]), statistics.median(times[new])
    radius = np.array([0.3])

    def added():
        bounds = [converter.frame_bound(frames[0], order)]
        return model_radius(required, bounds), frame_radii(radius, bounds)

    start = time.perf_counter()
    for _ in range(10_000):
        added()
    extra = (time.perf_counter() - start) / 10_000
    shape = "x".join(str(n) for n in frames[0].shape)
    print(
        f"per-frame cost, {shape} {order}: without bound {1000 * before:.3f} ms, with {1000 * after:.3f} ms "
        f"(x {after / before:.3f}, target <= 1.05); the added work alone {1e6 * extra:.1f} us "
        f"({100 * extra / before:.2f}% of the frame)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=500, help="VGA frames (default 500)")
    parser.add_argument("--attack-frames", type=int, default=100, help="14x14 frames attacked (default 100)")
    parser.add_argument("--steps", type=int, default=30, help="PGD steps (default 30)")
    parser.add_argument("--repeats", type=int, default=200, help="timed frames per path (default 200)")
    parser.add_argument("--required-radius", type=float, default=0.1, help="the monitor's radius (default 0.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the node)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g, h = load_default("standard"), load_default("lipschitz")
    classifier = FrameClassifier(g, h, Certification("lipschitz", logit_scale=SCALE), "cpu", (1, 28, 28))
    converter = FrameConverter(InputSpec())
    images = load_split("test").images
    print(f"lipschitz mixture alpha {ALPHA}, logit scale {SCALE}; 28x28 mono model input; {args.threads} thread(s)")
    vga(classifier, converter, images[: args.frames], args.required_radius)
    stretch_and_attacks(classifier, converter, g, h, images[: args.attack_frames], args.steps)
    vga_frames = [np.repeat(f[:, :, None], 3, axis=2) for f in resized(images[:20], (480, 640))]
    per_frame_cost(classifier, converter, vga_frames, "rgb", args.repeats, args.required_radius)
    mono = [f[:, :, None] for f in resized(images[:20], (28, 28))]
    per_frame_cost(classifier, converter, mono, "mono", args.repeats, args.required_radius)


if __name__ == "__main__":
    main()
