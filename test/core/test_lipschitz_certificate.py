"""The deterministic certificate of the mixture with a Lipschitz h (certify.lipschitz_logit_radius):
against an independent float64 computation, by property (alpha, logit_scale, L), and by searching for
a counterexample inside 0.99 r, exhaustively in 2-D and with PGD-l2 on the shipped Lipschitz model and
real test images, against the worst g (backing h's runner-up fully) and the shipped g."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from mix_perception.core import lipschitz, models
from mix_perception.core.architectures import GroupSort2
from mix_perception.core.certify import lipschitz_logit_radius, lipschitz_radius
from mix_perception.core.mixing import MixedClassifier
from mix_perception.experiments import data
from mix_perception.experiments.attacks import PGDConfig, pgd

# ---------------------------------------------------------------- an independent float64 computation


def reference_radius(logits, alpha, lip, margins=None, logit_scale=1.0):
    """Plain Python, one sample. Lemma 2 part: the largest r for which the probabilities of the worst logits
    (every margin z_y - z_j lowered by K_yj r, K_yj = min(margins, sqrt(2) L)) still have p_y - p_i > c for
    all i, found by bisection; Theorem 4 part with the constants (sqrt(2)/4) T L; the larger of the two."""
    if alpha <= 0.5:
        return 0.0
    c = (1 - alpha) / alpha
    classes = range(len(logits))
    y = max(classes, key=lambda j: logits[j])
    rate = {j: math.sqrt(2) * lip if margins is None else min(margins[y][j], math.sqrt(2) * lip) for j in classes}

    def holds(r):
        worst = [0.0 if j == y else -logit_scale * (logits[y] - logits[j] - rate[j] * r) for j in classes]
        total = sum(math.exp(v) for v in worst)
        return all((1.0 - math.exp(worst[i])) / total > c for i in classes if i != y)

    lemma = 0.0
    if holds(0.0):
        low, high = 0.0, min((logits[y] - logits[j]) / rate[j] for j in classes if j != y)
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if holds(middle) else (low, middle)
        lemma = low
    top = max(logit_scale * v for v in logits)
    weights = [math.exp(logit_scale * v - top) for v in logits]
    probs = [w / sum(weights) for w in weights]
    constant = math.sqrt(2) / 4 * logit_scale * lip
    theorem4 = min((alpha * (probs[y] - probs[i]) + alpha - 1) / (alpha * 2 * constant) for i in classes if i != y)
    return max(lemma, theorem4, 0.0)


logit_vectors = st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=6)
alphas = st.floats(0.0, 1.0)
constants = st.floats(0.01, 100.0)
logit_scales = st.floats(0.1, 10.0)


def radius(logits, alpha, lip, margins=None, logit_scale=1.0) -> float:
    return lipschitz_logit_radius(torch.tensor([logits], dtype=torch.float64), alpha, lip, margins, logit_scale).item()


def symmetric_margins(data_strategy, classes: int, lip: float) -> torch.Tensor:
    """A (C, C) symmetric matrix with entries in [0.05, 1.2] sqrt(2) L off the diagonal (some above the cap)."""
    factors = data_strategy.draw(st.lists(st.floats(0.05, 1.2), min_size=classes * classes, max_size=classes * classes))
    upper = torch.tensor(factors, dtype=torch.float64).view(classes, classes).triu(1)
    return (upper + upper.T) * math.sqrt(2) * lip


@settings(max_examples=300, deadline=None)
@given(logits=logit_vectors, alpha=alphas, lip=constants, logit_scale=logit_scales, data_strategy=st.data())
def test_radius_matches_the_independent_computation(logits, alpha, lip, logit_scale, data_strategy):
    assume(len(set(logits)) == len(logits))
    margins = symmetric_margins(data_strategy, len(logits), lip) if data_strategy.draw(st.booleans()) else None
    got = radius(logits, alpha, lip, margins, logit_scale)
    want = reference_radius(logits, alpha, lip, None if margins is None else margins.tolist(), logit_scale)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(logits=logit_vectors, a1=alphas, a2=alphas, l1=constants, l2=constants, logit_scale=logit_scales)
def test_radius_grows_with_alpha_and_shrinks_with_the_constant(logits, a1, a2, l1, l2, logit_scale):
    (low_alpha, high_alpha), (low_lip, high_lip) = sorted((a1, a2)), sorted((l1, l2))

    def r(alpha, lip):
        return radius(logits, alpha, lip, None, logit_scale)

    assert r(low_alpha, low_lip) <= r(high_alpha, low_lip) * (1 + 1e-9) + 1e-12
    assert r(high_alpha, high_lip) <= r(high_alpha, low_lip) * (1 + 1e-9) + 1e-12


@settings(max_examples=300, deadline=None)
@given(logits=logit_vectors, alpha=alphas, lip=constants, logit_scale=logit_scales, data_strategy=st.data())
def test_radius_is_never_below_theorem4_and_pairwise_constants_help(logits, alpha, lip, logit_scale, data_strategy):
    z = torch.tensor([logits], dtype=torch.float64)
    got = radius(logits, alpha, lip, None, logit_scale)
    assert got >= 0.0 and not math.isnan(got)
    theorem4 = lipschitz_radius(torch.softmax(logit_scale * z, -1), alpha, math.sqrt(2) / 4 * logit_scale * lip).item()
    assert got >= theorem4
    margins = symmetric_margins(data_strategy, len(logits), lip)
    assert radius(logits, alpha, lip, margins, logit_scale) >= got * (1 - 1e-9)


@settings(max_examples=300, deadline=None)
@given(logits=logit_vectors, alpha=alphas, lip=constants, logit_scale=logit_scales)
def test_logit_scale_scales_logits_and_constant_together(logits, alpha, lip, logit_scale):
    sharpened = [logit_scale * v for v in logits]
    assert radius(logits, alpha, lip, None, logit_scale) == pytest.approx(
        radius(sharpened, alpha, logit_scale * lip), rel=1e-9, abs=1e-12
    )


@settings(max_examples=300, deadline=None)
@given(logits=logit_vectors, alpha=alphas, lip=constants, logit_scale=logit_scales)
def test_radius_is_positive_exactly_when_the_margin_condition_holds_at_x(logits, alpha, lip, logit_scale):
    probs = torch.softmax(logit_scale * torch.tensor(logits, dtype=torch.float64), -1)
    top2 = probs.topk(2).values
    threshold = (1 - alpha) / alpha if alpha > 0 else math.inf
    assume(abs(float(top2[0] - top2[1]) - threshold) > 1e-9)
    assert (radius(logits, alpha, lip, None, logit_scale) > 0) == (alpha > 0.5 and float(top2[0] - top2[1]) > threshold)


@settings(max_examples=200, deadline=None)
@given(logits=logit_vectors, lip=constants, logit_scale=logit_scales, data_strategy=st.data())
def test_at_alpha_one_it_is_hs_own_margin_certificate(logits, lip, logit_scale, data_strategy):
    assume(len(set(logits)) == len(logits))
    margins = symmetric_margins(data_strategy, len(logits), lip)
    y = max(range(len(logits)), key=lambda j: logits[j])
    own = min(
        (logits[y] - logits[j]) / min(float(margins[y, j]), math.sqrt(2) * lip) for j in range(len(logits)) if j != y
    )
    assert radius(logits, 1.0, lip, margins, logit_scale) == pytest.approx(own, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5])
def test_nothing_is_certified_at_alpha_at_most_half(alpha):
    logits = torch.tensor([[30.0, 0.0, 0.0], [5.0, 1.0, -2.0]])
    assert torch.all(lipschitz_logit_radius(logits, alpha, 0.1, logit_scale=5.0) == 0)


def test_shapes_nan_rows_and_bad_arguments():
    logits = torch.tensor([[2.0, 0.0], [math.nan, 0.0], [1.0, 1.0]])
    radii = lipschitz_logit_radius(logits, 0.9, 1.0)
    assert radii.shape == (3,) and radii.dtype == torch.float64
    assert radii[0] > 0 and radii[1] == 0 and radii[2] == 0
    for bad in (0.0, -1.0, math.inf, math.nan, "x"):
        with pytest.raises(ValueError):
            lipschitz_logit_radius(logits, 0.9, bad)
        with pytest.raises(ValueError):
            lipschitz_logit_radius(logits, 0.9, 1.0, logit_scale=bad)
    with pytest.raises(ValueError):
        lipschitz_logit_radius(logits, 0.9, 1.0, margin_lipschitz=torch.ones(3, 3))
    with pytest.raises(ValueError):
        lipschitz_logit_radius(logits, 0.9, 1.0, margin_lipschitz=torch.zeros(2, 2))


# ---------------------------------------------------------------- soundness by search


class Sharpened(nn.Module):
    """h's logits times the logit_scale."""

    def __init__(self, model: nn.Module, logit_scale: float):
        super().__init__()
        self.model, self.logit_scale = model, logit_scale

    def forward(self, x):
        return self.logit_scale * self.model(x)


class AlwaysClass(nn.Module):
    """A standard model backing one class (per sample) fully: the worst g for the certificate."""

    def __init__(self, classes: torch.Tensor, count: int):
        super().__init__()
        self.logits = torch.where(nn.functional.one_hot(classes, count) > 0, 50.0, -50.0)

    def forward(self, x):
        return self.logits.to(x)


def worst_case_holds(robust_probs: torch.Tensor, y: int, alpha: float) -> torch.Tensor:
    """The mixture predicts y for EVERY g iff alpha h_y > alpha h_i + 1 - alpha for all i != y."""
    others = robust_probs.clone()
    others[:, y] = -math.inf
    return alpha * robust_probs[:, y] > alpha * others.max(dim=1).values + (1 - alpha)


def disk(radius_: float, count: int = 150) -> torch.Tensor:
    rho = torch.linspace(0, radius_, count, dtype=torch.float64)
    theta = torch.linspace(0, 2 * math.pi, 4 * count, dtype=torch.float64)
    rho, theta = torch.meshgrid(rho, theta, indexing="ij")
    return torch.stack((rho * theta.cos(), rho * theta.sin()), dim=-1).reshape(-1, 2)


def test_no_counterexample_in_an_exhaustive_2d_search():
    generator = torch.Generator().manual_seed(0)
    certified, boundary_ratios = 0, []
    for trial in range(40):
        torch.manual_seed(trial)
        h = nn.Sequential(nn.Linear(2, 6), GroupSort2(), nn.Linear(6, 3)).double()
        h[2].weight.data *= 5  # confident enough to certify often
        bound, margins = lipschitz.lipschitz_bound(h, (2,)), lipschitz.margin_lipschitz(h, (2,))
        x = torch.randn(1, 2, generator=generator, dtype=torch.float64)
        alpha = 0.55 + 0.45 * torch.rand(1, generator=generator).item()
        logit_scale = (0.5, 1.0, 3.0)[trial % 3]
        with torch.no_grad():
            logits = h(x)
            r = lipschitz_logit_radius(logits, alpha, bound, margins, logit_scale).item()
            if r == 0:
                continue
            certified += 1
            y = int(logits.argmax())
            runner = int(logits[0].topk(2).indices[1])
            points = x + disk(0.99 * r)
            probs = torch.softmax(logit_scale * h(points), -1)
            assert worst_case_holds(probs, y, alpha).all(), f"trial {trial}"
            worst_g = AlwaysClass(torch.full((len(points),), runner), 3)
            mixed = MixedClassifier(worst_g, Sharpened(h, logit_scale), alpha)
            assert (mixed(points).argmax(-1) == y).all(), f"trial {trial}"
            far = x + disk(30 * r, count=100)
            fails = ~worst_case_holds(torch.softmax(logit_scale * h(far), -1), y, alpha)
            if fails.any():
                boundary_ratios.append(float((far[fails] - x).norm(dim=-1).min()) / r)
    assert certified >= 10
    # the certificate is not vacuous: where the boundary was found, it is a modest factor away
    assert len(boundary_ratios) >= certified // 2 and sorted(boundary_ratios)[len(boundary_ratios) // 2] < 5


def attack_holds(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> bool:
    adv = pgd(mixed, x, y, PGDConfig("l2", eps, 30), torch.Generator().manual_seed(seed))
    assert float((adv - x).norm()) <= eps * (1 + 1e-5)
    with torch.no_grad():
        return bool(mixed(adv).argmax(-1) == y)


@pytest.mark.slow  # PGD on 60 test images at three settings
def test_pgd_inside_099_r_never_changes_the_mixed_prediction_on_the_shipped_models():
    h, g = models.load_default("lipschitz"), models.load_default("standard")
    bound, margins = lipschitz.lipschitz_bound(h, (1, 28, 28)), lipschitz.margin_lipschitz(h, (1, 28, 28))
    images = data.load_split("test").images[:60]
    checked = 0
    for alpha, logit_scale in ((0.8, 1.0), (0.7, 4.0), (1.0, 1.0)):
        with torch.no_grad():
            logits = h(images)
        radii = lipschitz_logit_radius(logits, alpha, bound, margins, logit_scale)
        top2 = logits.topk(2, dim=-1).indices
        for index in radii.nonzero().squeeze(-1)[:8].tolist():
            x, y, runner = images[index : index + 1], top2[index, :1], top2[index, 1:]
            eps = 0.99 * float(radii[index])
            sharpened = Sharpened(h, logit_scale)
            for standard in (g, AlwaysClass(runner, 10)):
                assert attack_holds(MixedClassifier(standard, sharpened, alpha), x, y, eps, index), (alpha, index)
            adv = pgd(MixedClassifier(AlwaysClass(runner, 10), sharpened, alpha), x, y, PGDConfig("l2", eps, 30))
            with torch.no_grad():
                assert worst_case_holds(torch.softmax(sharpened(adv), -1), int(y), alpha).all()
            checked += 1
    assert checked >= 16


def test_pgd_inside_099_r_never_changes_the_mixed_prediction_on_constructed_models():
    torch.manual_seed(0)
    h = nn.Sequential(nn.Linear(16, 8), GroupSort2(), nn.Linear(8, 3)).double()
    some_g = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    bound, margins = lipschitz.lipschitz_bound(h, (16,)), lipschitz.margin_lipschitz(h, (16,))
    x = torch.rand(200, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    checked = 0
    for alpha, logit_scale in ((0.6, 1.0), (0.8, 3.0), (0.95, 10.0)):
        with torch.no_grad():
            logits = h(x)
        radii = lipschitz_logit_radius(logits, alpha, bound, margins, logit_scale)
        top2 = logits.topk(2, dim=-1).indices
        for index in radii.nonzero().squeeze(-1)[:15].tolist():
            eps = 0.99 * float(radii[index])
            point, y, runner = x[index : index + 1], top2[index, :1], top2[index, 1:]
            for standard in (some_g, AlwaysClass(runner, 3)):
                mixed = MixedClassifier(standard, Sharpened(h, logit_scale), alpha)
                assert attack_holds(mixed, point, y, eps, index), (alpha, index)
            checked += 1
    assert checked >= 30
