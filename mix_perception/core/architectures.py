"""Network architectures of the embedded default models and of `mix-perception train`, built by name.

A checkpoint names its architecture as "mix_perception:<name>" (see mix_perception.core.models) and may
carry "arch_options", the keyword arguments of its builder (input shape, widths); `build(name,
num_classes, **options)` returns a freshly initialised network of that name. The networks take
*normalized* inputs ((x - mean) / std, with the mean and std stored in the checkpoint; the Lipschitz
model stores none, so it sees [0, 1] pixels) and return logits. Both networks scale with the input:
`plain_cnn` pools until the feature map is at most 4 pixels high or wide, `lipschitz_cnn` takes
its blocks from the caller (experiments.lipschitz_training.recipe_for chooses them by input shape).
"""

import torch
from torch import nn

ARCHITECTURES = ("fmnist_cnn", "plain_cnn", "lipschitz_cnn")
LIPSCHITZ_BLOCKS = ((32, 32), (64, 64))
LIPSCHITZ_DENSE = 256
PLAIN_WIDTHS = (16, 32, 64, 128)  # widths of plain_cnn's stages; later stages repeat the last


def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution (padding 1, keeps H x W) + ReLU."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


def plain_cnn(num_classes: int = 10, channels: int = 1, height: int = 28, width: int = 28) -> nn.Module:
    """Plain CNN for C x H x W inputs: stages of 3x3 convolutions + ReLU, each ending in a 2x2 max pooling,
    until the feature map is at most 4 pixels high or wide (28 -> 14 -> 7 -> 3; 32 -> 16 -> 8 -> 4;
    64: four stages); flatten -> linear 128 + ReLU -> linear num_classes.

    Stage k has width PLAIN_WIDTHS[k] (16, 32, 64, 128, then 128) and two convolutions in stage 1, one in
    the others, so for 1 x 28 x 28 it is exactly fmnist_cnn (same layers, same parameter names). No batch
    norm: train and eval mode compute the same function. Input (N, C, H, W) normalized pixels; output
    logits (N, num_classes). ValueError when H or W is below 8 (nothing left to pool).
    """
    if min(height, width) < 8:
        raise ValueError(f"plain_cnn needs inputs of at least 8 x 8 pixels, got {height} x {width}")
    layers, in_channels, stage = [], channels, 0
    while min(height, width) > 4:
        out = PLAIN_WIDTHS[min(stage, len(PLAIN_WIDTHS) - 1)]
        layers += _conv(in_channels, out) + (_conv(out, out) if stage == 1 else [])
        layers.append(nn.MaxPool2d(2))
        in_channels, height, width, stage = out, height // 2, width // 2, stage + 1
    layers += [
        nn.Flatten(),
        nn.Linear(in_channels * height * width, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    ]
    return nn.Sequential(*layers)


def fmnist_cnn(num_classes: int = 10) -> nn.Module:
    """The embedded models' CNN: plain_cnn for 1 x 28 x 28 inputs (Fashion-MNIST), about 108 k parameters.

    conv16 -> pool -> conv32 -> conv32 -> pool -> conv64 -> pool (28 -> 14 -> 7 -> 3), flatten
    (64 * 3 * 3 = 576) -> linear 128 + ReLU -> linear num_classes.
    """
    return plain_cnn(num_classes, 1, 28, 28)


class GroupSort2(nn.Module):
    """GroupSort with groups of 2 along dim 1: each pair of channels (2k, 2k + 1) becomes (min, max).

    Same function as deel-torchlip's GroupSort2 (so an exported network needs no deel-torchlip).
    It permutes its input at every point, hence is 1-Lipschitz in l2. Input (N, C, ...) with C even.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.unflatten(1, (-1, 2))
        return torch.cat((pairs.amin(2, keepdim=True), pairs.amax(2, keepdim=True)), dim=2).flatten(1, 2)


class L2NormPool2d(nn.LPPool2d):
    """nn.LPPool2d(2, k): the l2 norm of each k x k window (stride k, floor mode), (N, C, H, W) -> (N, C, H//k, W//k).

    Its gradient at an all-zero window is 0; nn.LPPool2d's (and deel-torchlip's ScaledL2NormPool2d's)
    is NaN there (the derivative of sqrt at 0), which the black borders of Fashion-MNIST images hit.
    Non-overlapping windows: 1-Lipschitz in l2.
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__(2, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        squares = nn.functional.avg_pool2d(x * x, k) * (k * k)
        nonzero = squares > 0
        return torch.where(nonzero, torch.where(nonzero, squares, 1.0).sqrt(), 0.0)


def lipschitz_cnn(
    num_classes: int = 10,
    blocks=LIPSCHITZ_BLOCKS,
    dense: int = LIPSCHITZ_DENSE,
    channels: int = 1,
    height: int = 28,
    width: int = 28,
) -> nn.Module:
    """Plain-torch inference form of the 1-Lipschitz CNN trained with deel-torchlip, for C x H x W inputs.

    Each block: 3x3 convolutions (padding 1) with the given widths, each followed by GroupSort2, then
    a 2x2 L2-norm pooling (L2NormPool2d: the l2 norm of each window; 28 -> 14 -> 7); then
    flatten -> linear `dense` + GroupSort2 -> linear num_classes. Default blocks ((32, 32), (64, 64)),
    dense 256, 1 x 28 x 28 (the embedded model). Takes [0, 1] pixels (N, C, H, W), returns logits
    (N, num_classes). Its proven l2 Lipschitz constant comes from mix_perception.core.lipschitz, not
    from the training constraint.
    """
    layers = []
    for widths in blocks:
        for out in widths:
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), GroupSort2()]
            channels = out
        layers.append(L2NormPool2d(2))
        height, width = height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(channels * height * width, dense), GroupSort2(), nn.Linear(dense, num_classes)]
    return nn.Sequential(*layers)


def build(name: str, num_classes: int = 10, **options) -> nn.Module:
    """A new, randomly initialised network of the given architecture name (uses torch's global RNG).

    Args:
        name: one of ARCHITECTURES; a "mix_perception:" prefix is accepted and ignored.
        num_classes: number of output logits, >= 1.
        options: keyword arguments of the builder (a checkpoint's "arch_options"), e.g. channels,
            height, width for plain_cnn; blocks, dense, channels, height, width for lipschitz_cnn.
    Raises ValueError for an unknown name, a bad num_classes or options the builder does not take.
    """
    name = name.removeprefix("mix_perception:")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    builder = {"fmnist_cnn": fmnist_cnn, "plain_cnn": plain_cnn, "lipschitz_cnn": lipschitz_cnn}[name]
    try:
        return builder(int(num_classes), **options)
    except TypeError as error:
        raise ValueError(f"bad arch_options for {name}: {error}") from None
