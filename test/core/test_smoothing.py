"""SmoothedClassifier: Monte Carlo estimates, and certify's guarantee checked against exactly known smoothed models."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings

SIGMA = 0.25


def settings(**fields) -> SmoothingSettings:
    return SmoothingSettings(sigma=SIGMA, **fields)


class Halfspace(nn.Module):
    """Base logits [0, k (w.z + b)]: votes give class 1 iff w.z + b > 0; softmax gives sigmoid(k (w.z + b))."""

    def __init__(self, weight: torch.Tensor, bias: float, sharpness: float = 1.0):
        super().__init__()
        self.weight, self.bias, self.sharpness = weight, bias, sharpness
        self.calls = 0
        self.inputs_seen = 0

    def forward(self, z):
        self.calls += 1
        self.inputs_seen += z.shape[0]
        score = self.sharpness * (z.flatten(1) @ self.weight + self.bias)
        return torch.stack((torch.zeros_like(score), score), dim=-1)


def exact_h1(base: Halfspace, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Exact h_1(x): Phi(m / s) for votes; E[sigmoid(k (m + s Z))] by 200-node Gauss-Hermite for probs."""
    m = x.flatten(1).double() @ base.weight.double() + base.bias
    s = SIGMA * base.weight.double().norm()
    if mode == "votes":
        return torch.special.ndtr(m / s)
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(2 * math.pi)
    return (torch.sigmoid(base.sharpness * (m.unsqueeze(-1) + s * nodes)) * weights).sum(-1)


def make_base(dim: int = 20, seed: int = 0, sharpness: float = 1.0) -> Halfspace:
    generator = torch.Generator().manual_seed(seed)
    return Halfspace(torch.randn(dim, generator=generator) / math.sqrt(dim) * 4, 0.05, sharpness)


@pytest.mark.parametrize("mode", ["votes", "probs"])
def test_forward_estimates_h_and_is_finite_and_seeded(mode):
    base = make_base(sharpness=3.0)
    x = torch.rand(50, 20, generator=torch.Generator().manual_seed(1))
    smoothed = SmoothedClassifier(base, settings(n_estimate=4000, batch_size=3001, mode=mode), seed=5)
    log_probs = smoothed(x)
    assert torch.isfinite(log_probs).all() and log_probs.shape == (50, 2)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(50), atol=1e-5)
    assert torch.allclose(log_probs.exp()[:, 1].double(), exact_h1(base, x, mode), atol=0.03)
    assert torch.equal(log_probs, smoothed(x))  # same seed, same noise


def test_certify_uses_separate_selection_and_estimation_samples_in_batches():
    base = make_base()
    smoothed = SmoothedClassifier(base, settings(n_select=100, n_estimate=1000, batch_size=700), seed=0)
    x = torch.rand(3, 20)
    smoothed.certify(x, alpha=0.8)
    assert base.inputs_seen == 3 * (100 + 1000)
    assert base.calls == math.ceil(300 / 700) + math.ceil(3000 / 700)


@pytest.mark.parametrize("mode", ["votes", "probs"])
@pytest.mark.parametrize("method", ["smoothing", "smoothing_theorem4"])
def test_certified_radius_is_sound_for_the_exact_smoothed_model(mode, method):
    """Over many inputs and noise draws, the radius fails (the exact mixture with the worst g can be
    flipped within 0.99 r, or a bound misses the exact h) at a rate of at most delta."""
    delta, alpha = 0.05, 0.75
    base = make_base(seed=2, sharpness=4.0)
    sampling = settings(n_select=32, n_estimate=300, delta=delta, mode=mode, batch_size=20_000)
    smoothed = SmoothedClassifier(base, sampling)
    x = torch.rand(400, 20, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(4)
    cert = smoothed.certify(x, alpha, generator=generator, method=method)
    h1 = exact_h1(base, x, mode)
    h_top = torch.where(cert.prediction == 1, h1, 1 - h1)
    bound_missed = (cert.p_top_lower > h_top) | (cert.p_runner_upper < 1 - h_top)
    # exact worst case for the halfspace: move straight towards the boundary; worst g backs the other class
    weight = base.weight.double()
    toward = torch.where(cert.prediction == 1, -1.0, 1.0).unsqueeze(-1) * weight / weight.norm()
    moved = x.double() + 0.99 * cert.radius.unsqueeze(-1) * toward
    h1_moved = exact_h1(base, moved, mode)
    h_top_moved = torch.where(cert.prediction == 1, h1_moved, 1 - h1_moved)
    flipped = cert.certified & ~(alpha * h_top_moved > alpha * (1 - h_top_moved) + 1 - alpha)
    assert cert.certified.double().mean() > 0.5  # the test exercises real certificates
    assert flipped.double().mean() <= delta
    assert bound_missed.double().mean() <= delta
    assert torch.equal(cert.certified, cert.radius > 0)
    assert (cert.radius >= 0).all() and not cert.radius.isnan().any()


def test_abstains_on_a_coin_flip_and_at_alpha_half():
    on_boundary = torch.full((10, 20), 0.5)  # w.x + b = 0: h = (1/2, 1/2) exactly, in both modes
    for mode in ("votes", "probs"):
        coin = settings(n_select=16, n_estimate=200, delta=0.01, mode=mode)
        cert = SmoothedClassifier(Halfspace(torch.ones(20), -10.0), coin, seed=0).certify(on_boundary, alpha=0.9)
        assert not cert.certified.any() and (cert.radius == 0).all()
    strong = SmoothedClassifier(Halfspace(torch.ones(20), 100.0), settings(), seed=0)
    assert strong.certify(torch.rand(4, 20), alpha=0.9).certified.all()
    assert not strong.certify(torch.rand(4, 20), alpha=0.5).certified.any()


def test_certify_on_images_with_a_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    smoothed = SmoothedClassifier(cnn, settings(n_select=20, n_estimate=130, batch_size=257), seed=1)
    cert = smoothed.certify(torch.rand(5, 1, 28, 28), alpha=0.7)
    assert cert.robust_probs.shape == (5, 10) and cert.prediction.shape == (5,)
    assert torch.allclose(cert.robust_probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sigma", 0.0),
        ("sigma", -1.0),
        ("sigma", math.inf),
        ("mode", "soft"),
        ("n_select", 0),
        ("n_estimate", 1),
        ("delta", 0.0),
        ("delta", 1.0),
        ("batch_size", 0),
    ],
)
def test_bad_settings_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SmoothingSettings(**{field: value})


@pytest.mark.parametrize("mode", ["votes", "probs"])
def test_top_bounds_are_the_bounds_of_every_class_that_enter_the_radius(mode):
    """L_y and U from `top_bounds` equal the lower bound of y and the largest upper bound of the other
    classes when all C bounds are computed (Bonferroni, delta / C each), capped at 1 - L_y."""
    from mix_perception.core import bounds

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    smoothed = SmoothedClassifier(cnn, settings(n_estimate=300, delta=0.01, mode=mode), seed=3)
    x = torch.rand(40, 1, 4, 4) * 4
    estimate = smoothed.sample(x, 300, smoothed.make_generator("cpu"))
    prediction = torch.randint(0, 5, (40,))
    lower, upper = smoothed.top_bounds(estimate, prediction)
    level = 0.01 / 5
    if mode == "votes":
        all_lower = bounds.clopper_pearson_lower(estimate.total, 300, level)
        all_upper = bounds.clopper_pearson_upper(estimate.total, 300, level)
    else:
        mean = estimate.total.double() / 300
        variance = ((estimate.total_squares.double() - 300 * mean.square()) / 299).clamp_min(0.0)
        all_lower = bounds.bernstein_lower(mean, variance, 300, level)
        all_upper = bounds.bernstein_upper(mean, variance, 300, level)
    expected_lower = all_lower.gather(-1, prediction[:, None]).squeeze(-1)
    others = all_upper.scatter(-1, prediction[:, None], 0.0).max(dim=-1).values
    torch.testing.assert_close(lower, expected_lower)
    torch.testing.assert_close(upper, torch.minimum(others, 1.0 - expected_lower))
    assert (estimate.total_squares is None) == (mode == "votes")
