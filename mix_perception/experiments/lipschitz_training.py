"""Training, exporting and measuring a Lipschitz h (1-Lipschitz in l2 by construction): the embedded
default model and those of `mix-perception train --role lipschitz`.

The network (architectures.lipschitz_cnn, no input normalization: it sees [0, 1] pixels) is trained
with deel-torchlip layers: SpectralConv2d and SpectralLinear (weights kept orthogonal by power
iteration + Bjorck, convolutions scaled by deel-torchlip's lconv coefficient), FrobeniusLinear,
GroupSort2, and the L2-norm pool (architectures.L2NormPool2d: deel-torchlip's ScaledL2NormPool2d
computes the same function but has a NaN gradient at all-zero windows); the loss on the logits z is
tau-cross-entropy CE(tau (z - u onehot(y)), y) / tau (TauCrossEntropyLoss; offset u, 0 for plain
tau-CE) or HKR (HKRMulticlassLoss: hinge with margin m plus Kantorovich-Rubinstein). Adam with a
one-cycle learning-rate schedule, batch 128. The network is then exported to plain torch layers
(deel-torchlip's vanilla_model), whose constant is proven by mix_perception.core.lipschitz; the
training-time constraint is not used as a proof.
deel-torchlip is needed here only, never at inference.

RECIPE (the runs behind it: docs/results/lipschitz_recipes; tau-CE with tau 4-10, HKR, a margin offset;
SpectralLinear vs FrobeniusLinear last layer; 3 to 17 epochs): blocks (32, 32), (64, 64), dense 256, a
FrobeniusLinear last layer (unit rows, not orthogonal ones, so the pairwise margin constants
||W_i - W_j|| L' fall below sqrt(2) L), tau-CE with tau 4.5 on the logits with the true class's lowered by
0.08 (a margin offset: Lipschitz-margin training, Tsuzuku et al. 2018), Adam 2e-3, 17 epochs: ~30 minutes on
2 CPU cores (training times: docs/results/README.md). `recipe_for` scales it to other inputs: one block
(two convolutions, then a 2x2 pooling) per halving until the map is at most 7 pixels high or wide
(28: 2 blocks, 28 -> 7; 32: 3, 32 -> 4; 64: 4), so that the dense layer's input stays small (its
orthogonalization dominates a training step, its weights the file); block k has width w * 2^k
capped at 128, w = 32 for grey and 48 for colour (three channels carry more to the first layer; not
96, so that a 3 x 64 x 64 h stays light enough for a 30 Hz camera on a 2-core CPU).

Randomness comes only from torch.manual_seed(seed) (initialisation) and a seeded torch.Generator
(shuffling, flips), so a run is reproducible on the same machine, torch version, device and threads.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mix_perception.core import architectures, certify, lipschitz
from mix_perception.experiments import batches
from mix_perception.experiments.training import Network, Schedule, fit, flipped

ARCH = "mix_perception:lipschitz_cnn"
INPUT_SHAPE = (1, 28, 28)
RADII = (0.1, 0.25, 0.5, 1.0)
MAX_WIDTH = 128
EMBEDDED_NETWORK = Network(ARCH)  # lipschitz_cnn with its defaults: the embedded model's network


@dataclass(frozen=True)
class Recipe:
    """How the Lipschitz model is trained. blocks/dense: widths of architectures.lipschitz_cnn;
    loss "tau_ce" (tau; offset u: the true class's logit lowered by u first) or "hkr" (hkr_alpha weight of
    the hinge, margin m); lr: Adam's peak rate;
    last: the last layer, "spectral" (SpectralLinear: orthogonal rows, ||W_i - W_j|| = sqrt(2)) or
    "frobenius" (FrobeniusLinear with disjoint neurons: unit rows, each logit 1-Lipschitz)."""

    name: str = "lipschitz"
    blocks: tuple = architectures.LIPSCHITZ_BLOCKS
    dense: int = architectures.LIPSCHITZ_DENSE
    epochs: int = 17
    batch_size: int = 128
    lr: float = 2e-3
    loss: str = "tau_ce"
    tau: float = 4.5
    offset: float = 0.08
    hkr_alpha: float = 0.98
    margin: float = 1.0
    hflip: bool = True
    last: str = "frobenius"

    def describe(self) -> dict:
        """The recipe as a JSON-ready dict (for the model card)."""
        card = asdict(self)
        card["blocks"] = [list(block) for block in self.blocks]
        card["optimizer"] = "Adam(betas=(0.9, 0.999)), OneCycleLR(max_lr=lr, pct_start=0.2, cosine), per batch"
        card["augmentation"] = "random horizontal flip (p=0.5)" if self.hflip else "none"
        if self.loss == "tau_ce":
            shifted = f"(z - {self.offset:g} onehot(y))" if self.offset else "z"
            card["objective"] = f"TauCrossEntropyLoss(tau={self.tau:g}): CE(tau {shifted}, y) / tau"
        else:
            card["objective"] = f"HKRMulticlassLoss(alpha={self.hkr_alpha:g}, min_margin={self.margin:g})"
        return card


RECIPE = Recipe()


def recipe_for(input_shape, **overrides) -> Recipe:
    """RECIPE with blocks scaled to inputs of shape (C, H, W) (rule in the module docstring): for
    1 x 28 x 28 exactly RECIPE's blocks. `overrides` replace other fields (epochs, hflip, ...)."""
    channels, height, width = (int(s) for s in input_shape)
    if min(height, width) < 8:
        raise ValueError(f"the Lipschitz CNN needs inputs of at least 8 x 8 pixels, got {height} x {width}")
    base, blocks = (32 if channels == 1 else 48), []
    while min(height, width) > 7:
        out = min(base * 2 ** len(blocks), MAX_WIDTH)
        blocks.append((out, out))
        height, width = height // 2, width // 2
    return Recipe(blocks=tuple(blocks), **overrides)


def network(recipe: Recipe, input_shape, num_classes: int = 10) -> Network:
    """The exported network of `recipe` for inputs (C, H, W): lipschitz_cnn with arch_options listing only
    what differs from the builder's defaults (none for the embedded model, whose checkpoint stays as it was)."""
    channels, height, width = (int(s) for s in input_shape)
    wanted = {"blocks": tuple(map(tuple, recipe.blocks)), "dense": recipe.dense, "channels": channels}
    wanted |= {"height": height, "width": width}
    defaults = {"blocks": architectures.LIPSCHITZ_BLOCKS, "dense": architectures.LIPSCHITZ_DENSE, "channels": 1}
    defaults |= {"height": 28, "width": 28}
    options = {key: value for key, value in wanted.items() if value != defaults[key]}
    if "blocks" in options:
        options["blocks"] = [list(block) for block in options["blocks"]]
    return Network(ARCH, num_classes, options or None)


def lipschitz_network(recipe: Recipe, num_classes: int = 10, input_shape=INPUT_SHAPE) -> nn.Module:
    """The deel-torchlip network, layer for layer the same as architectures.lipschitz_cnn(blocks, dense, C, H, W)."""
    from deel import torchlip

    last = {"spectral": torchlip.SpectralLinear, "frobenius": torchlip.FrobeniusLinear}[recipe.last]
    layers, (channels, height, width) = [], (int(s) for s in input_shape)
    for widths in recipe.blocks:
        for out in widths:
            layers += [torchlip.SpectralConv2d(channels, out, kernel_size=3, padding=1), torchlip.GroupSort2()]
            channels = out
        layers.append(architectures.L2NormPool2d(2))
        height, width = height // 2, width // 2
    layers += [
        nn.Flatten(),
        torchlip.SpectralLinear(channels * height * width, recipe.dense),
        torchlip.GroupSort2(),
        last(recipe.dense, num_classes),
    ]
    return nn.Sequential(*layers)


def _one_hot(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """One-hot (N, C) of labels (N,) in the dtype of logits (N, C)."""
    return nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)


def _criterion(recipe: Recipe) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits (N, C), labels (N,)) of the recipe."""
    from deel import torchlip

    if recipe.loss == "tau_ce":
        tau_ce = torchlip.TauCrossEntropyLoss(tau=recipe.tau)
        if not recipe.offset:
            return tau_ce
        return lambda logits, labels: tau_ce(logits - recipe.offset * _one_hot(labels, logits), labels)
    if recipe.loss == "hkr":
        hkr = torchlip.HKRMulticlassLoss(alpha=recipe.hkr_alpha, min_margin=recipe.margin)
        return lambda logits, labels: hkr(logits, _one_hot(labels, logits))
    raise ValueError(f"unknown loss {recipe.loss!r}; known: tau_ce, hkr")


def train(
    recipe: Recipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device: torch.device | str = "cpu",
    num_classes: int = 10,
    progress: Callable[[str], None] = print,
) -> tuple[nn.Module, list[dict]]:
    """Train the deel-torchlip network by `recipe` on images (N, C, H, W) in [0, 1], labels (N,) int64 in
    [0, num_classes), and export it.

    Returns the exported plain network (`network(recipe, (C, H, W), num_classes)`, eval mode, on
    `device`, [0, 1] pixels -> logits) and the history of `training.fit`.
    """
    input_shape = tuple(images.shape[1:])
    torch.manual_seed(seed)
    model = lipschitz_network(recipe, num_classes, input_shape).to(device)
    criterion = _criterion(recipe)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(flipped(x, generator) if recipe.hflip else x)
        return criterion(logits, y), logits

    schedule = Schedule(recipe.name, recipe.lr, recipe.epochs, recipe.batch_size)
    history = fit(model, (images, labels), batch_loss, optimizer, schedule, generator, device, progress)
    return export(model.eval(), network(recipe, input_shape, num_classes), input_shape), history


def export(model: nn.Module, plain_network: Network, input_shape=INPUT_SHAPE) -> nn.Module:
    """The trained deel-torchlip network (eval mode) as plain torch layers (`plain_network`, a lipschitz_cnn).

    Uses deel-torchlip's vanilla_model (weights as the constrained layers compute them in eval mode),
    then checks that the plain network computes the same logits (RuntimeError otherwise).
    """
    from deel.torchlip import vanilla_model

    device = next(model.parameters()).device
    vanilla = vanilla_model(model.eval(), in_place=False)
    plain = plain_network.build().to(device)
    plain.load_state_dict({key: value.detach().clone() for key, value in vanilla.state_dict().items()})
    probe = torch.rand((8, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        gap = float((plain(probe) - model(probe)).abs().max())
    if not gap < 1e-4:
        raise RuntimeError(f"exported network differs from the trained one by {gap:g} on the logits")
    return plain.eval()


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device="cpu", radii=RADII) -> dict:
    """The model card's numbers for the exported Lipschitz model on the given images (fractions in [0, 1]).

    clean_accuracy; lipschitz_bound (proven l2 constant L of the logits, core.lipschitz) and
    margin_bound_max (largest pairwise margin constant K_ij); certified_accuracy at each l2 radius:
    the fraction correctly classified with h's own deterministic radius (alpha = 1,
    certify.lipschitz_logit_radius with the pairwise constants) >= the radius; and the same with the
    all-margins constant sqrt(2) L (certified_accuracy_sqrt2L), for comparison.
    """
    logits = batches.logits(model, images, batches.RunSettings(device=device))
    bound, margins = lipschitz.lipschitz_constants(model, tuple(images.shape[1:]))
    correct = logits.argmax(dim=1) == labels
    pairwise = certify.lipschitz_logit_radius(logits, 1.0, bound, margins)
    plain = certify.lipschitz_logit_radius(logits, 1.0, bound)
    return {
        "clean_accuracy": float(correct.double().mean()),
        "lipschitz_bound": bound,
        "margin_bound_max": float(margins.max()),
        "certified_accuracy": {str(r): float((correct & (pairwise >= r)).double().mean()) for r in radii},
        "certified_accuracy_sqrt2L": {str(r): float((correct & (plain >= r)).double().mean()) for r in radii},
    }


def checkpoint(model: nn.Module, plain_network: Network = EMBEDDED_NETWORK, input_shape=INPUT_SHAPE) -> dict:
    """The checkpoint dict (core.models format) of an exported Lipschitz model: arch, num_classes, the
    plain network's state_dict (float32, CPU), input_shape, arch_options when there are any; no
    mean/std (the network sees [0, 1] pixels). Default: the embedded model's shape, 10 classes."""
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    content = {
        "arch": ARCH,
        "num_classes": plain_network.num_classes,
        "state_dict": state,
        "input_shape": [int(s) for s in input_shape],
    }
    if plain_network.options:
        content["arch_options"] = dict(plain_network.options)
    return content
