"""Benchmark of sequential certification at a required radius against fixed-n certify, on the shipped test split.

Prints, for each alpha: the all-agreeing floor ln(delta) / ln(p_min) with p_min = Phi(r / sigma) / alpha
(the fewest votes that can certify with one bound at level delta), the sequential plan's looks, and
for sequential and fixed n (n_select + n_estimate, Bonferroni over classes, votes):
- noise samples per frame (everything drawn for the frame; the sequential path also runs the base
  model once on the clean frame to choose the class): median, p90, mean;
- certified accuracy at r: the frame is certified with radius >= r and its certified class is the label;
- wall time per frame (frames are processed in groups of --frames, so this is throughput, not latency).

Model: the shipped smoothing model (load_default("smoothing")). The fixed path's bounds do not depend
on alpha, so it samples once and applies Theorem 5 per alpha. Nothing is asserted.

    python benchmarks/sequential.py [--limit 5000] [--alphas 0.75 0.8 0.9] [--radius 0.1] [--delta 0.001]
"""

import argparse
import math
import sys
import time

import torch

from mix_perception.core.certify import smoothing_radius
from mix_perception.core.models import load_default
from mix_perception.core.sequential import SequentialPlan, certify_sequential
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings
from mix_perception.experiments.data import load_split


def groups(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def run_fixed(smoothed, images, labels, args):
    """Fixed-n certify of every frame: (bounds L, U (N,), class correct (N,) bool, seconds)."""
    generator = torch.Generator().manual_seed(args.seed)
    lower, upper, correct = [], [], []
    start = time.perf_counter()
    for part in groups(len(images), args.frames):
        # any alpha: the bounds do not depend on it
        cert = smoothed.certify(images[part], 0.75, generator)
        lower.append(cert.p_top_lower)
        upper.append(cert.p_runner_upper)
        correct.append(cert.prediction == labels[part])
    return torch.cat(lower), torch.cat(upper), torch.cat(correct), time.perf_counter() - start


def run_sequential(smoothed, images, labels, plan, args):
    """Sequential certify of every frame: (samples (N,), certified and correct (N,) bool, seconds)."""
    generator = torch.Generator().manual_seed(args.seed)
    samples, good = [], []
    start = time.perf_counter()
    for part in groups(len(images), args.frames):
        cert = certify_sequential(smoothed, images[part], plan, generator=generator)
        samples.append(cert.samples)
        good.append(cert.certified & (cert.prediction == labels[part]))
    return torch.cat(samples), torch.cat(good), time.perf_counter() - start


def percentile(values: torch.Tensor, q: float) -> int:
    """Nearest-rank q-quantile: the smallest value with at least a fraction q of values at or below it."""
    return int(values.sort().values[math.ceil(q * len(values)) - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=5000, help="first N test images")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.75, 0.8, 0.9])
    parser.add_argument("--radius", type=float, default=0.1, help="required l2 radius")
    parser.add_argument("--sigma", type=float, default=0.25, help="smoothing noise (the shipped model's)")
    parser.add_argument("--delta", type=float, default=0.001)
    parser.add_argument("--n-max", type=int, default=256, help="sequential: most samples per frame")
    parser.add_argument("--n-select", type=int, default=32, help="fixed: selection samples")
    parser.add_argument("--n-estimate", type=int, default=192, help="fixed: estimation samples")
    parser.add_argument("--frames", type=int, default=100, help="frames per certify call")
    parser.add_argument("--batch-size", type=int, default=256, help="noise samples per forward (CPU: ~best per sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("reproduce:", sys.executable, "benchmarks/sequential.py", *sys.argv[1:])
    print(" ".join(f"{key}={value}" for key, value in vars(args).items()), f"torch {torch.__version__}")

    split = load_split("test")
    images, labels = split.images[: args.limit], split.labels[: args.limit]
    settings = SmoothingSettings(args.sigma, args.n_select, args.n_estimate, args.delta, "votes", args.batch_size)
    smoothed = SmoothedClassifier(load_default("smoothing"), settings)
    fixed_n = args.n_select + args.n_estimate
    with torch.inference_mode():
        lower, upper, fixed_correct, fixed_seconds = run_fixed(smoothed, images, labels, args)
        print(
            f"{len(images)} test images; fixed n = {args.n_select} + {args.n_estimate} = {fixed_n} samples per frame, "
            f"{1e3 * fixed_seconds / len(images):.1f} ms per frame"
        )
        header = (
            f"{'alpha':>5} {'p_min':>6} {'floor':>5}  {'looks':<22} {'median':>6} {'p90':>4} {'mean':>6} "
            f"{'ms/frame':>8} {'cert.acc':>8}   {'fixed':>5} {'cert.acc':>8}"
        )
        print(header)
        for alpha in args.alphas:
            plan = SequentialPlan(args.sigma, alpha, args.radius, args.delta, args.n_max)
            floor = math.log(args.delta) / math.log(plan.p_min) if plan.p_min < 1 else math.inf
            samples, good, seconds = run_sequential(smoothed, images, labels, plan, args)
            fixed_radius = smoothing_radius(lower, upper, alpha, args.sigma)
            fixed_good = fixed_correct & (fixed_radius >= args.radius) & (fixed_radius > 0)
            print(
                f"{alpha:5.2f} {plan.p_min:6.4f} {floor:5.1f}  {str(plan.looks):<22} "
                f"{percentile(samples, 0.5):6d} {percentile(samples, 0.9):4d} "
                f"{samples.double().mean():6.1f} {1e3 * seconds / len(images):8.1f} "
                f"{good.double().mean():8.4f}   {fixed_n:5d} {fixed_good.double().mean():8.4f}"
            )


if __name__ == "__main__":
    main()
