"""One frame through the mixed classifier and its certificate: torch in, plain numbers out.

No ROS here, so it is tested with plain torch. The node feeds it (1, C, H, W) tensors and turns
the `FrameResult` into a MixedClassification message.

Certification (parameter `certification`):
- "none": g and h are each run once; p_mix = (1 - alpha) softmax(g) + alpha softmax(h); radius 0.
- "smoothing" / "lipschitz": h is the Gaussian smoothing of the robust model (sigma). g runs once;
  h's probabilities are the Monte Carlo estimate from `SmoothedClassifier.certify`, which also bounds
  them (Clopper-Pearson or empirical Bernstein, Bonferroni over classes, selection samples apart from
  estimation samples) and turns the bounds into Theorem 5 (smoothing) or Theorem 4 with
  Lip = sqrt(2/pi)/sigma (lipschitz) l2 radii. A frame is published as certified only when the core
  certified it (bounds separate, alpha > 1/2) AND the certified class equals the published mixed
  class; the certificate then holds with probability >= 1 - delta. Otherwise radius 0, no certificate.
"""

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mix_perception.core.certify import top_two_margin
from mix_perception.core.mixing import check_alpha, mix_logits
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings

# Same values as the constants of mix_perception/msg/MixedClassification.
CERTIFICATE_NONE = 0
CERTIFICATE_LIPSCHITZ = 1
CERTIFICATE_SMOOTHING = 2

METHODS = ("none", "lipschitz", "smoothing")


@dataclass(frozen=True)
class Certification:
    """How frames are certified: `method` (METHODS), the smoothing of h (`smoothing`, used unless the
    method is "none") and the seed of the noise generator (None: fresh entropy)."""

    method: str = "smoothing"
    smoothing: SmoothingSettings = field(default_factory=SmoothingSettings)
    seed: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"certification must be one of {', '.join(METHODS)}, got {self.method!r}")


class FrameResult(NamedTuple):
    """Everything a MixedClassification carries about one frame (probabilities: float32 (C,))."""

    class_id: int
    probabilities: np.ndarray
    alpha: float
    robust_class_id: int
    robust_margin: float
    certified_radius: float
    certificate: int
    norm: str
    certified: bool
    confidence: float
    inference_ms: float


class Published(NamedTuple):
    """The certificate fields of a MixedClassification."""

    radius: float
    kind: int
    norm: str
    certified: bool
    confidence: float


NO_CERTIFICATE = Published(0.0, CERTIFICATE_NONE, "", False, 0.0)


def publishable_certificate(
    core_certified: bool, certified_class: int, radius: float, class_id: int, alpha: float, certification
) -> Published:
    """What may be published for one frame, given the core's certify result for it.

    Certified only when the core certified (its bounds separate; it never does for alpha <= 1/2),
    alpha > 1/2, the radius is positive and finite, and the class the certificate is about equals the
    published mixed class `class_id`. Otherwise nothing (radius 0, CERTIFICATE_NONE).
    """
    if not (core_certified and alpha > 0.5 and certified_class == class_id and 0.0 < radius < math.inf):
        return NO_CERTIFICATE
    kind = CERTIFICATE_SMOOTHING if certification.method == "smoothing" else CERTIFICATE_LIPSCHITZ
    return Published(float32_at_most(radius), kind, "l2", True, 1.0 - certification.smoothing.delta)


def float32_at_most(value: float) -> float:
    """The largest float32 <= value: the message field is float32, and rounding to nearest could
    publish a radius larger than the one certified."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


class FrameClassifier:
    """g (standard) and h (robust) on one device, classifying one frame at a time with a given alpha.

    Not thread-safe: one worker thread calls `classify`. Models are put in eval mode.
    """

    def __init__(self, standard: nn.Module, robust: nn.Module, certification: Certification, device="cpu"):
        self.device = torch.device(device)
        self.standard = standard.to(self.device).eval()
        self.robust = robust.to(self.device).eval()
        self.certification = certification
        self.smoothed = None
        self.generator = None
        if certification.method != "none":
            self.smoothed = SmoothedClassifier(self.robust, certification.smoothing, certification.seed)
            self.generator = self.smoothed.make_generator(self.device)

    @torch.no_grad()
    def classify(self, x: torch.Tensor, alpha: float) -> FrameResult:
        """Classify one input x (1, C, H, W) with mixing weight alpha in [0, 1]."""
        alpha = check_alpha(alpha)
        start = time.perf_counter()
        standard_logits = self.standard(x)
        if self.smoothed is None:
            robust_logits = self.robust(x)
            certificate = None
        else:
            certificate = self.smoothed.certify(x, alpha, self.generator, self.certification.method)
            robust_logits = certificate.robust_probs.to(standard_logits.dtype).log()  # -inf for 0 is fine
        mixed = mix_logits(standard_logits, robust_logits, alpha)
        probs = torch.softmax(mixed, dim=-1)[0].float().cpu()
        robust_probs = torch.softmax(robust_logits, dim=-1)[0].float().cpu()
        inference_ms = (time.perf_counter() - start) * 1000.0
        class_id = int(probs.argmax())
        published = NO_CERTIFICATE
        if certificate is not None:
            published = publishable_certificate(
                bool(certificate.certified[0]),
                int(certificate.prediction[0]),
                float(certificate.radius[0]),
                class_id,
                alpha,
                self.certification,
            )
        return FrameResult(
            class_id=class_id,
            probabilities=probs.numpy(),
            alpha=alpha,
            robust_class_id=int(robust_probs.argmax()),
            robust_margin=float(top_two_margin(robust_probs)),
            certified_radius=published.radius,
            certificate=published.kind,
            norm=published.norm,
            certified=published.certified,
            confidence=published.confidence,
            inference_ms=inference_ms,
        )
