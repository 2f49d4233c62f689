"""A plain sequential network as a JSON-ready list of layer specs, and the network built back from them.

A checkpoint may hold only tensors and plain data (it is read with torch.load(weights_only=True)), so a
network that is no named architecture, such as a deel-torchlip model after `vanilla_export()`, is saved
as "arch": "mix_perception:layers" with "arch_options": {"layers": describe(model)} and the state_dict
of `build(describe(model))`. Own code: torch has no description of a module's structure that is safe to
load (pickle runs code; a TorchScript archive loses the layer types a Lipschitz bound needs).

Each spec is {"type": name, <constructor arguments>} for these exact types: nn.Conv2d, nn.Linear,
nn.ReLU, nn.Flatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.PixelUnshuffle,
nn.PixelShuffle, architectures.GroupSort2 and architectures.L2NormPool2d. deel-torchlip's GroupSort2
with coefficient 1 is described as GroupSort2 (the same function: test_lipschitz checks it), so
building needs no deel-torchlip. Nested nn.Sequential (or deel's Sequential) containers are flattened.
Any other layer raises ValueError naming it.
"""

import sys

from torch import nn

from mix_perception.core.architectures import GroupSort2, L2NormPool2d

# type name -> (class, constructor arguments read from the module's attributes of the same names)
LAYERS = {
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                           "padding_mode")),  # fmt: skip
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "ReLU": (nn.ReLU, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Identity": (nn.Identity, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                 "divisor_override")),  # fmt: skip
    "LPPool2d": (nn.LPPool2d, ("norm_type", "kernel_size", "stride", "ceil_mode")),
    "PixelUnshuffle": (nn.PixelUnshuffle, ("downscale_factor",)),
    "PixelShuffle": (nn.PixelShuffle, ("upscale_factor",)),
    "GroupSort2": (GroupSort2, ()),
    "L2NormPool2d": (L2NormPool2d, ("kernel_size",)),
}
_NAMES = {cls: name for name, (cls, _) in LAYERS.items()}


def _plain(value):
    """Tuples as lists (JSON has no tuples)."""
    return list(value) if isinstance(value, tuple) else value


def _is_container(module: nn.Module) -> bool:
    deel = sys.modules.get("deel.torchlip")
    return type(module) is nn.Sequential or (deel is not None and type(module) is deel.Sequential)


def _is_deel_groupsort2(module: nn.Module) -> bool:
    deel = sys.modules.get("deel.torchlip")
    return deel is not None and type(module) is deel.GroupSort2 and module._coefficient_lip == 1.0


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The model's layers in the order they run, containers flattened."""
    if _is_container(model):
        return [layer for child in model for layer in layers_of(child)]
    return [model]


def describe(model: nn.Module) -> list[dict]:
    """[{"type": ..., arguments}] of each layer of `model` (a Sequential); ValueError for a layer it cannot describe."""
    specs = []
    for layer in layers_of(model):
        name = "GroupSort2" if _is_deel_groupsort2(layer) else _NAMES.get(type(layer))
        if name is None:
            raise ValueError(f"cannot describe layer type {type(layer).__name__} ({layer}); known: {', '.join(LAYERS)}")
        spec = {"type": name} | {key: _plain(getattr(layer, key)) for key in LAYERS[name][1]}
        if name in ("Conv2d", "Linear"):
            spec["bias"] = layer.bias is not None
        specs.append(spec)
    return specs


def _argument(value):
    return tuple(value) if isinstance(value, list) else value


def build(specs) -> nn.Sequential:
    """nn.Sequential of fresh layers from `describe`'s specs; ValueError for an unknown type or bad arguments."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError("layers must be a non-empty list of layer specs")
    layers = []
    for position, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("type") not in LAYERS:
            kind = spec.get("type") if isinstance(spec, dict) else spec
            raise ValueError(f"layer {position}: unknown type {kind!r}; known: {', '.join(LAYERS)}")
        cls, _ = LAYERS[spec["type"]]
        arguments = {key: _argument(value) for key, value in spec.items() if key != "type"}
        try:
            layers.append(cls(**arguments))
        except (TypeError, ValueError) as error:
            raise ValueError(f"layer {position} ({spec['type']}): {error}") from None
    return nn.Sequential(*layers)


def plain_copy(model: nn.Module) -> nn.Sequential:
    """build(describe(model)) holding model's weights: the network a "mix_perception:layers" checkpoint saves."""
    network = build(describe(model))
    for source, target in zip(layers_of(model), network, strict=True):
        target.load_state_dict(source.state_dict())
    reference = next(iter(model.parameters()), None)
    return (network if reference is None else network.to(reference.dtype)).eval()
