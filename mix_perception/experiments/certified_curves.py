"""Certified accuracy against l2 radius of the mixture of g and a Gaussian-smoothed h, and of h alone at
equal clean accuracy: the paper's Figure 3 (Bai, Anderson, Sojoudi), with confidence bounds; and the
same for a Lipschitz h (deterministic certificates) over alphas and logit scales.

Models are nn.Modules on [0, 1] pixels returning logits (N, C); data x (N, C, H, W), y (N,) int64;
every alpha in [0, 1] (validated by the caller).
"""

import copy
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mix_perception.core.certify import lipschitz_logit_radius
from mix_perception.core.lipschitz import lipschitz_constants
from mix_perception.core.names import SMOOTHING_METHODS
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings, radius_from_bounds
from mix_perception.experiments.batches import DEFAULT_RUN, RunSettings, accuracy, log_probs, progress_bar, slices


class Bounds(NamedTuple):
    """Confidence bounds on the smoothed h of `smoothing_bounds`, per image.

    prediction (N,) int64 h's class y (selection samples); p_top_lower (N,) and p_runner_upper (N,)
    float64, jointly valid with probability >= 1 - delta (SmoothedClassifier.certify); robust_probs
    (N, C) the estimate of h(x); sigma the noise level.
    """

    prediction: torch.Tensor
    p_top_lower: torch.Tensor
    p_runner_upper: torch.Tensor
    robust_probs: torch.Tensor
    sigma: float


def smoothing_bounds(
    base: nn.Module, x: torch.Tensor, settings: SmoothingSettings, run: RunSettings = DEFAULT_RUN, chunk: int = 100
) -> Bounds:
    """Bounds of `SmoothedClassifier(base, settings).certify` for every image of x, `chunk` images at a time.

    The bounds do not depend on alpha or on the radius formula, so one pass serves every alpha and
    both certificates (`certified_radius`). Chunk k uses a generator seeded with run.seed + k.
    """
    device = torch.device(run.device)
    smoothed = SmoothedClassifier(base.to(device).eval(), settings)
    fields = [[], [], [], []]
    with progress_bar(len(x), f"smoothing sigma={settings.sigma:g}", run.progress) as bar:
        for k, part in enumerate(slices(len(x), chunk)):
            generator = torch.Generator(device=device).manual_seed(int(run.seed) + k)
            cert = smoothed.certify(x[part].to(device), 1.0, generator=generator)
            for store, value in zip(
                fields, (cert.prediction, cert.p_top_lower, cert.p_runner_upper, cert.robust_probs), strict=True
            ):
                store.append(value.cpu())
            bar.update(part.stop - part.start)
    return Bounds(*(torch.cat(f) for f in fields), float(settings.sigma))


def certified_radius(bounds: Bounds, alpha: float, method: str = "smoothing") -> torch.Tensor:
    """Certified l2 radius (N,) float64 of the mixture at `alpha` from the bounds (0 = not certified):
    Theorem 5 ("smoothing") or 4 ("smoothing_theorem4"), as SmoothedClassifier.certify(x, alpha, method=...)
    returns it with the same noise (core.smoothing.radius_from_bounds)."""
    return radius_from_bounds(bounds.p_top_lower, bounds.p_runner_upper, alpha, bounds.sigma, method)


def certified_curve(correct: torch.Tensor, radius: torch.Tensor, radii: Sequence[float]) -> list[float]:
    """Certified accuracy at each r of `radii`: fraction of images with correct & radius > 0 & radius >= r.

    Non-increasing in r by construction (the set shrinks as r grows).
    """
    certified = correct.cpu() & (radius.cpu() > 0)
    return [accuracy(certified & (radius.cpu() >= r)) for r in radii]


def smoothed_mixture_predictions(standard_probs: torch.Tensor, bounds: Bounds, alpha: float) -> torch.Tensor:
    """Clean prediction (N,) of the mixture with the Monte Carlo estimate of h: argmax((1-a) g + a h_hat)."""
    return ((1.0 - alpha) * standard_probs.double() + alpha * bounds.robust_probs.double()).argmax(-1)


def mixture_certified_correct(standard_probs, bounds: Bounds, y, alpha) -> torch.Tensor:
    """Images (N,) bool that count as correct for the mixture's certificate: h's certified class is the
    label AND the mixture (with the estimate of h) predicts the label, as the mixer node publishes."""
    y = y.cpu()
    return (bounds.prediction == y) & (smoothed_mixture_predictions(standard_probs, bounds, alpha) == y)


class Outcome(NamedTuple):
    """Per image (N,) bool, for one mixture at one radius r: `clean`, the mixture is right on the clean
    image; `certified`, it is certified right at r (h's certified class is the label, the mixture
    predicts the label, and the radius is >= r and > 0)."""

    clean: torch.Tensor
    certified: torch.Tensor


def smoothing_outcome(standard_probs, bounds: Bounds, y, alpha: float, method: str, radius: float) -> Outcome:
    """The Outcome of the mixture of g (clean probabilities (N, C)) and the smoothed h of `bounds`."""
    y = y.cpu()
    radii = certified_radius(bounds, alpha, method)
    certified = mixture_certified_correct(standard_probs, bounds, y, alpha) & (radii > 0) & (radii >= radius)
    return Outcome(smoothed_mixture_predictions(standard_probs, bounds, alpha) == y, certified)


def match_clean_accuracy(target: float, candidates: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(sigma, clean accuracy) of h alone to compare with a mixture of clean accuracy `target`.

    candidates: (sigma', clean accuracy of the smoothed h at sigma'). Picks the LARGEST sigma' whose
    clean accuracy reaches the target (the most robust h alone that is at least as accurate as the
    mixture); when none reaches it, the most accurate one (the comparison then favours the mixture
    less than equal accuracy would; the clean accuracies are reported next to the curves).
    """
    if not candidates:
        raise ValueError("no candidate sigmas to match")
    reaching = [c for c in candidates if c[1] >= target - 1e-12]
    if reaching:
        return max(reaching, key=lambda c: c[0])
    return max(candidates, key=lambda c: (c[1], c[0]))


def matched_bounds(
    smoothing_base: nn.Module, x: torch.Tensor, settings: SmoothingSettings, match_sigmas=(), run=DEFAULT_RUN
) -> list[Bounds]:
    """Bounds of the smoothed h at settings.sigma, then at every other sigma' of `match_sigmas`: the same
    base model smoothed with a test-time noise sigma' (no retraining) for h alone at equal clean
    accuracy (`smoothing_curves`). Pass k draws its noise from seeds run.seed + 1_000_003 k + chunk."""
    sigma = float(settings.sigma)
    sigmas = [sigma] + [float(s) for s in match_sigmas if abs(float(s) - sigma) > 1e-12]
    return [
        smoothing_bounds(
            smoothing_base,
            x,
            dataclasses.replace(settings, sigma=s),
            dataclasses.replace(run, seed=run.seed + 1_000_003 * k),
        )
        for k, s in enumerate(sigmas)
    ]


def smoothing_curves(
    standard_probs: torch.Tensor,
    all_bounds: Sequence[Bounds],
    y: torch.Tensor,
    alphas: Sequence[float],
    method: str,
    radii: Sequence[float],
    settings: SmoothingSettings,
) -> dict:
    """Certified accuracy against l2 radius of the mixture of g and the smoothed h (Figure 3).

    g's clean probabilities (N, C); all_bounds from `matched_bounds` (the first at settings.sigma: h;
    the others: h alone at smaller sigma'). h's certificates come with confidence bounds
    (SmoothedClassifier.certify: Clopper-Pearson or empirical Bernstein, Bonferroni over classes,
    selection samples apart from estimation samples); `method` is Theorem 5 ("smoothing") or
    Theorem 4 with Lip = sqrt(2/pi)/sigma ("smoothing_theorem4"). Every certificate holds with
    probability >= 1 - delta per image. Mixture curves only exist for alpha > 1/2 (zero otherwise).

    h alone at equal clean accuracy: mixing raises clean accuracy above the smoothed h's, so for each
    alpha the curve of h alone at the largest sigma' whose clean accuracy reaches the mixture's is
    reported (`match_clean_accuracy`). Clean accuracy = the argmax of the Monte Carlo estimate (no
    abstention), for both.

    Returns a JSON-ready dict (schema: docs/evaluation.md, results.json).
    """
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"certification method must be one of {', '.join(SMOOTHING_METHODS)}, got {method!r}")
    radii = [float(r) for r in radii]
    y = y.cpu()
    robust_alone = [
        {
            "sigma": bounds.sigma,
            "clean_accuracy": accuracy(bounds.robust_probs.argmax(-1) == y),
            "curve": certified_curve(bounds.prediction == y, certified_radius(bounds, 1.0, method), radii),
        }
        for bounds in all_bounds
    ]
    own = all_bounds[0]
    mixtures = []
    for a in alphas:
        correct = mixture_certified_correct(standard_probs, own, y, a)
        clean = accuracy(smoothed_mixture_predictions(standard_probs, own, a) == y)
        match_sigma, _ = match_clean_accuracy(clean, [(r["sigma"], r["clean_accuracy"]) for r in robust_alone])
        matched = next(r for r in robust_alone if r["sigma"] == match_sigma)
        curve = certified_curve(correct, certified_radius(own, a, method), radii)
        mixtures.append({"alpha": float(a), "clean_accuracy": clean, "curve": curve, "matched_robust": dict(matched)})
    return {
        "method": method,
        "norm": "l2",
        "sigma": own.sigma,
        "n_select": settings.n_select,
        "n_estimate": settings.n_estimate,
        "delta": settings.delta,
        "mode": settings.mode,
        "images": int(len(y)),
        "radii": radii,
        "robust_alone": robust_alone,
        "mixture": mixtures,
    }


class LipschitzLogits(NamedTuple):
    """A Lipschitz h on a data set: its logits (N, C) float64 (from a float64 copy of h) and its proven
    constants (core.lipschitz): `constant` L for the logits, `margin_constants` (C, C) for their differences."""

    logits: torch.Tensor
    constant: float
    margin_constants: torch.Tensor


def lipschitz_logits(model: nn.Module, x: torch.Tensor, run: RunSettings = DEFAULT_RUN) -> LipschitzLogits:
    """h's float64 logits on x and its constants for inputs of x's shape; ValueError for a layer it cannot bound."""
    model = model.to(run.device).eval()
    shape = tuple(x.shape[1:])
    constant, margin_constants = lipschitz_constants(model, shape)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        z = torch.cat([model64(x[part].to(run.device).double()).cpu() for part in slices(len(x), run.batch_size)])
    return LipschitzLogits(z, constant, margin_constants)


def lipschitz_radius(h: LipschitzLogits, alpha: float, logit_scale: float = 1.0) -> torch.Tensor:
    """Deterministic radius (N,) of the mixture with h's probabilities softmax(logit_scale z), alpha (any g)."""
    return lipschitz_logit_radius(h.logits, alpha, h.constant, h.margin_constants, logit_scale)


def lipschitz_outcome(
    standard_probs, h: LipschitzLogits, y, alpha: float, logit_scale: float, radius: float
) -> Outcome:
    """The Outcome of the mixture of g (clean probabilities (N, C)) and the Lipschitz h, its logits x logit_scale."""
    y = y.cpu()
    robust_probs = torch.softmax(logit_scale * h.logits, dim=-1)
    clean = ((1.0 - alpha) * standard_probs.double() + alpha * robust_probs).argmax(-1) == y
    radii = lipschitz_radius(h, alpha, logit_scale)
    return Outcome(clean, clean & (h.logits.argmax(-1) == y) & (radii > 0) & (radii >= radius))


def lipschitz_curves(
    standard: nn.Module,
    lipschitz_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    logit_scales: Sequence[float],
    radii: Sequence[float],
    run: RunSettings = DEFAULT_RUN,
) -> dict:
    """Deterministic certified accuracy against l2 radius of the mixture of g and a Lipschitz h, and of h
    alone (the paper's Figure 3 with a real Lipschitz model).

    h's logits z have the proven constants of core.lipschitz (for inputs of x's shape); for every
    logit scale T (h's probabilities softmax(T z)) and alpha, an image counts at radius r when h's class
    is the label, the mixture predicts the label, and core.certify.lipschitz_logit_radius >= r and > 0;
    these certificates hold with probability 1. h alone is alpha 1 (where T cancels). h alone has one
    clean accuracy, with no test-time knob like the smoothing's sigma', so it is shown as it is.

    Returns a JSON-ready dict: method "lipschitz", norm "l2", lipschitz_constant, radii, images,
    robust_alone [{clean_accuracy, curve}], mixture [{alpha, logit_scale, clean_accuracy, curve}].
    """
    radii = [float(r) for r in radii]
    h = lipschitz_logits(lipschitz_model, x, run)
    standard_probs = log_probs(standard.to(run.device).eval(), x, run).exp()
    y = y.cpu()
    robust_right = h.logits.argmax(-1) == y
    mixtures = []
    for scale in map(float, logit_scales):
        for a in map(float, alphas):
            clean = lipschitz_outcome(standard_probs, h, y, a, scale, 0.0).clean
            curve = certified_curve(clean & robust_right, lipschitz_radius(h, a, scale), radii)
            mixtures.append({"alpha": a, "logit_scale": scale, "clean_accuracy": accuracy(clean), "curve": curve})
    own_radius = lipschitz_radius(h, 1.0)
    alone = {"clean_accuracy": accuracy(robust_right), "curve": certified_curve(robust_right, own_radius, radii)}
    return {
        "method": "lipschitz",
        "norm": "l2",
        "lipschitz_constant": h.constant,
        "images": int(len(x)),
        "radii": radii,
        "robust_alone": [alone],
        "mixture": mixtures,
    }
