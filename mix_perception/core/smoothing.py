"""Gaussian randomized smoothing of a base classifier hbar (Cohen, Rosenfeld, Kolter 2019; Salman et al. 2019):

    h(x) = E[ hbar(x + N(0, sigma^2 I)) ]

with hbar(z) = one_hot(argmax base(z)) (mode "votes") or softmax(base(z)) (mode "probs"); either way
hbar takes values in [0, 1] and sums to 1, so h is a probability vector whose every coordinate is
sqrt(2/pi)/sigma-Lipschitz in l2 and satisfies Theorem 5 of Bai, Anderson, Sojoudi.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from mix_perception.core import bounds
from mix_perception.core.certify import gaussian_lipschitz, lipschitz_radius_from_bounds, smoothing_radius
from mix_perception.core.names import SMOOTHING_METHODS

MODES = ("votes", "probs")


@dataclass(frozen=True)
class SmoothingSettings:
    """How h is smoothed and certified; the one spelling of these settings for the node, evaluate,
    calibrate and the command line.

    sigma: noise standard deviation, in [0, 1]-pixel units (> 0; the base model's training noise).
    n_select: noise draws that choose h's class y (selection samples, >= 1).
    n_estimate: fresh noise draws that bound h (estimation samples, >= 2); also the draws of
        `SmoothedClassifier.forward`'s estimate.
    delta: a certificate holds with probability >= 1 - delta (0 < delta < 1).
    mode: "votes" (hbar = one-hot argmax, Clopper-Pearson bounds) or "probs" (hbar = softmax,
        empirical-Bernstein bounds).
    batch_size: noisy inputs per forward of the base model (>= 1).
    n_max: the most noise draws per input of sequential certification (core.sequential, >= 1).
    Raises ValueError whose message starts with the name of the first bad field.
    """

    sigma: float = 0.25
    n_select: int = 64
    n_estimate: int = 512
    delta: float = 0.001
    mode: str = "votes"
    batch_size: int = 1000
    n_max: int = 256

    def __post_init__(self):
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be positive and finite, got {self.sigma!r}")
        if self.n_select < 1:
            raise ValueError(f"n_select must be >= 1 (selection samples), got {self.n_select!r}")
        if self.n_estimate < 2:
            raise ValueError(f"n_estimate must be >= 2 (estimation samples), got {self.n_estimate!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {self.n_max!r}")


class MonteCarlo(NamedTuple):
    """Sums over n noise samples per input: `total` (N, C) of hbar, `total_squares` (N, C) of hbar^2
    (mode "probs" only, for the empirical Bernstein bound; None in mode "votes", where hbar^2 = hbar)."""

    total: torch.Tensor
    total_squares: torch.Tensor
    count: int


class Certificate(NamedTuple):
    """Result of `SmoothedClassifier.certify` for a batch of N inputs.

    prediction (N,) int64: h's class y, chosen on the selection samples.
    p_top_lower (N,), p_runner_upper (N,) float64: simultaneous bounds L_y <= h_y(x) and
        U >= max_{i != y} h_i(x), jointly valid with probability >= 1 - delta.
    radius (N,) float64: l2 radius within which the mixture predicts y; 0 where it abstains.
    certified (N,) bool: radius > 0.
    robust_probs (N, C) float: the estimate of h(x) from the estimation samples (not a bound).
    """

    prediction: torch.Tensor
    p_top_lower: torch.Tensor
    p_runner_upper: torch.Tensor
    radius: torch.Tensor
    certified: torch.Tensor
    robust_probs: torch.Tensor


class SmoothedClassifier(nn.Module):
    """The smoothed classifier h of a base model (logits (N, C) from inputs (N, ...)), by `settings`.

    forward(x) returns log of the Monte Carlo estimate of h(x) from `settings.n_estimate` noise draws,
    (N, C), floored at the smallest normal float so it stays finite. Noise is drawn in batches of
    at most `settings.batch_size` base-model inputs, with no Python loop over samples. `seed` seeds
    the generator of `make_generator` (None: fresh entropy).
    """

    def __init__(self, base: nn.Module, settings: SmoothingSettings, seed: int | None = None):
        super().__init__()
        self.base = base
        self.settings = settings
        self.seed = seed

    def make_generator(self, device) -> torch.Generator:
        """A generator on `device`, seeded with `seed` when one was given."""
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator

    def hbar(self, noisy: torch.Tensor) -> torch.Tensor:
        """hbar (M, C) of noisy inputs (M, ...)."""
        logits = self.base(noisy)
        if self.settings.mode == "probs":
            return torch.softmax(logits, dim=-1)
        return nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)

    def sample(self, x: torch.Tensor, count: int, generator: torch.Generator) -> MonteCarlo:
        """Sums of hbar and hbar^2 over `count` noise draws per input of x (N, ...)."""
        total = total_squares = None
        flat_count, batch_size = x.shape[0] * count, self.settings.batch_size
        for start in range(0, flat_count, batch_size):
            owner = torch.arange(start, min(start + batch_size, flat_count), device=x.device) // count
            clean = x[owner]
            noise = torch.randn(clean.shape, generator=generator, device=x.device, dtype=x.dtype)
            values = self.hbar(clean + self.settings.sigma * noise)
            if total is None:
                total = values.new_zeros(x.shape[0], values.shape[-1])
                total_squares = torch.zeros_like(total) if self.settings.mode == "probs" else None
            total.index_add_(0, owner, values)
            if total_squares is not None:
                total_squares.index_add_(0, owner, values.square())
        return MonteCarlo(total, total_squares, count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        estimate = self.sample(x, self.settings.n_estimate, self.make_generator(x.device))
        probs = estimate.total / estimate.count
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    @torch.no_grad()
    def certify(
        self, x: torch.Tensor, alpha: float, generator: torch.Generator | None = None, method: str = "smoothing"
    ) -> Certificate:
        """Certify the mixture (1 - alpha) softmax(g) + alpha h around each input of x (N, ...);
        alpha in [0, 1] (validated by the caller).

        Procedure (Cohen et al.'s CERTIFY, extended to the mixture):
        1. y = argmax of hbar summed over `settings.n_select` noise draws (selection samples).
        2. On `settings.n_estimate` fresh draws, bound every class at level delta / C (Bonferroni):
           a lower bound L_y on h_y(x) and upper bounds U_i on h_i(x), i != y — Clopper-Pearson on
           vote counts (mode "votes") or empirical Bernstein on averaged probabilities (mode "probs").
           Runner-up bound U = min(max_{i != y} U_i, 1 - L_y). (Only L_y and the largest U_i enter
           the radius, so in mode "votes", where U_i grows with the count, only those two are computed.)
        3. method "smoothing": Theorem 5, r = sigma/2 (PhiInv(alpha L_y) - PhiInv(alpha U + 1 - alpha));
           method "smoothing_theorem4": Theorem 4 with Lip = sqrt(2/pi)/sigma for every class.
           Radius 0 (abstain) where the bounds do not separate.

        Guarantee: with probability >= 1 - delta over the noise, for every x' with ||x' - x||_2 <
        radius, the mixture with the exact h predicts y at x' (for any g). Holds per input.
        The mixture's probabilities from the estimate are mix of softmax(g) and `robust_probs`.
        """
        if method not in SMOOTHING_METHODS:
            raise ValueError(f"method must be one of {SMOOTHING_METHODS}, got {method!r}")
        generator = generator or self.make_generator(x.device)
        prediction = self.sample(x, self.settings.n_select, generator).total.argmax(dim=-1)
        estimate = self.sample(x, self.settings.n_estimate, generator)
        p_top_lower, p_runner_upper = self.top_bounds(estimate, prediction)
        radius = radius_from_bounds(p_top_lower, p_runner_upper, alpha, self.settings.sigma, method).to(x.device)
        robust_probs = estimate.total / estimate.count
        return Certificate(prediction, p_top_lower, p_runner_upper, radius, radius > 0, robust_probs)

    def top_bounds(self, estimate: MonteCarlo, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_y, U) (N,) float64: L_y <= h_y(x) and U >= max_{i != y} h_i(x), U <= 1 - L_y, jointly valid
        with probability >= 1 - delta: each of the C one-sided bounds at level delta / C (Bonferroni)."""
        n, classes = estimate.count, estimate.total.shape[-1]
        level = self.settings.delta / classes
        top = prediction.unsqueeze(-1)
        if self.settings.mode == "votes":
            counts = estimate.total.round()
            runner = counts.scatter(-1, top, -1.0).max(dim=-1).values
            lower = bounds.clopper_pearson_lower(counts.gather(-1, top).squeeze(-1), n, level)
            upper = bounds.clopper_pearson_upper(runner, n, level)
        else:
            mean = estimate.total.double() / n
            variance = ((estimate.total_squares.double() - n * mean.square()) / (n - 1)).clamp_min(0.0)
            lower = bounds.bernstein_lower(mean, variance, n, level).gather(-1, top).squeeze(-1)
            upper = bounds.bernstein_upper(mean, variance, n, level).scatter(-1, top, 0.0).max(dim=-1).values
        return lower, torch.minimum(upper, 1.0 - lower)


def radius_from_bounds(p_top_lower, p_runner_upper, alpha: float, sigma: float, method: str = "smoothing"):
    """l2 radius (N,) float64 of the mixture from a smoothed h's bounds L_y and U (`top_bounds`).

    "smoothing": Theorem 5, sigma/2 (PhiInv(alpha L_y) - PhiInv(alpha U + 1 - alpha)). "smoothing_theorem4":
    Theorem 4 with Lip = sqrt(2/pi)/sigma for every class, whose minimum over i != y is at the
    largest upper bound, U: (alpha (L_y - U) + alpha - 1) / (2 alpha Lip). Both clipped at 0.
    """
    if method == "smoothing":
        return smoothing_radius(p_top_lower, p_runner_upper, alpha, sigma)
    if method == "smoothing_theorem4":
        lower = torch.as_tensor(p_top_lower, dtype=torch.float64)
        upper = torch.stack([lower, torch.as_tensor(p_runner_upper, dtype=torch.float64)], dim=-1)
        top_class = torch.zeros(lower.shape, dtype=torch.int64, device=lower.device)
        return lipschitz_radius_from_bounds(top_class, lower, upper, alpha, gaussian_lipschitz(sigma))
    raise ValueError(f"method must be one of {SMOOTHING_METHODS}, got {method!r}")
