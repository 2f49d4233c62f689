"""Parameter tables of the nodes: name, default, description, range, dynamic or not — declared in one call.

Every parameter is declared with a ParameterDescriptor (description, type, range where one applies).
A `dynamic` parameter applies at once, in any state. The others are read-only in the plain nodes
(safety monitor, demo camera); in the managed mixer they are configure-time parameters: settable
while the mixer is not active, read when it is configured (`reconfigurable`). `startup` parameters
are read once, when the node starts, and are read-only everywhere. `config/mixer.yaml` lists the
same names with the same defaults (a test checks that).
"""

import math
from typing import Any, NamedTuple

from mix_perception.core.names import CERTIFICATION_METHODS

# The image subscription's deepest history: DDS keeps up to that many received frames per camera, in
# memory, until the executor takes them (and the mixer keeps only the newest one).
MAX_IMAGE_DEPTH = 10


class Spec(NamedTuple):
    """One parameter. `bounds` (low, high) becomes a floating-point or integer range descriptor; `choices`
    the allowed strings; `dynamic` applies at once; `startup` is read once, when the node starts.
    `list_of` (a type, e.g. float): a list whose default [] means "not given" (ROS cannot type an empty
    list, so it is declared with dynamic typing and its items are checked here)."""

    name: str
    default: Any
    description: str
    dynamic: bool = False
    bounds: tuple | None = None
    choices: tuple | None = None
    startup: bool = False
    list_of: type | None = None


MIXER = (
    Spec(
        "alpha",
        0.75,
        "mixing weight of the robust model h: p = (1-alpha) softmax(g) + alpha h; "
        "certificates need alpha > 0.5; applies from the next frame",
        dynamic=True,
        bounds=(0.0, 1.0),
    ),
    Spec(
        "autostart",
        True,
        "configure and activate the mixer when it starts; false: it waits for lifecycle transitions "
        "(ros2 lifecycle set /mixer configure, then activate)",
        startup=True,
    ),
    Spec("device", "auto", "torch device: auto (GPU when there is one) | cpu | cuda | cuda:N"),
    Spec(
        "image_topics",
        ["image"],
        "image topics to classify, one per camera (sensor_msgs/Image; with subscribe_compressed also "
        "<topic>/compressed); the newest frame of every camera goes into one batched forward",
    ),
    Spec(
        "standard_model",
        "default:standard",
        "accurate model g: 'default:standard' (embedded; 'default' means the same), "
        "a checkpoint/state_dict (.pt/.pth) or a TorchScript file",
    ),
    Spec("standard_arch", "", "architecture for a bare state_dict (torchvision name or mix_perception:<name>)"),
    Spec(
        "robust_model",
        "default:lipschitz",
        "robust model h (the base model hbar of the smoothed h with smoothing certification): "
        "'default:smoothing' (embedded, trained with noise), 'default:lipschitz' (embedded, 1-Lipschitz), "
        "'default:robust' (embedded, adversarially trained), 'default' (the embedded one for the "
        "certification), or a path",
    ),
    Spec("robust_arch", "", "architecture for a bare state_dict of the robust model"),
    Spec(
        "ood_model",
        "",
        "out-of-distribution model of h's features and of the frame statistics (core/ood.py; as mix-perception "
        "calibrate --goal risk writes it; default:ood_lipschitz = the embedded one, fitted for default:standard + "
        "default:lipschitz): each frame gets a Mahalanobis ood_score, its conformal ood_p_value, and the "
        'shift_p_value (g\'s energy) and input_shift_p_value (frame statistics) of the shift test; "" = none',
    ),
    Spec(
        "required_radius",
        0.1,
        "certified l2 radius (in each frame's own pixels, scaled to [0, 1]) the control stack requires: "
        "sequential smoothing stops as soon as it is decided for a frame; keep it equal to the safety monitor's",
        dynamic=True,
        bounds=(0.0, 1000.0),
    ),
    Spec(
        "robust_logit_scale",
        8.0,
        "h's logits are multiplied by this before mixing (mix-perception calibrate chooses it); with "
        "certification lipschitz the constant scales with it; values other than 1 need certification none or "
        "lipschitz, since the smoothing certificates are about h itself",
        bounds=(1e-3, 1000.0),
    ),
    Spec(
        "certification",
        "lipschitz",
        "none | lipschitz (a Lipschitz h with a proven constant: one forward, deterministic) | smoothing "
        "(Theorem 5 on the Gaussian smoothing of h, holds w.p. 1 - delta) | smoothing_theorem4 (Theorem 4, "
        "Lip = sqrt(2/pi)/sigma, on the smoothed h, fixed n)",
        choices=CERTIFICATION_METHODS,
    ),
    Spec(
        "smoothing.sigma",
        0.25,
        "noise standard deviation of the smoothed h, in [0, 1] pixel units "
        "(must match the sigma the robust model was trained with)",
        bounds=(1e-6, 10.0),
    ),
    Spec(
        "smoothing.sequential",
        True,
        "certify at required_radius with early stopping: noise is drawn in looks until radius >= required_radius "
        "is decided (votes mode; Theorem 5); false: a fixed select_samples + samples per frame",
    ),
    Spec(
        "smoothing.max_samples",
        256,
        "sequential: the most noise samples per frame (n_max)",
        bounds=(1, 1_000_000),
    ),
    Spec("smoothing.samples", 192, "fixed n: Monte Carlo samples used to bound h (n_estimate)", bounds=(2, 1_000_000)),
    Spec(
        "smoothing.select_samples",
        32,
        "fixed n: Monte Carlo samples used to choose h's class (n_select)",
        bounds=(1, 1_000_000),
    ),
    Spec("smoothing.delta", 0.001, "certificates hold with probability >= 1 - delta", bounds=(1e-12, 0.5)),
    Spec("smoothing.batch_size", 256, "noisy inputs per forward of the base model", bounds=(1, 1_000_000)),
    Spec(
        "smoothing.mode",
        "votes",
        "votes (Clopper-Pearson on argmax counts) | probs (empirical Bernstein on softmax averages; fixed n only)",
        choices=("votes", "probs"),
    ),
    Spec("smoothing.seed", -1, "seed of the noise generator; -1 = fresh entropy", bounds=(-1, 2**62)),
    Spec(
        "input.size",
        [],
        "model input [height, width]: frames are resized (bilinear) to it; [] = from the models' cards "
        "(<model>.json, input.shape), else 28 x 28",
        list_of=int,
    ),
    Spec(
        "input.channels",
        0,
        "model input channels: 1 (BT.601 luma of colour frames) or 3 (RGB); 0 = from the models' cards, else 1",
        bounds=(0, 3),
    ),
    Spec(
        "input.mean",
        [],
        "per-channel mean of the normalization (x - mean) / std of [0, 1] pixels that both models get, replacing "
        "their own (checkpoint or card); [] = each model's own. Certified radii stay in [0, 1] pixel units",
        list_of=float,
    ),
    Spec("input.std", [], "per-channel std of that normalization ([] with a mean: 1)", list_of=float),
    Spec("input.max_pixels", 4096 * 4096, "frames with more pixels are rejected", bounds=(1, 2**31 - 1)),
    Spec(
        "labels",
        [],
        "class names, index = class id; [] = from the models' cards (class_names), else Fashion-MNIST's",
        list_of=str,
    ),
    Spec(
        "image_reliability",
        "best_effort",
        "QoS reliability of the image subscription: best_effort | reliable",
        choices=("best_effort", "reliable"),
    ),
    Spec(
        "image_depth",
        5,
        f"QoS history depth of the image subscription (1-{MAX_IMAGE_DEPTH}): the node keeps only the newest frame, "
        "and DDS holds up to depth frames per camera in memory",
        bounds=(1, MAX_IMAGE_DEPTH),
    ),
    Spec("subscribe_compressed", False, "also subscribe image/compressed (sensor_msgs/CompressedImage)"),
    Spec(
        "cpu_threads",
        1,
        "torch CPU threads; 0 = torch's default (all cores). 1 keeps the other cores free for DDS and the "
        "other nodes, and avoids torch's thread contention on a busy 2-core machine",
        bounds=(0, 1024),
    ),
    Spec("diagnostics_period", 1.0, "seconds between /diagnostics messages", bounds=(0.05, 3600.0), startup=True),
)

# Old parameter names of the mixer -> their new names: given to the mixer, they fail its configure.
MIXER_RENAMED = {"robust_sharpening": "robust_logit_scale"}

SAFETY_MONITOR = (
    Spec(
        "required_radius",
        0.1,
        "certified l2 radius (in each frame's own pixels, scaled to [0, 1]) the control stack requires",
        dynamic=True,
        bounds=(0.0, 1000.0),
    ),
    Spec(
        "max_frame_age",
        0.5,
        "seconds: a frame older than this (now - header.stamp) is unsafe, and a stream silent for longer is stale",
        dynamic=True,
        bounds=(0.001, 3600.0),
    ),
    Spec("watchdog_period", 0.1, "seconds between watchdog checks for a stale stream", bounds=(0.001, 3600.0)),
    Spec(
        "sources",
        [""],
        "cameras watched from the start, by the fully qualified image topic the mixer reports as `source` "
        '(e.g. /camera/front/image_raw), each STALE until its first frame; "" stands for the stream as a '
        "whole until any frame arrives. Cameras that send frames are watched from then on, listed or not",
    ),
    Spec("diagnostics_period", 1.0, "seconds between /diagnostics messages", bounds=(0.05, 3600.0)),
    Spec(
        "acceptance.score",
        "",
        "acceptance rule: a frame certified at required_radius is OK only when this score >= acceptance.threshold "
        "(chosen by Learn-then-Test): radius | top_probability | margin | margin_if_g_agrees | "
        'radius_if_g_agrees; "" = no acceptance rule',
    ),
    Spec("acceptance.threshold", 0.0, "the acceptance score's threshold (higher score = more trusted)"),
    Spec(
        "acceptance.epsilon",
        0.0,
        "the guarantee of the threshold: P(wrong class | accepted) <= epsilon; in (0, 1) when a score is set",
        bounds=(0.0, 1.0),
    ),
    Spec(
        "acceptance.delta",
        0.0,
        "the guarantee holds with probability >= 1 - delta over the calibration draw; in (0, 1) when a score is set",
        bounds=(0.0, 1.0),
    ),
    Spec(
        "acceptance.calibration_size",
        0,
        "calibration frames the threshold was chosen on; > 0 when a score is set",
        bounds=(0, 2**31 - 1),
    ),
    Spec(
        "acceptance.coverage",
        0.0,
        "fraction of the calibration frames accepted at the threshold (the coverage to expect); in (0, 1] when a "
        "score is set",
        bounds=(0.0, 1.0),
    ),
    Spec(
        "acceptance.pipeline",
        "",
        "fingerprint of the pipeline the threshold was calibrated on (core.fingerprint: g, h, certification, h's "
        "logit scale, input shape, alpha; the mixer publishes its own with every frame); needed when a score is "
        "set: frames of another pipeline are refused as not_calibrated",
    ),
    Spec(
        "acceptance.radius",
        0.0,
        "the required_radius the threshold was calibrated at; > 0 when a score is set: while required_radius "
        "differs, frames are refused as not_calibrated",
        bounds=(0.0, 1000.0),
    ),
    Spec(
        "ood.level",
        0.0,
        "flag out_of_distribution when the mixer's ood_p_value <= this (in-distribution frames are flagged with "
        "probability <= level); in [0, 1), 0 = off",
        bounds=(0.0, 1.0),
    ),
    Spec(
        "shift.alarms_per_hour",
        0.0,
        "per-camera test of the shift_p_value and input_shift_p_value streams (half the rate each) against the "
        "calibration data: at most this many false "
        "distribution_shift alarms an hour on a clean camera at shift.rate_hz; 0 = off",
        bounds=(0.0, 1e6),
    ),
    Spec(
        "shift.rate_hz",
        30.0,
        "camera rate (frames per second) the false-alarm rate is stated for",
        bounds=(0.001, 10000.0),
    ),
    Spec("shift.lam", 0.5, "bet of the shift detector: f(p) = 1 + lam (1 - 2p), in (0, 1)", bounds=(0.0, 1.0)),
)

DEMO_CAMERA = (
    Spec(
        "source",
        "fashion_mnist_test",
        "fashion_mnist_test (the shipped test split) | a folder of images "
        "(torchvision ImageFolder layout: one subfolder per class) | an .mcap recording of sensor_msgs/Image",
    ),
    Spec("rate", 10.0, "frames per second", bounds=(0.01, 10000.0)),
    Spec(
        "encoding",
        "",
        "encoding of the published images (mono8, rgb8, bgr8, rgba8, bgra8, mono16, 32FC1); \"\" = mono8 for grey "
        "frames, rgb8 for colour ones",
    ),
    Spec("frame_id", "demo_camera", "header.frame_id of the published images"),
    Spec("loop", True, "start again at the end of the source"),
    Spec("limit", 0, "stop after this many frames; 0 = no limit", bounds=(0, 2**31 - 1)),
    Spec(
        "shuffle_seed",
        0,
        "order of the shipped test images: -1 = file order, else a seeded permutation",
        bounds=(-1, 2**31 - 1),
    ),
    Spec("mcap_topic", "", "topic to replay from an .mcap source; empty = the first sensor_msgs/msg/Image topic"),
    Spec(
        "labels",
        [],
        "class names, index = class id (the ground truth's label_id); [] = the source's own: Fashion-MNIST's for "
        "the shipped split, the sorted subfolder names for a folder (torchvision ImageFolder)",
        list_of=str,
    ),
)


def descriptor_for(spec: Spec, reconfigurable: bool = False):
    """ParameterDescriptor with description, read_only and a range or choices constraint.

    read_only: neither dynamic nor (reconfigurable and not startup)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    read_only = not spec.dynamic and (spec.startup or not reconfigurable)
    descriptor = ParameterDescriptor(
        description=spec.description, read_only=read_only, dynamic_typing=spec.list_of is not None
    )
    if spec.bounds is not None:
        low, high = spec.bounds
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
        else:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
    if spec.choices is not None:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    return descriptor


def alpha_problem(value) -> str | None:
    """Why `value` is not a valid alpha (a finite double in [0, 1]), or None: the mixer's one check of alpha,
    at declaration and in its set-parameters callback."""
    if not isinstance(value, float):
        return f"alpha must be a double in [0, 1], got {type(value).__name__} {value!r}"
    if not math.isfinite(value):
        return f"alpha must be finite, got {value}"
    if not 0.0 <= value <= 1.0:
        return f"alpha must be in [0, 1], got {value}"
    return None


def problem(spec: Spec, value) -> str | None:
    """Why `value` is not acceptable for `spec` (a choice it does not offer, a non-finite float), or None.
    Types and ranges are checked by rclpy against the descriptor."""
    if spec.list_of is not None:
        return _list_problem(spec, value)
    if spec.choices is not None and value not in spec.choices:
        return f"parameter {spec.name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"parameter {spec.name} must be finite, got {value!r}"
    return None


def _list_problem(spec: Spec, value) -> str | None:
    """Why `value` is not a list of spec.list_of (ints for floats too; finite numbers), or None. None and []
    (a parameter file's `[]` reads as not set) are "not given"."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else None
    kinds = (int, float) if spec.list_of is float else (spec.list_of,)
    if items is None or any(isinstance(v, bool) or not isinstance(v, kinds) for v in items):
        return f"parameter {spec.name} must be a list of {spec.list_of.__name__}, got {value!r}"
    if spec.list_of is float and not all(math.isfinite(v) for v in items):
        return f"parameter {spec.name} must hold finite numbers, got {items}"
    return None


def refuse_renamed(overrides: dict, renamed: dict) -> None:
    """ValueError "parameter <old> was renamed <new>" when `overrides` ({name: value}: the node's params file
    and parameter overrides, which rclpy ignores for undeclared names) holds an old name of `renamed`."""
    for old, new in renamed.items():
        if old in overrides:
            raise ValueError(f"parameter {old} was renamed {new}")


def declare(node, specs, reconfigurable: bool = False) -> None:
    """Declare every spec on `node` (overrides from --params-file / parameter_overrides apply)."""
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, descriptor_for(spec, reconfigurable))


def read(node, specs) -> dict:
    """{name: value} of the declared specs; ValueError naming the first unacceptable value (`problem`)."""
    values = {}
    for spec in specs:
        value = node.get_parameter(spec.name).value
        reason = problem(spec, value)
        if reason:
            raise ValueError(reason)
        if spec.list_of is not None and value is None:
            value = []
        values[spec.name] = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
    return values


def declare_and_read(node, specs) -> dict:
    """`declare`, then `read`: what the plain (unmanaged) nodes do once, at startup."""
    declare(node, specs)
    return read(node, specs)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"smoothing": {"sigma": 1}} -> {"smoothing.sigma": 1}: the names ROS reads from a nested parameter file."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def defaults(specs) -> dict:
    """{name: default} of a table (what config/mixer.yaml must list)."""
    return {spec.name: spec.default for spec in specs}


def shipped_mixture() -> tuple[float, float]:
    """(alpha, robust_logit_scale) the mixer starts with: the calibrated default mixture."""
    mixer = defaults(MIXER)
    return mixer["alpha"], mixer["robust_logit_scale"]
