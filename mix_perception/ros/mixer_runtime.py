"""What the mixer's configure builds from its parameter values: models, certifier, frame converter,
cameras and the plain values of the image QoS. No ROS here (no rclpy, no message types): the node
reads its parameters into a dict and hands it to `build_runtime`.
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


def input_spec(values: dict) -> InputSpec:
    """InputSpec from the input.* parameters; raises ValueError for inconsistent ones."""
    size = list(values["input.size"])
    channels = values["input.channels"]
    mean, std = list(values["input.mean"]), list(values["input.std"])
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input.size must be [height, width] of positive ints, got {size}")
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(f"input.mean and input.std need 1 or {channels} values")
    if any(s <= 0 for s in std):
        raise ValueError("input.std must be positive")
    mean, std = mean * (channels // len(mean)), std * (channels // len(std))
    identity = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)
    return InputSpec(
        channels, (int(size[0]), int(size[1])), () if identity else tuple(mean), () if identity else tuple(std)
    )


def load_models(values: dict, device):
    """(standard, robust) nn.Modules from the model parameters. Raises ModelLoadError."""
    from mix_perception.core.models import default_spec, load_model

    standard_path = default_spec(values["standard_model"], "standard")
    robust_path = default_spec(values["robust_model"], DEFAULT_ROBUST[values["certification"]])
    standard = load_model(standard_path, arch=values["standard_arch"] or None, device=device)
    robust = load_model(robust_path, arch=values["robust_arch"] or None, device=device)
    return standard, robust


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


def build_runtime(values: dict, models=None) -> Runtime:
    """Validate the configure-time parameters and load the models (`models`: (g, h) given instead).
    Raises ValueError / ModelLoadError with a one-line reason."""
    import torch

    from mix_perception.core.models import resolve_device
    from mix_perception.ros.inference import FrameClassifier

    if not values["image_topics"] or not all(values["image_topics"]):
        raise ValueError(f"image_topics must list at least one topic, got {values['image_topics']}")
    if values["cpu_threads"] > 0:
        torch.set_num_threads(values["cpu_threads"])
    spec = input_spec(values)
    device = resolve_device(values["device"])
    certification = certification_of(values)
    standard, robust = models if models is not None else load_models(values, device)
    ood = load_ood_model(values["ood_model"])
    classifier = FrameClassifier(standard, robust, certification, device, (spec.channels, *spec.size), ood)
    return Runtime(
        classifier,
        FrameConverter(spec, device),
        list(values["labels"]),
        values["input.max_pixels"],
        list(values["image_topics"]),
        values["image_reliability"],
        values["image_depth"],
        values["subscribe_compressed"],
    )
