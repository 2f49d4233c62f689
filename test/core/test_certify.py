"""Certified radii: against an independent implementation, by property, and by searching for a
counterexample inside the published radius (exhaustively in 2-D, and with PGD at 0.99 r)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import norm as normal
from torch import nn

from mix_perception.core.certify import (
    gaussian_lipschitz,
    lipschitz_radius,
    smoothing_radius,
)
from mix_perception.core.mixing import MixedClassifier
from mix_perception.experiments.attacks import PGDConfig, pgd

# ---------------------------------------------------------------- independent implementations


def theorem4_reference(probs, alpha, constants):
    """Theorem 4 written out with plain Python loops, one sample."""
    if alpha <= 0.5:
        return 0.0
    y = int(np.argmax(probs))
    best = math.inf
    for i in range(len(probs)):
        if i != y:
            r = (alpha * (probs[y] - probs[i]) + alpha - 1) / (alpha * (constants[y] + constants[i]))
            best = min(best, r)
    return max(best, 0.0)


def theorem5_reference(p_top, p_runner, alpha, sigma):
    """Theorem 5 with scipy's normal quantile."""
    if alpha <= 0.5:
        return 0.0
    r = sigma / 2 * (normal.ppf(alpha * p_top) - normal.ppf(alpha * p_runner + 1 - alpha))
    return 0.0 if math.isnan(r) else max(r, 0.0)


probability_vectors = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda v: sum(v) > 0)
alphas = st.floats(0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(raw=probability_vectors, alpha=alphas, data=st.data())
def test_theorem4_matches_reference_and_is_sane(raw, alpha, data):
    probs = np.array(raw) / sum(raw)
    constants = np.array(data.draw(st.lists(st.floats(0.01, 100.0), min_size=len(probs), max_size=len(probs))))
    got = lipschitz_radius(torch.tensor(probs[None]), alpha, torch.tensor(constants)).item()
    want = theorem4_reference(probs, alpha, constants)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got >= 0.0 and not math.isnan(got)
    # scalar constant == the same constant for every class
    scalar = lipschitz_radius(torch.tensor(probs[None]), alpha, float(constants[0])).item()
    assert scalar == pytest.approx(theorem4_reference(probs, alpha, [constants[0]] * len(probs)), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(raw=probability_vectors, alpha=alphas, lip=st.floats(0.01, 100.0))
def test_theorem4_positive_exactly_when_lemma2_margin_holds(raw, alpha, lip):
    probs = torch.tensor([raw], dtype=torch.float64) / sum(raw)
    top2 = probs.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    threshold = (1 - alpha) / alpha if alpha > 0 else math.inf
    assume(abs(margin.item() - threshold) > 1e-9)  # away from the floating-point boundary
    lemma2 = alpha > 0.5 and margin.item() > threshold  # Lemma 2's condition at x itself
    assert bool(lipschitz_radius(probs, alpha, lip).item() > 0) == lemma2


@settings(max_examples=300, deadline=None)
@given(p_top=st.floats(0.0, 1.0), p_runner=st.floats(0.0, 1.0), alpha=alphas, sigma=st.floats(0.01, 2.0))
def test_theorem5_matches_reference_and_is_sane(p_top, p_runner, alpha, sigma):
    f64 = torch.float64
    got = smoothing_radius(torch.tensor(p_top, dtype=f64), torch.tensor(p_runner, dtype=f64), alpha, sigma).item()
    want = theorem5_reference(p_top, p_runner, alpha, sigma)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got >= 0.0 and not math.isnan(got)


@settings(max_examples=200, deadline=None)
@given(
    p_top=st.floats(0.0, 0.999),
    p_runner=st.floats(0.0, 1.0),
    a1=st.floats(0.0, 1.0),
    a2=st.floats(0.0, 1.0),
    lip=st.floats(0.1, 10.0),
)
def test_radii_grow_with_alpha_and_the_top_bound(p_top, p_runner, a1, a2, lip):
    low, high = sorted((a1, a2))
    top, runner = torch.tensor(p_top, dtype=torch.float64), torch.tensor(p_runner, dtype=torch.float64)
    assert smoothing_radius(top, runner, low, 0.25) <= smoothing_radius(top, runner, high, 0.25) + 1e-12
    better_top = torch.tensor(min(p_top + 0.01, 1.0), dtype=torch.float64)
    assert smoothing_radius(top, runner, high, 0.25) <= smoothing_radius(better_top, runner, high, 0.25) + 1e-12
    probs = torch.tensor([[p_top, 1 - p_top]], dtype=torch.float64)
    assert lipschitz_radius(probs, low, lip) <= lipschitz_radius(probs, high, lip) + 1e-12


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5])
def test_nothing_is_certified_at_alpha_at_most_half(alpha):
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])
    assert torch.all(lipschitz_radius(probs, alpha, 0.1) == 0)
    assert torch.all(smoothing_radius(torch.tensor([0.999]), torch.tensor([0.0]), alpha, 0.25) == 0)


def test_bad_constants_and_sigma_are_rejected():
    probs = torch.tensor([[0.9, 0.1]])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            lipschitz_radius(probs, 0.8, bad)
        with pytest.raises(ValueError):
            smoothing_radius(torch.tensor(0.9), torch.tensor(0.1), 0.8, bad)


def test_nan_probabilities_give_zero_not_nan():
    probs = torch.tensor([[math.nan, 0.5, 0.5]])
    assert lipschitz_radius(probs, 0.9, 1.0).item() == 0.0
    assert smoothing_radius(torch.tensor(math.nan), torch.tensor(0.1), 0.9, 0.25).item() == 0.0


# ---------------------------------------------------------------- soundness by search


class SoftmaxLinear(nn.Module):
    """h(x) = softmax(W x + b) on 2-D inputs; returns logits W x + b."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return x @ self.weight.T + self.bias

    def lipschitz(self, dual_norm: float) -> torch.Tensor:
        """Per-class constants of softmax_i(Wx + b) in the norm dual to `dual_norm`:
        |grad p_i|_* = p_i |sum_j p_j (w_i - w_j)|_* <= p_i (1 - p_i) max_j |w_i - w_j|_* <= max_j |w_i - w_j|_* / 4."""
        diffs = self.weight.unsqueeze(1) - self.weight.unsqueeze(0)
        return torch.linalg.vector_norm(diffs, ord=dual_norm, dim=-1).amax(dim=1) / 4


def worst_case_holds(robust_probs: torch.Tensor, y: int, alpha: float) -> torch.Tensor:
    """The mixture predicts y for EVERY g iff alpha h_y > alpha h_i + 1 - alpha for all i != y."""
    others = robust_probs.clone()
    others[:, y] = -math.inf
    return alpha * robust_probs[:, y] > alpha * others.max(dim=1).values + (1 - alpha)


def disk_points(radius: float, norm: str, count: int = 200) -> torch.Tensor:
    """A dense grid of the closed 2-D ball of the norm ("l2" disk or "linf" square), radius > 0."""
    if norm == "l2":
        rho = torch.linspace(0, radius, count, dtype=torch.float64)
        theta = torch.linspace(0, 2 * math.pi, 4 * count, dtype=torch.float64)
        rho, theta = torch.meshgrid(rho, theta, indexing="ij")
        return torch.stack((rho * theta.cos(), rho * theta.sin()), dim=-1).reshape(-1, 2)
    side = torch.linspace(-radius, radius, count, dtype=torch.float64)
    a, b = torch.meshgrid(side, side, indexing="ij")
    return torch.stack((a, b), dim=-1).reshape(-1, 2)


@pytest.mark.parametrize("norm,dual", [("l2", 2.0), ("linf", 1.0)])
def test_theorem4_radius_has_no_counterexample_in_an_exhaustive_2d_search(norm, dual):
    generator = torch.Generator().manual_seed(0)
    certified = 0
    for trial in range(40):
        h = SoftmaxLinear(torch.randn(3, 2, generator=generator, dtype=torch.float64) * 3, torch.zeros(3))
        x = torch.randn(1, 2, generator=generator, dtype=torch.float64)
        alpha = 0.55 + 0.45 * torch.rand(1, generator=generator).item()
        probs = torch.softmax(h(x), -1)
        radius = lipschitz_radius(probs, alpha, h.lipschitz(dual)).item()
        if radius == 0:
            continue
        certified += 1
        y = int(probs.argmax())
        neighbours = x + disk_points(0.99 * radius, norm)
        assert worst_case_holds(torch.softmax(h(neighbours), -1), y, alpha).all(), f"trial {trial}"
        # the certificate is not vacuous: the true boundary lies within a modest factor of the radius
        far = x + disk_points(200 * radius, norm, count=60)
        assert not worst_case_holds(torch.softmax(h(far), -1), y, alpha).all()
    assert certified >= 10


class SmoothedHalfspace(nn.Module):
    """Exact Gaussian smoothing of hbar(z) = one_hot(1[w.z + b > 0]): h_1(x) = Phi((w.x + b) / (sigma |w|)).

    Returns log-probabilities (N, 2), so it is a robust model whose probabilities are known exactly.
    """

    def __init__(self, weight: torch.Tensor, bias: float, sigma: float):
        super().__init__()
        self.weight, self.bias, self.sigma = weight, bias, sigma

    def forward(self, x):
        t = (x.flatten(1) @ self.weight + self.bias) / (self.sigma * self.weight.norm())
        return torch.stack((torch.special.log_ndtr(-t), torch.special.log_ndtr(t)), dim=-1)


@pytest.mark.parametrize("theorem", ["theorem5", "theorem4"])
def test_smoothing_certificates_survive_worst_direction_and_pgd_at_099_r(theorem, constant_logits):
    sigma, dim = 0.25, 16
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(dim, generator=generator, dtype=torch.float64)
    h = SmoothedHalfspace(weight, 0.1, sigma)
    x = torch.rand(300, dim, generator=generator, dtype=torch.float64)
    for alpha in (0.6, 0.8, 0.95):
        probs = h(x).exp()
        top = probs.max(-1).values
        if theorem == "theorem5":
            radius = smoothing_radius(top, 1 - top, alpha, sigma)
        else:
            radius = lipschitz_radius(probs, alpha, gaussian_lipschitz(sigma))
        ok = radius > 0
        assert ok.sum() > 50
        y = probs.argmax(-1)
        # exact worst direction for a halfspace: straight towards the boundary
        toward = torch.where(y == 1, -1.0, 1.0).unsqueeze(-1) * weight / weight.norm()
        moved = x + 0.99 * radius.unsqueeze(-1) * toward
        moved_probs = h(moved).exp()
        for cls in (0, 1):
            rows = ok & (y == cls)
            assert worst_case_holds(moved_probs[rows], cls, alpha).all()
        # PGD on the mixture with the worst g, inside the 0.99 r ball (each point its own radius)
        for cls in (0, 1):
            rows = (ok & (y == cls)).nonzero().squeeze(-1)[:40]
            worst_g = constant_logits([50.0, -50.0] if cls == 1 else [-50.0, 50.0])  # all on the other class
            mixed = MixedClassifier(worst_g, h, alpha).double()
            for row in rows:
                eps = 0.99 * radius[row].item()
                adv = pgd(mixed, x[row : row + 1], y[row : row + 1], PGDConfig("l2", eps, 30))
                assert mixed(adv).argmax(-1).item() == cls
