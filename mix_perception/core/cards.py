"""Model cards: the JSON file beside a model file (<name>.json next to <name>.pt), as default_models/ and
`mix-perception train` write them, and saving a plain network with its card.

Read from a card: "input": {"shape": [C, H, W], "mean": [...] | null, "std": [...] | null} (the model
takes [0, 1] pixels of that shape and applies (x - mean) / std itself; null: no normalization) and
"class_names" (index = class id). Every other key (data, recipe, metrics) is for people. A missing key
is None: the caller falls back to the checkpoint or its parameters.

`save_model` writes a sequential network of plain layers (e.g. a deel-torchlip model after
`vanilla_export()`) as a checkpoint that torch.load(weights_only=True) reads and load_model rebuilds
without deel-torchlip (core.layer_specs), with its card.
"""

import json
import math
from pathlib import Path
from typing import NamedTuple

from mix_perception.core.models import DEFAULT_PREFIX, default_model_path


class ModelCard(NamedTuple):
    """What a card says about the model's input and classes; None where it says nothing."""

    path: Path
    input_shape: tuple[int, int, int] | None
    mean: list[float] | None
    std: list[float] | None
    class_names: list[str] | None


def card_path(spec) -> Path:
    """The card of a model spec: default_models/<name>.json for "default:<name>", else the file's .json twin."""
    text = str(spec)
    embedded = text.startswith(DEFAULT_PREFIX)
    return (default_model_path(text[len(DEFAULT_PREFIX) :]) if embedded else Path(text)).with_suffix(".json")


def _numbers(path: Path, key: str, value) -> list[float] | None:
    if value is None:
        return None
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not value or not all(math.isfinite(v) for v in value):
        raise ValueError(f"{path}: input.{key} must be null or a non-empty list of numbers, got {value!r}")
    return [float(v) for v in value]


def _shape(path: Path, value) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"{path}: input.shape must be [channels, height, width] of positive ints, got {value!r}")
    return tuple(value)


def _class_names(path: Path, value) -> list[str] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{path}: class_names must be a non-empty list of strings, got {value!r}")
    return list(value)


def read_card(spec) -> ModelCard | None:
    """The card of a model spec (`card_path`), or None when there is none; ValueError (one line) for a bad card."""
    path = card_path(spec)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable model card ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a model card is a JSON object, got {type(content).__name__}")
    model_input = content.get("input") or {}
    if not isinstance(model_input, dict):
        raise ValueError(f"{path}: input must be an object, got {model_input!r}")
    return ModelCard(
        path,
        _shape(path, model_input.get("shape")),
        _numbers(path, "mean", model_input.get("mean")),
        _numbers(path, "std", model_input.get("std")),
        _class_names(path, content.get("class_names")),
    )


def save_model(model, path, input_shape, class_names, mean=None, std=None, card: dict | None = None) -> Path:
    """Save a sequential network of plain layers (core.layer_specs) as a checkpoint at `path` (.pt) and its
    card beside it (.json); returns the card's path.

    input_shape (C, H, W) of the [0, 1] pixels it takes; class_names, index = class id; mean/std: the
    per-channel normalization it expects (the loader applies it; None: none); `card`: more keys for the
    card (data, recipe, metrics). ValueError for a layer core.layer_specs cannot describe.
    """
    import torch

    from mix_perception.core.layer_specs import describe, plain_copy

    path = Path(path)
    specs = describe(model)
    network = plain_copy(model)
    shape = [int(s) for s in input_shape]
    checkpoint = {
        "arch": "mix_perception:layers",
        "arch_options": {"layers": specs},
        "num_classes": len(class_names),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "input_shape": shape,
        "class_names": list(class_names),
    }
    if mean is not None:
        checkpoint["mean"], checkpoint["std"] = [float(m) for m in mean], [float(s) for s in std]
    torch.save(checkpoint, path)
    description = {
        "name": path.stem,
        "file": path.name,
        "architecture": "mix_perception:layers (core.layer_specs)",
        "input": {"shape": shape, "pixels": "[0, 1]", "mean": checkpoint.get("mean"), "std": checkpoint.get("std")},
        "class_names": list(class_names),
    }
    card_file = card_path(path)
    card_file.write_text(json.dumps(description | dict(card or {}), indent=2) + "\n")
    return card_file
