"""One model trained for its role in a mixture, and its held-out numbers: what `mix-perception train` and
the presets of `train-default` run.

Roles: "standard" (g, and the embedded robust model: a training.Recipe, with or without PGD),
"smoothing" (the base model of a smoothed h: a training.Recipe with sigma) and "lipschitz" (h, a
lipschitz_training.Recipe). Data are anything with images (N, C, H, W) in [0, 1] and labels (N,) int64
(experiments.data.Split, experiments.image_data.ImageSet).
"""

import time
from typing import NamedTuple

import torch

from mix_perception.core.smoothing import SmoothingSettings
from mix_perception.experiments import certified_curves, lipschitz_training, training
from mix_perception.experiments.batches import RunSettings

ROLES = ("standard", "lipschitz", "smoothing")


class Job(NamedTuple):
    """What to train: `role` (one of ROLES), `recipe` (training.Recipe, or lipschitz_training.Recipe for
    "lipschitz"), `network` (training.Network; for "lipschitz" only num_classes is used: the recipe
    and the input shape decide the rest)."""

    role: str
    recipe: object
    network: training.Network


class Trained(NamedTuple):
    """A trained model on [0, 1] pixels (eval mode), its `fit` history, the training time in seconds and
    the checkpoint dict (core.models format) to save."""

    model: torch.nn.Module
    history: list
    train_s: float
    content: dict


def train(job: Job, data, seed: int, device) -> Trained:
    """Train job.network by job.recipe on `data`; g and smoothing base models see (x - mean) / std with
    the data's per-channel mean and std (training.normalization), the Lipschitz h sees [0, 1] pixels."""
    input_shape = tuple(data.images.shape[1:])
    start = time.monotonic()
    if job.role == "lipschitz":
        num_classes = job.network.num_classes
        model, history = lipschitz_training.train(job.recipe, data.images, data.labels, seed, device, num_classes)
        plain = lipschitz_training.network(job.recipe, input_shape, num_classes)
        content = lipschitz_training.checkpoint(model, plain, input_shape)
        return Trained(model, history, time.monotonic() - start, content)
    mean, std = training.normalization(data.images)
    model, history = training.train(job.recipe, data.images, data.labels, mean, std, seed, device, job.network)
    content = training.checkpoint(model, job.network, mean, std, input_shape, job.recipe.sigma)
    return Trained(model, history, time.monotonic() - start, content)


def smoothing_certified_accuracy(base, data, sigma: float, settings: SmoothingSettings, run: RunSettings) -> dict:
    """Certified accuracy of the smoothed h alone (alpha = 1) at each l2 radius of lipschitz_training.RADII:
    the fraction of images whose class from CERTIFY (SmoothedClassifier.certify: selection and
    estimation draws, Clopper-Pearson bounds at level delta) is the label with a certified radius >= r
    (Theorem 5). Each certificate holds with probability >= 1 - settings.delta."""
    settings = SmoothingSettings(sigma, settings.n_select, settings.n_estimate, settings.delta, "votes")
    bounds = certified_curves.smoothing_bounds(base, data.images, settings, run)
    radius = certified_curves.certified_radius(bounds, 1.0)
    curve = certified_curves.certified_curve(bounds.prediction == data.labels, radius, lipschitz_training.RADII)
    return dict(zip((str(r) for r in lipschitz_training.RADII), curve, strict=True))


def measure(job: Job, model, data, smoothing: SmoothingSettings, run: RunSettings) -> dict:
    """The card's held-out numbers (fractions in [0, 1]): clean_accuracy for every role; for "lipschitz"
    lipschitz_training.measure (proven constant, deterministic certified accuracy); for "smoothing"
    noisy_accuracy (one draw of sigma noise) and certified_accuracy of the smoothed h with `smoothing`'s
    draws and delta (smoothing_certified_accuracy); "standard" has no certificate."""
    if job.role == "lipschitz":
        return lipschitz_training.measure(model, data.images, data.labels, run.device)
    metrics = {"clean_accuracy": training.clean_accuracy(model, data.images, data.labels, run.device)}
    sigma = job.recipe.sigma
    if job.role == "smoothing":
        noisy = training.noisy_accuracy(model, data.images, data.labels, sigma, run.seed, run.device)
        metrics["noisy_accuracy"] = noisy
        metrics["certified_accuracy"] = smoothing_certified_accuracy(model, data, sigma, smoothing, run)
        metrics["certification"] = {
            "sigma": sigma,
            "n_select": smoothing.n_select,
            "n_estimate": smoothing.n_estimate,
            "delta": smoothing.delta,
            "rule": "CERTIFY (Cohen et al.), Clopper-Pearson votes, alpha 1 (h alone)",
        }
    return metrics
