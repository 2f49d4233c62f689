"""What the mixer's configure builds from its parameter values: models, certifier, frame converter,
cameras and the plain values of the image QoS. No ROS here (no rclpy, no message types): the node
reads its parameters into a dict and hands it to `build_runtime`. The models' input shape and class
names come from their cards (core.cards) unless the input.* and labels parameters say otherwise.
"""

from typing import NamedTuple

from mix_perception.ros.image_conversion import FrameConverter, InputSpec

# The embedded model that `robust_model: default` names, per certification: the Lipschitz network, the
# base of the smoothed h, or the adversarially trained h without a certificate.
DEFAULT_ROBUST = {
    "none": "robust",
    "lipschitz": "lipschitz",
    "smoothing": "smoothing",
    "smoothing_theorem4": "smoothing",
}


# What the node falls back to when neither a parameter nor a card says: the embedded models' input.
FALLBACK_SHAPE = (1, 28, 28)


class ModelInput(NamedTuple):
    """What frames become and what classes are called: channels, (height, width), class names."""

    channels: int
    size: tuple[int, int]
    labels: list


def _agreed(name: str, cards: dict, read) -> object:
    """The value `read(card)` of the cards that say one ({role: ModelCard or None}), or None; ValueError
    naming both when the cards of g and h disagree."""
    said = {role: (card, read(card)) for role, card in cards.items() if card is not None and read(card) is not None}
    values = [value for _, value in said.values()]
    if len(said) == 2 and values[0] != values[1]:
        (g_card, g_value), (h_card, h_value) = said["standard_model"], said["robust_model"]
        raise ValueError(
            f"the models' cards disagree on {name}: standard_model {g_card.path.name} says {g_value}, "
            f"robust_model {h_card.path.name} says {h_value} (set {name} to choose)"
        )
    return values[0] if values else None


def _card_channels(card) -> int | None:
    return card.input_shape[0] if card.input_shape else None


def _card_size(card) -> list | None:
    return list(card.input_shape[1:]) if card.input_shape else None


def model_input(values: dict, cards: dict) -> ModelInput:
    """input.channels, input.size and labels: each as set, else from g's and h's cards ({"standard_model": card,
    "robust_model": card}, None where a model has none), else the embedded models' (1 x 28 x 28, Fashion-MNIST
    names). ValueError for a bad value or cards that disagree."""
    from mix_perception.core.names import CLASS_NAMES

    size, labels = list(values["input.size"]), list(values["labels"])
    if size and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"input.size must be [height, width] of positive ints, got {size}")
    channels = values["input.channels"] or _agreed("input.channels", cards, _card_channels)
    size = size or _agreed("input.size", cards, _card_size)
    return ModelInput(
        channels or FALLBACK_SHAPE[0],
        tuple(size or FALLBACK_SHAPE[1:]),
        labels or _agreed("labels", cards, lambda card: card.class_names) or list(CLASS_NAMES),
    )


def normalization(values: dict, channels: int) -> tuple[list, list] | None:
    """(mean, std) of input.mean / input.std (a missing one: 0 / 1), or None when neither is set; ValueError
    unless each has 1 or `channels` values and std > 0."""
    mean, std = list(values["input.mean"]) or [0.0], list(values["input.std"]) or [1.0]
    if not values["input.mean"] and not values["input.std"]:
        return None
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(f"input.mean and input.std need 1 or {channels} values")
    if any(s <= 0 for s in std):
        raise ValueError("input.std must be positive")
    return mean, std


def model_specs(values: dict) -> dict:
    """{"standard_model": spec, "robust_model": spec}, "default" read as the embedded model of the role."""
    from mix_perception.core.models import default_spec

    return {
        "standard_model": default_spec(values["standard_model"], "standard"),
        "robust_model": default_spec(values["robust_model"], DEFAULT_ROBUST[values["certification"]]),
    }


def load_models(values: dict, device, normalized: tuple | None):
    """(standard, robust) nn.Modules from the model parameters, with the `normalization` that replaces their
    own when given (an embedded model is then loaded from its file). Raises ModelLoadError."""
    from mix_perception.core.models import DEFAULT_MODELS, DEFAULT_PREFIX, default_model_path, load_model

    mean, std = normalized or (None, None)
    loaded = []
    for role, spec in model_specs(values).items():
        name = spec.removeprefix(DEFAULT_PREFIX)
        if normalized and spec.startswith(DEFAULT_PREFIX) and name in DEFAULT_MODELS:
            spec = default_model_path(name)
        arch = values["standard_arch" if role == "standard_model" else "robust_arch"] or None
        loaded.append(load_model(spec, arch=arch, device=device, mean=mean, std=std))
    return tuple(loaded)


def load_ood_model(spec: str):
    """core.ood.OODModel from the `ood_model` file ("default:<name>": the embedded default_models/<name>.pt),
    or None for ""; ValueError (one line) for a bad file."""
    from mix_perception.core.models import DEFAULT_PREFIX, default_model_path
    from mix_perception.core.ood import OODModel

    if not spec:
        return None
    embedded = spec.startswith(DEFAULT_PREFIX)
    return OODModel.load(default_model_path(spec.removeprefix(DEFAULT_PREFIX)) if embedded else spec)


def certification_of(values: dict):
    """Certification from the certification, robust_logit_scale and smoothing.* parameters; ValueError for
    bad values."""
    from mix_perception.core.smoothing import SmoothingSettings
    from mix_perception.ros.inference import Certification

    seed = values["smoothing.seed"]
    smoothing = SmoothingSettings(
        sigma=values["smoothing.sigma"],
        n_select=values["smoothing.select_samples"],
        n_estimate=values["smoothing.samples"],
        delta=values["smoothing.delta"],
        mode=values["smoothing.mode"],
        batch_size=values["smoothing.batch_size"],
        n_max=values["smoothing.max_samples"],
    )
    return Certification(
        values["certification"],
        values["robust_logit_scale"],
        smoothing,
        values["smoothing.sequential"],
        None if seed < 0 else seed,
    )


class Runtime(NamedTuple):
    """What configure builds from the parameters; cleanup drops it. The image subscription's QoS is
    given as plain values (`image_reliability`: "best_effort" | "reliable", `image_depth`)."""

    classifier: object  # inference.FrameClassifier
    converter: FrameConverter
    labels: list
    max_pixels: int
    topics: list
    image_reliability: str
    image_depth: int
    subscribe_compressed: bool

    def settings(self) -> dict:
        """What /diagnostics reports of the configuration: device, certification, h's logit scale, cameras,
        and the proven l2 constant of h's logits (certification lipschitz)."""
        classifier = self.classifier
        settings = {
            "device": str(classifier.device),
            "certification": classifier.certification.method,
            "robust_logit_scale": classifier.certification.logit_scale,
            "cameras": len(self.topics),
        }
        if classifier.lipschitz_constant is not None:
            settings["lipschitz_constant"] = classifier.lipschitz_constant
        if classifier.ood is not None:
            settings["ood_calibration_size"] = classifier.ood.calibration_scores.numel()
        return settings


def model_cards(values: dict) -> dict:
    """{"standard_model": ModelCard or None, "robust_model": ...} of the model parameters (core.cards)."""
    from mix_perception.core.cards import read_card

    return {role: read_card(spec) for role, spec in model_specs(values).items()}


def build_runtime(values: dict, models=None) -> Runtime:
    """Validate the configure-time parameters and load the models (`models`: (g, h) given instead, with no
    cards). Input shape and labels: the parameters, else the models' cards (`model_input`); normalization:
    input.mean / input.std, inside both models, else each model's own. Raises ValueError / ModelLoadError
    with a one-line reason."""
    import torch

    from mix_perception.core.models import Normalized, resolve_device
    from mix_perception.ros.inference import FrameClassifier

    if not values["image_topics"] or not all(values["image_topics"]):
        raise ValueError(f"image_topics must list at least one topic, got {values['image_topics']}")
    if values["cpu_threads"] > 0:
        torch.set_num_threads(values["cpu_threads"])
    cards = {role: None for role in ("standard_model", "robust_model")} if models else model_cards(values)
    shape = model_input(values, cards)
    normalized = normalization(values, shape.channels)
    device = resolve_device(values["device"])
    certification = certification_of(values)
    if models is None:
        models = load_models(values, device, normalized)
    elif normalized:
        models = tuple(Normalized(model, *normalized) for model in models)
    ood = load_ood_model(values["ood_model"])
    classifier = FrameClassifier(*models, certification, device, (shape.channels, *shape.size), ood)
    return Runtime(
        classifier,
        FrameConverter(InputSpec(shape.channels, shape.size), device),
        shape.labels,
        values["input.max_pixels"],
        list(values["image_topics"]),
        values["image_reliability"],
        values["image_depth"],
        values["subscribe_compressed"],
    )
