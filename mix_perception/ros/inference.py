"""A batch of frames (one per camera) through the mixed classifier and its certificate: torch in,
plain numbers out.

No ROS here, so it is tested with plain torch. The node feeds it (N, C, H, W) tensors and turns each
`FrameResult` into a MixedClassification message.

Certification (parameter `certification`); g runs once per batch in every case:
- "none": h runs once; p_mix = (1 - alpha) softmax(g) + alpha softmax(s z_h), s the logit scale; radius 0.
- "lipschitz": h is a network with a proven l2 Lipschitz constant on its logits (core.lipschitz,
  computed once); h runs once, and the radius of core.certify.lipschitz_logit_radius (Lemma 2 from
  h's logit margins, with h's logit scale s) holds with probability 1 — deterministic.
- "smoothing" / "smoothing_theorem4": h is the Gaussian smoothing of the robust model (sigma), its
  probabilities the Monte Carlo estimate. "smoothing" with `sequential` certifies at the required
  radius with early stopping (core.sequential); otherwise a fixed n (SmoothedClassifier.certify:
  Clopper-Pearson or empirical Bernstein, Bonferroni over classes, selection samples apart from
  estimation samples) gives Theorem 5 ("smoothing") or Theorem 4 with Lip = sqrt(2/pi)/sigma
  ("smoothing_theorem4") radii, which hold with probability >= 1 - delta.
A frame is published as certified only when the certifier certified a class (radius > 0), that class
is the published mixed class, and alpha > 1/2. Otherwise radius 0, no certificate. Every certifier's
radius is about the model's input; with each frame's core.preprocessing_bounds.FrameBound (from the
FrameConverter) the published radius is the one it implies in the frame's own [0, 1] pixels. s (robust_logit_scale)
sharpens h's logits for "none" and "lipschitz" (whose constant scales with it); the smoothing
certificates are about h itself, so they need s = 1.

Out-of-distribution score (mixer parameter `ood_model`, core.ood.OODModel): the Mahalanobis score of h's
penultimate features (the input of its last nn.Linear) and its conformal p-value, per frame. The
features come from the forward of h the certifier runs anyway ("none"; "lipschitz": its float64 copy
of h); the smoothing certifiers run h only on noisy copies, so for them h's base network runs once
more, on the clean batch. With the model also the two conformal p-values the monitor's stream-shift test
watches: of g's energy, and of the distance of the frame's low-level statistics (core.frame_statistics, on
the model input x). Without a model: score 0, p-values 1 ("no evidence against in-distribution").
"""

import copy
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mix_perception.core.certify import lipschitz_logit_radius, top_two_margin
from mix_perception.core.fingerprint import PipelineFingerprint
from mix_perception.core.lipschitz import lipschitz_constants
from mix_perception.core.models import for_inference
from mix_perception.core.names import CERTIFICATION_METHODS
from mix_perception.core.ood import OODModel, last_linear, penultimate_features
from mix_perception.core.preprocessing_bounds import frame_radii
from mix_perception.core.sequential import SequentialPlan, certify_sequential
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings

# Same values as the constants of mix_perception/msg/MixedClassification.
CERTIFICATE_NONE = 0
CERTIFICATE_LIPSCHITZ = 1
CERTIFICATE_SMOOTHING = 2
NO_OOD = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)  # without an OOD model: score 0, p-values 1


@dataclass(frozen=True)
class Certification:
    """How frames are certified: `method` (CERTIFICATION_METHODS); h's logit scale s (logits x s before the softmax:
    methods "none" and "lipschitz"); the smoothing of h (`smoothing`, methods "smoothing*"), whether it
    certifies sequentially at the required radius (`sequential`: method "smoothing", votes mode) and
    the seed of its noise generator (None: fresh entropy). ValueError for an inconsistent combination."""

    method: str = "smoothing"
    logit_scale: float = 1.0
    smoothing: SmoothingSettings = field(default_factory=SmoothingSettings)
    sequential: bool = False
    seed: int | None = None

    def __post_init__(self):
        if self.method not in CERTIFICATION_METHODS:
            choices = ", ".join(CERTIFICATION_METHODS)
            raise ValueError(f"certification must be one of {choices}, got {self.method!r}")
        if self.logit_scale != 1.0 and self.method.startswith("smoothing"):
            raise ValueError(
                f"robust_logit_scale {self.logit_scale} needs certification none or lipschitz (got {self.method}): "
                "the smoothing certificates hold for h itself, not for a scaled h: set robust_logit_scale 1.0"
            )
        if self.method == "smoothing" and self.sequential and self.smoothing.mode != "votes":
            raise ValueError(
                "smoothing.sequential counts votes: set smoothing.mode votes, or smoothing.sequential false"
            )

    @property
    def key(self) -> str:
        """What of this decides the published numbers (core.fingerprint): method and logit scale; for the
        smoothing certifiers also their settings (the seed too: it fixes the noise)."""
        if self.method in ("none", "lipschitz"):
            return f"{self.method} {self.logit_scale!r}"
        return repr(self)


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
    certificate_confidence: float
    samples: int
    inference_ms: float
    standard_class_id: int
    ood_score: float
    ood_p_value: float
    shift_p_value: float
    input_shift_p_value: float
    pipeline: str


class RobustOutput(NamedTuple):
    """What a certifier says about a batch of N frames (tensors on the model's device).

    robust_probs (N, C): h's probabilities that enter the mixture (for a smoothed h, the Monte Carlo
    estimate); certified_class (N,) int64: the class each certificate is about (-1: none); radius (N,)
    float64: the radius within which the mixture predicts that class (0: nothing certified); samples
    (N,) int64: noise samples drawn per frame; features (N, D): h's penultimate features of the clean
    frames when asked for, else None.
    """

    robust_probs: torch.Tensor
    certified_class: torch.Tensor
    radius: torch.Tensor
    samples: torch.Tensor
    features: torch.Tensor | None = None


class Forward:
    """Forwards of one model: (logits, penultimate features (N, D) or None) of x. Its last nn.Linear is looked up
    at the first forward that needs the features, not at every batch (a walk over the modules: ~20 us)."""

    def __init__(self, model: nn.Module):
        self.model, self.last = model, None

    def __call__(self, x: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not features:
            return self.model(x), None
        if self.last is None:
            self.last = last_linear(self.model)
        captured, logits = penultimate_features(self.model, x, self.last)
        return logits, captured


class Uncertified:
    """h run once per batch, its logits x logit_scale; no certificate."""

    kind = CERTIFICATE_NONE

    def __init__(self, robust: nn.Module, logit_scale: float):
        self.robust, self.logit_scale = robust, logit_scale
        self.forward = Forward(robust)

    def __call__(self, x: torch.Tensor, alpha: float, required_radius: float, features: bool = False) -> RobustOutput:
        logits, captured = self.forward(x, features)
        probs = torch.softmax(self.logit_scale * logits, dim=-1)
        zeros = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        return RobustOutput(probs, zeros - 1, zeros.double(), zeros, captured)


class LipschitzCertifier:
    """h with a proven l2 constant L on its logits z (core.lipschitz, computed here once for inputs of
    `input_shape`; ValueError naming a layer it cannot bound), scaled by the logit scale s: one forward,
    p_h = softmax(s z), and the deterministic radius of core.certify.lipschitz_logit_radius, which holds
    for any g with probability 1 (the bound is exact arithmetic; z comes from a float64 copy of h, so
    rounding stays ~1e-15 relative)."""

    kind = CERTIFICATE_LIPSCHITZ

    def __init__(self, robust: nn.Module, logit_scale: float, input_shape):
        if input_shape is None:
            raise ValueError("certification lipschitz needs the model's input shape (input.size, input.channels)")
        # contiguous: float64 convolutions have no channels_last kernel (for_inference's layout for float32),
        # and converting layouts at every layer made h's forward ~30% slower
        self.robust = copy.deepcopy(robust).double().to(memory_format=torch.contiguous_format)
        self.forward = Forward(self.robust)
        self.logit_scale = logit_scale
        self.constant, self.margin_constants = lipschitz_constants(robust, input_shape)

    def __call__(self, x: torch.Tensor, alpha: float, required_radius: float, features: bool = False) -> RobustOutput:
        logits, captured = self.forward(x.double(), features)
        radius = lipschitz_logit_radius(logits, alpha, self.constant, self.margin_constants, self.logit_scale)
        certified_class = logits.argmax(dim=-1).where(radius > 0, -1)
        samples = torch.zeros_like(certified_class)
        probs = torch.softmax(self.logit_scale * logits, dim=-1)
        return RobustOutput(probs, certified_class, radius, samples, captured)


class SmoothingCertifier:
    """h = Gaussian smoothing of the robust model, certified by `SmoothedClassifier.certify` (fixed n):
    Theorem 5 (method "smoothing") or Theorem 4 with Lip = sqrt(2/pi)/sigma ("smoothing_theorem4")."""

    kind = CERTIFICATE_SMOOTHING

    def __init__(self, robust: nn.Module, certification: Certification, device: torch.device):
        self.smoothed = SmoothedClassifier(robust, certification.smoothing, certification.seed)
        self.generator, self.forward = self.smoothed.make_generator(device), Forward(self.smoothed.base)
        self.method = certification.method
        self.samples = certification.smoothing.n_select + certification.smoothing.n_estimate

    def __call__(self, x: torch.Tensor, alpha: float, required_radius: float, features: bool = False) -> RobustOutput:
        certificate = self.smoothed.certify(x, alpha, self.generator, self.method)
        certified_class = certificate.prediction.where(certificate.certified, -1)
        samples = torch.full_like(certificate.prediction, self.samples)
        captured = self.forward(x, True)[1] if features else None  # one clean forward more
        return RobustOutput(certificate.robust_probs, certified_class, certificate.radius, samples, captured)


class SequentialCertifier:
    """h = Gaussian smoothing of the robust model, certified by `core.sequential.certify_sequential`:
    noise is drawn in looks until radius >= required_radius is decided for each frame (Theorem 5,
    votes). The plan is rebuilt only when alpha or the required radius changes. A frame
    that stops below the required radius keeps the smaller radius its bound gives (it holds too)."""

    kind = CERTIFICATE_SMOOTHING

    def __init__(self, robust: nn.Module, certification: Certification, device: torch.device):
        self.smoothed = SmoothedClassifier(robust, certification.smoothing, certification.seed)
        self.generator, self.forward = self.smoothed.make_generator(device), Forward(self.smoothed.base)
        self.plan = None

    def plan_for(self, alpha: float, required_radius: float):
        settings = self.smoothed.settings
        if self.plan is None or (self.plan.alpha, self.plan.required_radius) != (alpha, required_radius):
            self.plan = SequentialPlan(settings.sigma, alpha, required_radius, settings.delta, settings.n_max)
        return self.plan

    def __call__(self, x: torch.Tensor, alpha: float, required_radius: float, features: bool = False) -> RobustOutput:
        plan = self.plan_for(alpha, required_radius)
        certificate = certify_sequential(self.smoothed, x, plan, generator=self.generator)
        certified_class = certificate.prediction.where(certificate.radius > 0, -1)
        captured = self.forward(x, True)[1] if features else None  # one clean forward more
        return RobustOutput(
            certificate.robust_probs, certified_class, certificate.radius, certificate.samples, captured
        )


def float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each value: the message field is float32, and rounding to nearest could
    publish a radius larger than the one certified."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    return np.where(above, np.nextafter(rounded, np.float32(-np.inf)), rounded)


def model_radius(required_radius: float, frame_bounds) -> float:
    """The radius on the model input that `required_radius` in the frames' pixels needs: the largest over the
    batch's bounded frames (the required radius itself without frame bounds or without a bounded frame)."""
    needed = [bound.model_radius(required_radius) for bound in frame_bounds or () if not bound.reason]
    return max(needed, default=required_radius)


def check_ood_model(ood: OODModel, robust: nn.Module, input_shape, device) -> None:
    """ValueError (one line) unless `ood` fits h: h ends in an nn.Linear, and one forward of a blank frame of
    input_shape (C, H, W) gives the classes and feature width the OOD model was fitted for."""
    if input_shape is None:
        raise ValueError("ood_model needs the model's input shape (input.size, input.channels)")
    if not any(isinstance(module, nn.Linear) for module in robust.modules()):
        raise ValueError("ood_model needs a robust model with an nn.Linear layer (its input is h's feature vector)")
    with torch.no_grad():
        features, logits = penultimate_features(robust, torch.zeros(1, *input_shape, device=device))
    ood.check(logits.shape[1], features.shape[1])


class FrameClassifier:
    """g (standard) and h (robust) on one device, classifying a batch of frames with a given alpha.

    Not thread-safe: one worker thread calls `classify`. Models are put in eval mode.
    """

    def __init__(
        self,
        standard: nn.Module,
        robust: nn.Module,
        certification: Certification,
        device="cpu",
        input_shape=None,
        ood: OODModel | None = None,
    ):
        """input_shape (C, H, W): the model input, for the proven constant of a Lipschitz h and the check of
        `ood` (the OOD model of h's features, or None: no OOD score)."""
        self.device = torch.device(device)
        self.standard = for_inference(standard, self.device)
        self.robust = for_inference(robust, self.device)
        self.certification = certification
        self.confidence = 1.0 - certification.smoothing.delta
        if certification.method == "none":
            self.certifier = Uncertified(self.robust, certification.logit_scale)
            self.confidence = 0.0
        elif certification.method == "lipschitz":
            self.certifier = LipschitzCertifier(self.robust, certification.logit_scale, input_shape)
            self.confidence = 1.0
        elif certification.method == "smoothing" and certification.sequential:
            self.certifier = SequentialCertifier(self.robust, certification, self.device)
        else:
            self.certifier = SmoothingCertifier(self.robust, certification, self.device)
        if ood is not None:
            check_ood_model(ood, self.robust, input_shape, self.device)
        self.ood = None if ood is None else ood.to(self.device)
        self.no_ood = NO_OOD.to(self.device)  # the OOD columns without a model, on the device once
        self.fingerprint = PipelineFingerprint(standard, robust, input_shape or (), certification.key)

    @property
    def lipschitz_constant(self) -> float | None:
        """The proven l2 constant of h's logits (certification lipschitz), else None."""
        return getattr(self.certifier, "constant", None)

    @torch.no_grad()
    def classify(
        self, x: torch.Tensor, alpha: float, required_radius: float = 0.0, frame_bounds=None
    ) -> list[FrameResult]:
        """Classify a batch x (N, C, H, W) with mixing weight alpha, a float in [0, 1] (checked once, where
        it enters: the node's alpha parameter); one FrameResult per frame.
        `frame_bounds`: one core.preprocessing_bounds.FrameBound per frame, the radii are then in each frame's
        own pixels; None: on x itself. `required_radius` (l2, in the same space): where sequential
        certification stops (with frame bounds: at the largest model radius a frame of the batch needs).

        p_mix = (1 - alpha) softmax(g(x)) + alpha h(x), with h's probabilities from the certifier. A
        frame is certified only when the certifier certified a class (its radius > 0 and finite), that
        class is the mixed prediction, and alpha > 1/2. With an OOD model: h's features' score and p-value.
        One host transfer for the whole batch.
        """
        start = time.perf_counter()
        standard_logits = self.standard(x)
        standard_probs = torch.softmax(standard_logits, dim=-1)
        robust = self.certifier(x, alpha, model_radius(required_radius, frame_bounds), features=self.ood is not None)
        probs = (1.0 - alpha) * standard_probs + alpha * robust.robust_probs.to(standard_probs.dtype)
        if self.ood is None:
            ood_columns = self.no_ood.expand(probs.shape[0], 4)
        else:
            ood_columns = self.ood.per_frame(robust.features, standard_logits, x).T
        columns = (robust.certified_class, robust.radius, robust.samples, top_two_margin(robust.robust_probs))
        columns = torch.stack((*columns, standard_probs.argmax(dim=-1)), 1)
        # one host transfer; float64 keeps the radius exact
        packed = torch.cat((probs, robust.robust_probs, columns, ood_columns), 1).double().cpu().numpy()
        inference_ms = (time.perf_counter() - start) * 1000.0
        classes = probs.shape[1]
        mixed, robust_probs = packed[:, :classes], packed[:, classes : 2 * classes]
        certified_class, radius, samples, margin = (packed[:, 2 * classes + i] for i in range(4))
        standard_class, ood_score, p_value, shift_p, input_p = (packed[:, -5 + i] for i in range(5))
        class_id = mixed.argmax(axis=1)
        if frame_bounds is not None:
            radius = frame_radii(radius, frame_bounds)
        certified = (certified_class == class_id) & (radius > 0) & np.isfinite(radius) & (alpha > 0.5)
        published = np.where(certified, float32_at_most(np.where(certified, radius, 0.0)), 0.0)
        kind, pipeline = self.certifier.kind, self.fingerprint.for_alpha(alpha)
        return [
            FrameResult(
                class_id=int(class_id[i]),
                probabilities=mixed[i].astype(np.float32),
                alpha=alpha,
                robust_class_id=int(robust_probs[i].argmax()),
                robust_margin=float(margin[i]),
                certified_radius=float(published[i]),
                certificate=kind if certified[i] else CERTIFICATE_NONE,
                norm="l2" if certified[i] else "",
                certified=bool(certified[i]),
                certificate_confidence=self.confidence if certified[i] else 0.0,
                samples=int(samples[i]),
                inference_ms=inference_ms,
                standard_class_id=int(standard_class[i]),
                ood_score=float(ood_score[i]),
                ood_p_value=float(p_value[i]),
                shift_p_value=float(shift_p[i]),
                input_shift_p_value=float(input_p[i]),
                pipeline=pipeline,
            )
            for i in range(len(class_id))
        ]
