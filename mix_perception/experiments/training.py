"""Training and measuring classifiers g and the base models of smoothed h: the embedded default models
(standard, robust, smoothing) and those of `mix-perception train`.

All share one optimizer recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, a
one-cycle learning-rate schedule (torch.optim.lr_scheduler.OneCycleLR: warm-up over the first 20% of
steps to the peak, cosine annealing to ~0), random horizontal flips where the recipe asks. The
network is a `Network`: the embedded models' architectures.fmnist_cnn, architectures.plain_cnn sized
to the data, or a torchvision model by name. They differ only in what the network sees:
- standard:  clean images;
- robust:    PGD adversarial examples (Madry et al. 2018): l_inf eps 0.1, 7 steps of 2.5 * eps / 7,
             random start, computed on the current weights (mix_perception.experiments.attacks.pgd), and the
             clean images: loss = w CE(clean) + (1 - w) CE(adversarial) with clean_weight w = 0.7
             (the mixed objective of Goodfellow et al. 2015, with PGD examples), 12 epochs: chosen
             over pure PGD training (w = 0), TRADES and w = 0.5 for the calibrated mixture's clean
             accuracy at its robustness target (measurements: docs/results/README.md, "Choosing the
             robust recipe");
- smoothing: images plus Gaussian noise N(0, sigma^2 I), sigma 0.25, not clipped (Cohen et al. 2019),
             the base model of a randomized-smoothing classifier.

Every function takes [0, 1] pixels; the networks themselves see (x - mean) / std through
models.Normalized. Randomness comes only from torch.manual_seed(seed) (weight initialisation) and
seeded torch.Generator objects (shuffling, flips, attack starts, noise), so a run is reproducible on
the same machine, torch version, device and thread count.
"""

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mix_perception.core import architectures
from mix_perception.core.models import Normalized
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings
from mix_perception.experiments.attacks import PGDConfig, pgd

ARCH = "mix_perception:fmnist_cnn"
MODEL_NAMES = ("standard", "robust", "smoothing")


class Network(NamedTuple):
    """The network to train: `arch` ("mix_perception:<name>" or a torchvision classification model name),
    `num_classes`, and `options` (keyword arguments of our architecture's builder; written to the
    checkpoint as "arch_options" when not empty)."""

    arch: str = ARCH
    num_classes: int = 10
    options: dict | None = None

    def build(self) -> nn.Module:
        """A freshly initialised network (torch's global RNG)."""
        if self.arch.startswith("mix_perception:"):
            return architectures.build(self.arch, self.num_classes, **(self.options or {}))
        import torchvision

        return torchvision.models.get_model(self.arch, weights=None, num_classes=self.num_classes)


FMNIST_NETWORK = Network()  # the embedded models' fmnist_cnn, 10 classes


def plain_network(input_shape, num_classes: int) -> Network:
    """architectures.plain_cnn for inputs of shape (C, H, W)."""
    channels, height, width = (int(s) for s in input_shape)
    return Network("mix_perception:plain_cnn", num_classes, {"channels": channels, "height": height, "width": width})


@dataclass(frozen=True)
class Recipe:
    """How one default model is trained. attack: PGD in training (robust), with clean_weight w the weight of
    the clean images' loss (w CE(clean) + (1 - w) CE(adversarial)); sigma: input noise (smoothing)."""

    name: str
    epochs: int
    max_lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hflip: bool = True
    attack: dict = field(default_factory=dict)
    clean_weight: float = 0.0
    sigma: float | None = None

    def describe(self) -> dict:
        """The recipe as a JSON-ready dict (for the model card)."""
        card = asdict(self)
        card["optimizer"] = f"SGD(momentum={self.momentum}, nesterov=True, weight_decay={self.weight_decay})"
        card["lr_schedule"] = f"OneCycleLR(max_lr={self.max_lr}, pct_start=0.2, cosine), stepped per batch"
        card["augmentation"] = "random horizontal flip (p=0.5)" if self.hflip else "none"
        if self.clean_weight > 0:
            card["objective"] = f"{self.clean_weight:g} CE(clean) + {1 - self.clean_weight:g} CE(PGD)"
        return card


RECIPES = {
    "standard": Recipe("standard", epochs=15),
    "robust": Recipe(
        "robust",
        epochs=12,
        attack={"norm": "linf", "eps": 0.1, "steps": 7, "step_size": 2.5 * 0.1 / 7},
        clean_weight=0.7,
    ),
    "smoothing": Recipe("smoothing", epochs=15, sigma=0.25),
}


def normalization(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, H, W), rounded to 4 decimals (lists of length C)."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def flipped(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x (N, C, H, W) with each image mirrored left-right with probability 1/2 (one draw per image)."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _loss(
    recipe: Recipe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the attacked or noised inputs) of one batch x (N, 1, 28, 28), y (N,).

    loss = CE(model(x')) with x' = PGD(x) (robust) or x + noise (smoothing) or x, and, with
    clean_weight w > 0, w CE(model(x)) + (1 - w) CE(model(x')).
    """
    x = flipped(x, generator) if recipe.hflip else x
    inputs = x
    if recipe.attack:
        inputs = pgd(model, x, y, PGDConfig(**recipe.attack), generator)
    if recipe.sigma is not None:
        inputs = inputs + recipe.sigma * torch.randn(inputs.shape, generator=generator).to(inputs.device)
    logits = model(inputs)
    loss = F.cross_entropy(logits, y)
    if recipe.clean_weight > 0:
        loss = recipe.clean_weight * F.cross_entropy(model(x), y) + (1 - recipe.clean_weight) * loss
    return loss, logits


def train(
    recipe: Recipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    seed: int,
    device: torch.device | str = "cpu",
    network: Network = FMNIST_NETWORK,
) -> tuple[nn.Module, list[dict]]:
    """Train a new `network` (default: the embedded fmnist_cnn) by `recipe` on images (N, C, H, W) in
    [0, 1] and int64 labels (N,) in [0, network.num_classes).

    Returns the Normalized(network, mean, std) wrapper (takes [0, 1] pixels) in eval mode on `device`
    (its `.model` is the bare network whose state_dict goes into the checkpoint), and the history of
    `fit` (training accuracy on the inputs trained on).
    """
    torch.manual_seed(seed)
    model = Normalized(network.build(), mean, std).to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.max_lr,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    schedule = Schedule(recipe.name, recipe.max_lr, recipe.epochs, recipe.batch_size)

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _loss(recipe, model, x, y, generator)

    history = fit(model, (images, labels), batch_loss, optimizer, schedule, generator, device)
    return model.eval(), history


class Schedule(NamedTuple):
    """The epoch loop's schedule: `name` (in progress lines), peak learning rate, epochs, batch size."""

    name: str
    max_lr: float
    epochs: int
    batch_size: int


def fit(
    model: nn.Module,
    examples: tuple[torch.Tensor, torch.Tensor],
    batch_loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """The epoch loop of every trainer here: each epoch shuffles examples = (images (N, ...), labels (N,))
    with `generator`, and for each batch x, y (on `device`) takes (loss, logits) = batch_loss(x, y), one
    optimizer step and one step of a one-cycle learning rate (OneCycleLR: warm-up over the first 20% of
    the steps to schedule.max_lr, then cosine annealing).

    Returns the history: per epoch {"epoch", "loss", "train_accuracy", "seconds", "load_average"}
    (load_average: the machine's 1-minute load at the end of the epoch); `progress` gets one line per
    epoch; a tqdm bar shows the batches when tqdm is installed and stderr is a terminal.
    """
    images, labels = examples
    name, max_lr, epochs, batch_size = schedule
    n = images.shape[0]
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * -(-n // batch_size), pct_start=0.2
    )
    history = []
    for epoch in range(epochs):
        start, total_loss, correct = time.monotonic(), 0.0, 0
        model.train()
        for index in _batches(torch.randperm(n, generator=generator), batch_size, f"{name} {epoch + 1}/{epochs}"):
            x, y = images[index].to(device), labels[index].to(device)
            loss, logits = batch_loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == y).sum())
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(total_loss / n, 4),
                "train_accuracy": round(correct / n, 4),
                "seconds": round(time.monotonic() - start, 1),
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
        progress(
            f"{name} epoch {epoch + 1}/{epochs}: loss {total_loss / n:.4f}, "
            f"train accuracy {correct / n:.2%}, lr {lr_schedule.get_last_lr()[0]:.5f}, "
            f"{history[-1]['seconds']:.0f} s, load average {history[-1]['load_average']:.1f}"
        )
    return history


def _batches(order: torch.Tensor, batch_size: int, label: str):
    """Index batches of `order`, shown as a tqdm bar when tqdm is installed and stderr is a terminal."""
    batches = order.split(batch_size)
    if not sys.stderr.isatty():
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, desc=label, leave=False)


def _predict(model: nn.Module, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """argmax of model logits over images (N, ...) in batches; int64 (N,) on the CPU."""
    out = []
    with torch.no_grad():
        for x in images.split(batch_size):
            out.append(model(x.to(device)).argmax(dim=1).cpu())
    return torch.cat(out)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device="cpu") -> float:
    """Fraction of images (N, 1, 28, 28) in [0, 1] that model classifies as labels (N,)."""
    return float((_predict(model, images, 500, device) == labels).double().mean())


def pgd_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device="cpu",
    eps: float = 0.1,
    steps: int = 20,
    batch_size: int = 500,
) -> float:
    """Accuracy under untargeted l_inf PGD (eps, steps, step 2.5 eps / steps, one random start)."""
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        x, y = x.to(device), y.to(device)
        x_adv = pgd(model, x, y, PGDConfig("linf", eps, steps), generator)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(dim=1) == y).sum())
    return correct / labels.shape[0]


def noisy_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, sigma: float, seed: int, device="cpu"
) -> float:
    """Accuracy of the base model on x + N(0, sigma^2 I), one noise draw per image (not clipped)."""
    generator = torch.Generator().manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=generator)
    return clean_accuracy(model, noisy, labels, device)


def smoothed_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    num_samples: int,
    seed: int,
    device="cpu",
) -> float:
    """Accuracy of the smoothed classifier: majority vote of model over num_samples noise draws per image
    (SmoothedClassifier in "votes" mode; a Monte Carlo estimate, not a certificate)."""
    settings = SmoothingSettings(sigma, n_estimate=num_samples, mode="votes", batch_size=2000)
    smoothed = SmoothedClassifier(model, settings, seed=seed)
    return clean_accuracy(smoothed, images, labels, device)


def measure(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device="cpu",
    smoothing_samples: int = 100,
) -> dict:
    """The model card's numbers for default model `name` on the given split (all fractions in [0, 1]).

    Every model: clean_accuracy, and pgd.accuracy (l_inf eps 0.1, 20 steps). smoothing also:
    noisy_accuracy (sigma 0.25, one draw) and smoothed_accuracy (majority of smoothing_samples draws).
    """
    sigma = RECIPES["smoothing"].sigma
    metrics = {"clean_accuracy": clean_accuracy(model, images, labels, device)}
    attack = {"norm": "linf", "eps": 0.1, "steps": 20, "step_size": 2.5 * 0.1 / 20, "random_start": True}
    attack["accuracy"] = pgd_accuracy(model, images, labels, seed, device, eps=0.1, steps=20)
    metrics["pgd"] = attack
    if name == "smoothing":
        metrics["noisy_accuracy"] = noisy_accuracy(model, images, labels, sigma, seed, device)
        metrics["smoothed_accuracy"] = smoothed_accuracy(model, images, labels, sigma, smoothing_samples, seed, device)
        metrics["smoothing"] = {"sigma": sigma, "num_samples": smoothing_samples, "rule": "majority vote"}
    return metrics


def checkpoint(
    model: Normalized, network: Network, mean: list[float], std: list[float], input_shape, sigma: float | None = None
) -> dict:
    """The checkpoint dict (core.models format) of a trained Normalized `model`: arch, num_classes,
    state_dict of the bare network (float32, on the CPU), mean, std (the lists the model was trained
    with), input_shape (C, H, W), then arch_options when the network has any and sigma for a smoothing
    base model (in this order: the embedded models' files keep their bytes)."""
    state = {key: value.detach().cpu().clone() for key, value in model.model.state_dict().items()}
    content = {
        "arch": network.arch,
        "num_classes": network.num_classes,
        "state_dict": state,
        "mean": list(mean),
        "std": list(std),
        "input_shape": [int(s) for s in input_shape],
    }
    if network.options:
        content["arch_options"] = dict(network.options)
    if sigma is not None:
        content["sigma"] = sigma
    return content
