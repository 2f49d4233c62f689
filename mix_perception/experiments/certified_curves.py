"""Certified accuracy against l2 radius of the mixture of g and a Gaussian-smoothed h, and of h alone at
equal clean accuracy: the paper's Figure 3 (Bai, Anderson, Sojoudi), with confidence bounds.

Models are nn.Modules on [0, 1] pixels returning logits (N, C); data x (N, C, H, W), y (N,) int64.
"""

import copy
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mix_perception.core.mixing import check_alpha
from mix_perception.core.smoothing import METHODS, SmoothedClassifier, SmoothingSettings, radius_from_bounds
from mix_perception.experiments.batches import accuracy, log_probs, progress_bar, slices


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
    base: nn.Module,
    x: torch.Tensor,
    settings: SmoothingSettings,
    chunk: int = 100,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> Bounds:
    """Bounds of `SmoothedClassifier(base, settings).certify` for every image of x, `chunk` images at a time.

    The bounds do not depend on alpha or on the radius formula, so one pass serves every alpha and
    both certificates (`certified_radius`). Chunk k uses a generator seeded with seed + k.
    """
    device = torch.device(device)
    smoothed = SmoothedClassifier(base.to(device).eval(), settings)
    fields = [[], [], [], []]
    with progress_bar(len(x), f"smoothing sigma={settings.sigma:g}", progress) as bar:
        for k, part in enumerate(slices(len(x), chunk)):
            generator = torch.Generator(device=device).manual_seed(int(seed) + k)
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
    return radius_from_bounds(bounds.p_top_lower, bounds.p_runner_upper, check_alpha(alpha), bounds.sigma, method)


def certified_curve(correct: torch.Tensor, radius: torch.Tensor, radii: Sequence[float]) -> list[float]:
    """Certified accuracy at each r of `radii`: fraction of images with correct & radius > 0 & radius >= r.

    Non-increasing in r by construction (the set shrinks as r grows).
    """
    certified = correct.cpu() & (radius.cpu() > 0)
    return [accuracy(certified & (radius.cpu() >= r)) for r in radii]


def smoothed_mixture_predictions(standard_probs: torch.Tensor, bounds: Bounds, alpha: float) -> torch.Tensor:
    """Clean prediction (N,) of the mixture with the Monte Carlo estimate of h: argmax((1-a) g + a h_hat)."""
    alpha = check_alpha(alpha)
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


def certified_curves(
    standard: nn.Module,
    smoothing_base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    methods: Sequence[str],
    settings: SmoothingSettings,
    radii: Sequence[float],
    match_sigmas: Sequence[float] = (),
    batch_size: int = 500,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> dict:
    """Certified accuracy against l2 radius of the mixture of g and the smoothed h (Figure 3).

    h is the Gaussian smoothing of `smoothing_base` by `settings`, certified with confidence bounds
    (SmoothedClassifier.certify: Clopper-Pearson or empirical Bernstein, Bonferroni over classes,
    selection samples apart from estimation samples); each of `methods` is Theorem 5
    ("smoothing") or Theorem 4 with Lip = sqrt(2/pi)/sigma ("smoothing_theorem4"), both from the same
    bounds. Every certificate holds with probability >= 1 - delta per image. Mixture curves only
    exist for alpha > 1/2 (zero otherwise).

    h alone at equal clean accuracy: mixing raises clean accuracy above the smoothed h's, so h
    alone is compared at the same clean accuracy by smoothing the same base model with a smaller
    test-time noise level sigma' (less noise: more accurate, smaller radii; no retraining): h alone
    is certified at every sigma' of `match_sigmas` (plus sigma), and for each alpha the curve of the
    largest sigma' whose clean accuracy reaches the mixture's is reported (`match_clean_accuracy`).
    Clean accuracy = the argmax of the Monte Carlo estimate (no abstention), for both.

    Returns {method: JSON-ready dict} (schema: docs/evaluation.md, results.json).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"certification methods must be among {', '.join(METHODS)}, got {list(methods)}")
    radii = [float(r) for r in radii]
    standard = standard.to(device).eval()
    standard_probs = log_probs(standard, x, batch_size, device).exp()
    y = y.cpu()
    sigma = settings.sigma
    sigmas = [float(sigma)] + [float(s) for s in match_sigmas if abs(float(s) - float(sigma)) > 1e-12]
    all_bounds = [
        smoothing_bounds(
            smoothing_base,
            x,
            dataclasses.replace(settings, sigma=s),
            device=device,
            seed=seed + 1_000_003 * index,
            progress=progress,
        )
        for index, s in enumerate(sigmas)
    ]
    results = {}
    for method in methods:
        robust_alone = [
            {
                "sigma": s,
                "clean_accuracy": accuracy(bounds.robust_probs.argmax(-1) == y),
                "curve": certified_curve(bounds.prediction == y, certified_radius(bounds, 1.0, method), radii),
            }
            for s, bounds in zip(sigmas, all_bounds, strict=True)
        ]
        own = all_bounds[0]
        mixtures = []
        for a in alphas:
            a = check_alpha(a)
            correct = mixture_certified_correct(standard_probs, own, y, a)
            clean = accuracy(smoothed_mixture_predictions(standard_probs, own, a) == y)
            match_sigma, _ = match_clean_accuracy(clean, [(r["sigma"], r["clean_accuracy"]) for r in robust_alone])
            matched = next(r for r in robust_alone if r["sigma"] == match_sigma)
            mixtures.append(
                {
                    "alpha": a,
                    "clean_accuracy": clean,
                    "curve": certified_curve(correct, certified_radius(own, a, method), radii),
                    "matched_robust": dict(matched),
                }
            )
        results[method] = {
            "method": method,
            "norm": "l2",
            "sigma": float(sigma),
            "n_select": settings.n_select,
            "n_estimate": settings.n_estimate,
            "delta": settings.delta,
            "mode": settings.mode,
            "images": int(len(x)),
            "radii": radii,
            "robust_alone": robust_alone,
            "mixture": mixtures,
        }
    return results


class LipschitzLogits(NamedTuple):
    """A Lipschitz h on a data set: its logits (N, C) float64 (from a float64 copy of h) and its proven
    constants (core.lipschitz): `constant` L for the logits, `margin_constants` (C, C) for their differences."""

    logits: torch.Tensor
    constant: float
    margin_constants: torch.Tensor


def lipschitz_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500, device="cpu") -> LipschitzLogits:
    """h's float64 logits on x and its constants for inputs of x's shape; ValueError for a layer it cannot bound."""
    from mix_perception.core.lipschitz import lipschitz_bound, margin_lipschitz

    model = model.to(device).eval()
    shape = tuple(x.shape[1:])
    constant, margin_constants = lipschitz_bound(model, shape), margin_lipschitz(model, shape)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        z = torch.cat([model64(x[part].to(device).double()).cpu() for part in slices(len(x), batch_size)])
    return LipschitzLogits(z, constant, margin_constants)


def lipschitz_radius(h: LipschitzLogits, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """Deterministic radius (N,) of the mixture with h's probabilities softmax(T z), alpha (any g)."""
    from mix_perception.core.certify import lipschitz_logit_radius

    return lipschitz_logit_radius(h.logits, check_alpha(alpha), h.constant, h.margin_constants, temperature)


def lipschitz_outcome(
    standard_probs, h: LipschitzLogits, y, alpha: float, temperature: float, radius: float
) -> Outcome:
    """The Outcome of the mixture of g (clean probabilities (N, C)) and the Lipschitz h at temperature T."""
    y = y.cpu()
    robust_probs = torch.softmax(temperature * h.logits, dim=-1)
    clean = ((1.0 - alpha) * standard_probs.double() + alpha * robust_probs).argmax(-1) == y
    radii = lipschitz_radius(h, alpha, temperature)
    return Outcome(clean, clean & (h.logits.argmax(-1) == y) & (radii > 0) & (radii >= radius))


def lipschitz_curves(
    standard: nn.Module,
    lipschitz_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    temperatures: Sequence[float],
    radii: Sequence[float],
    batch_size: int = 500,
    device="cpu",
) -> dict:
    """Deterministic certified accuracy against l2 radius of the mixture of g and a Lipschitz h, and of h
    alone (the paper's Figure 3 with a real Lipschitz model).

    h's logits z have the proven constants of core.lipschitz (for inputs of x's shape); for every
    temperature T (h's probabilities softmax(T z)) and alpha, an image counts at radius r when h's class
    is the label, the mixture predicts the label, and core.certify.lipschitz_logit_radius >= r and > 0;
    these certificates hold with probability 1. h alone is alpha 1 (where T cancels). h alone has one
    clean accuracy, with no test-time knob like the smoothing's sigma', so it is shown as it is.

    Returns a JSON-ready dict: method "lipschitz", norm "l2", lipschitz_constant, radii, images,
    robust_alone [{clean_accuracy, curve}], mixture [{alpha, temperature, clean_accuracy, curve}].
    """
    radii = [float(r) for r in radii]
    h = lipschitz_logits(lipschitz_model, x, batch_size, device)
    standard_probs = log_probs(standard.to(device).eval(), x, batch_size, device).exp()
    y = y.cpu()
    robust_right = h.logits.argmax(-1) == y
    mixtures = []
    for temperature in temperatures:
        for a in alphas:
            clean = lipschitz_outcome(standard_probs, h, y, a, float(temperature), 0.0).clean
            curve = certified_curve(clean & robust_right, lipschitz_radius(h, a, float(temperature)), radii)
            mixtures.append(
                {"alpha": check_alpha(a), "temperature": float(temperature), "clean_accuracy": accuracy(clean),
                 "curve": curve}
            )  # fmt: skip
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
