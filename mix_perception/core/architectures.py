"""Network architectures of the embedded default models, built by name.

A checkpoint names its architecture as "mix_perception:<name>" (see mix_perception.core.models);
`build(name)` returns a freshly initialised network of that name. The networks take *normalized*
inputs ((x - mean) / std, with the mean and std stored in the checkpoint) and return logits.
"""

from torch import nn

ARCHITECTURES = ("fmnist_cnn",)


def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution (padding 1, keeps H x W) + ReLU."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


def fmnist_cnn(num_classes: int = 10) -> nn.Module:
    """Small 4-conv CNN for 1 x 28 x 28 inputs (Fashion-MNIST), about 108 k parameters.

    conv16 -> pool -> conv32 -> conv32 -> pool -> conv64 -> pool (3x3 convolutions with padding 1,
    ReLU after each, 2x2 max pooling: 28 -> 14 -> 7 -> 3), flatten (64 * 3 * 3 = 576) ->
    linear 128 + ReLU -> linear num_classes. No batch norm, so train and eval mode compute the same
    function. Input (N, 1, 28, 28) normalized pixels; output logits (N, num_classes).
    """
    return nn.Sequential(
        *_conv(1, 16),
        nn.MaxPool2d(2),
        *_conv(16, 32),
        *_conv(32, 32),
        nn.MaxPool2d(2),
        *_conv(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


def build(name: str, num_classes: int = 10) -> nn.Module:
    """A new, randomly initialised network of the given architecture name (uses torch's global RNG).

    Args:
        name: one of ARCHITECTURES; a "mix_perception:" prefix is accepted and ignored.
        num_classes: number of output logits, >= 1.
    Raises ValueError for an unknown name or a bad num_classes.
    """
    name = name.removeprefix("mix_perception:")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    return fmnist_cnn(int(num_classes))
