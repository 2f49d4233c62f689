"""Sequential certification: its stopping rule keeps the error <= delta where naive re-testing does not,
its certificates hold for exactly smoothed halfspaces, and its bookkeeping (class, table, samples) is right."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from mix_perception.core.sequential import SequentialPlan, certify_sequential
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings

SIGMA = 0.25
STREAMS = 40_000


def smoothed_by(base, seed=None, **settings) -> SmoothedClassifier:
    """The smoothing of `base` at SIGMA (unless `sigma` is given) with these settings."""
    return SmoothedClassifier(base, SmoothingSettings(**({"sigma": SIGMA} | settings)), seed)


def allowed_failures(delta: float, trials: int) -> float:
    """delta plus 4 binomial standard deviations over `trials` simulated runs."""
    return delta + 4 * math.sqrt(delta * (1 - delta) / trials)


# ---------------------------------------------------------------- simulated Bernoulli streams


def sequential_certifies(plan: SequentialPlan, p: float, rng: np.random.Generator) -> np.ndarray:
    """Whether the plan's stopping rule certifies on each of STREAMS Bernoulli(p) vote streams."""
    counts = np.cumsum(rng.binomial(np.diff((0,) + plan.looks), p, size=(STREAMS, len(plan.looks))), axis=1)
    running = np.ones(STREAMS, dtype=bool)
    certified = np.zeros(STREAMS, dtype=bool)
    for look in range(len(plan.looks)):
        certify, stop = (mask.numpy() for mask in plan.decide(look, torch.from_numpy(counts[:, look])))
        certified |= running & certify
        running &= ~stop
    assert not running.any()  # the last look decides every stream
    return certified


def naive_certifies(p_min: float, delta: float, batch: int, n_max: int, p: float, rng) -> np.ndarray:
    """Re-test Clopper-Pearson at level delta after every batch of votes: certify once it reaches p_min."""
    looks = np.arange(batch, n_max + 1, batch)
    thresholds = []  # the smallest count whose bound reaches p_min, n + 1 for none
    for n in looks:
        lower = np.nan_to_num(beta.ppf(delta, np.arange(n + 1), n - np.arange(n + 1) + 1))
        thresholds.append(np.argmax(np.append(lower >= p_min, True)))
    counts = np.cumsum(rng.binomial(batch, p, size=(STREAMS, len(looks))), axis=1)
    return (counts >= np.array(thresholds)).any(axis=1)


PLANS = [(0.75, 0.1), (0.9, 0.1), (0.55, 0.0)]  # (alpha, required radius)


@pytest.mark.parametrize("alpha,required", PLANS)
@pytest.mark.parametrize("fraction", [1 - 1e-9, 0.97, 0.8])
def test_false_certification_rate_stays_below_delta(alpha, required, fraction):
    """P(certify) grows with p (more votes for y never stop a certificate), so p just below p_min is
    the worst case of p < p_min: there the rate must stay <= delta."""
    delta = 0.1
    plan = SequentialPlan(SIGMA, alpha, required, delta=delta, n_max=256)
    assert len(plan.looks) >= 3
    rate = sequential_certifies(plan, fraction * plan.p_min, np.random.default_rng(0)).mean()
    assert rate <= allowed_failures(delta, STREAMS)
    if fraction > 0.99:
        assert rate > delta / 4  # the bound is not wildly loose: the test could fail


@pytest.mark.parametrize("alpha,required", PLANS)
def test_naive_retesting_after_every_batch_fails_the_same_test(alpha, required):
    delta = 0.1
    plan = SequentialPlan(SIGMA, alpha, required, delta=delta, n_max=256)
    rate = naive_certifies(plan.p_min, delta, 8, 256, plan.p_min * (1 - 1e-9), np.random.default_rng(0)).mean()
    assert rate > 2 * allowed_failures(delta, STREAMS)


def test_streams_above_p_min_certify_and_all_agreeing_ones_at_the_first_look():
    plan = SequentialPlan(SIGMA, 0.75, 0.1, delta=0.001)
    rng = np.random.default_rng(1)
    assert sequential_certifies(plan, 1.0, rng).all()
    assert plan.certify_at[0] == plan.looks[0]
    assert sequential_certifies(plan, 0.99, rng).mean() > 0.95


# ---------------------------------------------------------------- exactly smoothed halfspaces


class Halfspace(nn.Module):
    """Base logits [0, w.z + b]: hbar(z) = class 1 iff w.z + b > 0, so h_1(x) = Phi((w.x + b) / (sigma |w|))."""

    def __init__(self, weight: torch.Tensor, bias: float):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.calls = 0
        self.inputs_seen = 0

    def forward(self, z):
        self.calls += 1
        self.inputs_seen += z.shape[0]
        score = z.flatten(1) @ self.weight + self.bias
        return torch.stack((torch.zeros_like(score), score), dim=-1)

    def exact_h1(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtr((x.flatten(1) @ self.weight + self.bias) / (SIGMA * self.weight.norm()))

    def inputs_with_h1(self, h1: torch.Tensor, dim: int) -> torch.Tensor:
        """Points x (len(h1), dim) on the normal through the origin with exact h_1(x) = h1."""
        w = self.weight
        along = (SIGMA * w.norm() * torch.special.ndtri(h1.double()) - self.bias) / w.norm()
        return along.unsqueeze(-1) * (w / w.norm())


def make_base(dim: int = 20, seed: int = 0) -> Halfspace:
    generator = torch.Generator().manual_seed(seed)
    return Halfspace(torch.randn(dim, generator=generator, dtype=torch.float64) * 4 / math.sqrt(dim), 0.05)


def test_inputs_just_below_p_min_are_falsely_certified_at_most_delta_of_the_time():
    """The whole procedure (torch noise, batching, table, stopping) at its worst case, 2000 inputs."""
    delta, trials = 0.1, 2000
    base = make_base()
    plan = SequentialPlan(SIGMA, 0.75, 0.1, delta=delta)
    smoothed = smoothed_by(base, batch_size=100_000)
    x = base.inputs_with_h1(torch.full((trials,), plan.p_min * (1 - 1e-6)), 20)
    cert = certify_sequential(smoothed, x, plan, generator=torch.Generator().manual_seed(0))
    assert (cert.prediction == 1).all()
    assert cert.certified.double().mean() <= allowed_failures(delta, trials)
    assert (cert.p_top_lower > base.exact_h1(x)).double().mean() <= allowed_failures(delta, trials)


@pytest.mark.parametrize("alpha,required", PLANS)
def test_certified_radius_is_sound_for_the_exact_smoothed_halfspace(alpha, required):
    """Over many inputs, the bound misses the exact h_y, or the exact mixture with the worst g is flipped
    within 0.99 r (moving straight towards the boundary, the worst direction), at most delta of the time."""
    delta = 0.05
    base = make_base(seed=2)
    plan = SequentialPlan(SIGMA, alpha, required, delta=delta)
    smoothed = smoothed_by(base, batch_size=100_000)
    x = torch.rand(1000, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cert = certify_sequential(smoothed, x, plan, generator=torch.Generator().manual_seed(4))
    h1 = base.exact_h1(x)
    h_top = torch.where(cert.prediction == 1, h1, 1 - h1)
    toward = torch.where(cert.prediction == 1, -1.0, 1.0).unsqueeze(-1) * base.weight / base.weight.norm()
    h1_moved = base.exact_h1(x + 0.99 * cert.radius.unsqueeze(-1) * toward)
    h_top_moved = torch.where(cert.prediction == 1, h1_moved, 1 - h1_moved)
    flipped = cert.certified & ~(alpha * h_top_moved > alpha * (1 - h_top_moved) + 1 - alpha)
    assert cert.certified.double().mean() > 0.2 and (~cert.certified).double().mean() > 0.1
    assert (cert.p_top_lower > h_top).double().mean() <= delta
    assert flipped.double().mean() <= delta
    assert torch.equal(cert.certified, (cert.radius >= required) & (cert.radius > 0))
    # the published radius is Theorem 5 with U = 1 - L: sigma PhiInv(alpha L)
    expected = (SIGMA * torch.special.ndtri(alpha * cert.p_top_lower)).clamp_min(0.0)
    assert torch.allclose(cert.radius, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize(
    "alpha,required,delta", [(0.75, 0.1, 1e-3), (0.8, 0.1, 0.05), (0.9, 0.2, 1e-6), (0.7, 0.0, 0.01)]
)
def test_threshold_table_matches_scipy_beta_quantiles(alpha, required, delta):
    plan = SequentialPlan(SIGMA, alpha, required, delta=delta, n_max=300)
    p_min = norm.cdf(required / SIGMA) / alpha
    assert plan.p_min == pytest.approx(p_min, rel=1e-12)
    assert plan.looks[0] == math.ceil(math.log(delta / 2) / math.log(p_min)) and plan.looks[-1] == 300
    assert all(a < b for a, b in zip(plan.looks, plan.looks[1:], strict=False))
    assert sum(plan.deltas) == pytest.approx(delta, rel=1e-12) and plan.deltas[0] == delta / 2
    for k, (n, level) in enumerate(zip(plan.looks, plan.deltas, strict=True)):
        t = np.arange(1, n + 1)
        np.testing.assert_allclose(plan.lower[k, 1 : n + 1].numpy(), beta.ppf(level, t, n - t + 1), rtol=1e-10)
        assert plan.lower[k, 0] == 0
        threshold = plan.certify_at[k]
        assert threshold <= n  # every look can certify with these settings
        assert (
            beta.ppf(level, threshold, n - threshold + 1) >= p_min > beta.ppf(level, threshold - 1, n - threshold + 2)
        )


def test_a_single_look_at_n_max_when_all_agreeing_votes_need_more():
    plan = SequentialPlan(SIGMA, 0.9, 0.3, delta=1e-6, n_max=300)  # p_min 0.983: 860 agreeing votes
    assert plan.looks == (300,) and plan.deltas == (1e-6,) and not plan.reachable


class InsideBall(nn.Module):
    """Class 0 within l2 distance 0.5 of the origin, else class 1."""

    def forward(self, z):
        inside = z.flatten(1).norm(dim=-1) < 0.5
        return torch.stack((inside.double(), (~inside).double()), dim=-1)


def test_class_comes_from_the_clean_input_or_the_caller_never_from_the_noise():
    """At the origin the clean prediction is 0 but (almost) every noisy vote is 1 (|sigma Z| ~ 1.1 in 20-D)."""
    smoothed = smoothed_by(InsideBall(), seed=0)
    plan = SequentialPlan(SIGMA, 0.75, 0.1)
    origin = torch.zeros(3, 20, dtype=torch.float64)
    cert = certify_sequential(smoothed, origin, plan)
    assert (cert.prediction == 0).all() and not cert.certified.any() and (cert.radius == 0).all()
    assert (cert.samples == plan.looks[0]).all()  # futility: 0 votes for y cannot reach a later look
    assert torch.allclose(cert.robust_probs[:, 1], torch.ones(3, dtype=torch.float64))
    given = certify_sequential(smoothed, origin, plan, classes=torch.tensor([1, 1, 0]))
    assert given.prediction.tolist() == [1, 1, 0] and given.certified.tolist() == [True, True, False]


def test_inputs_stop_independently_and_samples_are_counted():
    base = make_base(seed=5)
    plan = SequentialPlan(SIGMA, 0.75, 0.1)
    smoothed = smoothed_by(base, seed=1, batch_size=50)
    h1 = torch.tensor([1 - 1e-9, 0.9, 0.9, 0.9, 0.5, 1e-9], dtype=torch.float64)
    cert = certify_sequential(smoothed, base.inputs_with_h1(h1, 20), plan)
    assert cert.samples[0] == cert.samples[5] == plan.looks[0]  # all agree: certified at the first look
    assert cert.certified[0] and cert.certified[5] and cert.prediction[5] == 0
    assert (cert.samples[1:4] > plan.looks[0]).all()  # borderline: later looks
    assert cert.samples[4] == plan.looks[0] and not cert.certified[4]  # coin flip: futility at once
    assert set(cert.samples.tolist()) <= set(plan.looks)
    assert base.inputs_seen == 6 + cert.samples.sum()  # one clean forward each, then only its own samples
    assert torch.allclose(cert.robust_probs.sum(-1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("alpha,required", [(0.5, 0.0), (0.3, 0.1), (0.6, 0.1), (0.75, 2.0)])
def test_an_unreachable_radius_is_never_certified_and_draws_one_look(alpha, required):
    plan = SequentialPlan(SIGMA, alpha, required)
    assert not plan.reachable and plan.p_min > 1
    base = make_base()
    cert = certify_sequential(smoothed_by(base), torch.rand(4, 20, dtype=torch.float64), plan)
    n_max = plan.looks[-1]
    assert plan.looks == (n_max,)  # one look: the estimate of h, and the radius it certifies
    assert base.inputs_seen == 4 + 4 * n_max  # the clean forward, then n_max samples
    assert (cert.samples == n_max).all() and not cert.certified.any()
    if alpha <= 0.5:
        assert (cert.radius == 0).all()  # no certificate below alpha 1/2
    else:
        assert ((cert.radius >= 0) & (cert.radius < required)).all()  # what n_max votes certify, short of r_req
    assert torch.allclose(cert.robust_probs.sum(-1), torch.ones(4, dtype=torch.float64))


def test_images_with_a_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    cert = certify_sequential(
        smoothed_by(cnn, seed=1), torch.rand(5, 1, 28, 28), SequentialPlan(SIGMA, 0.8, 0.1)
    )
    assert cert.robust_probs.shape == (5, 10) and cert.prediction.shape == (5,)
    assert torch.allclose(cert.robust_probs.sum(-1), torch.ones(5))


def test_bad_configuration_is_rejected():
    for kwargs in (
        {"sigma": 0.0},
        {"delta": 0.0},
        {"delta": 1.0},
        {"required_radius": -0.1},
        {"required_radius": math.inf},
        {"n_max": 0},
    ):
        with pytest.raises(ValueError):
            SequentialPlan(**({"sigma": SIGMA, "alpha": 0.8, "required_radius": 0.1} | kwargs))
    x = torch.rand(2, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="votes"):
        certify_sequential(smoothed_by(make_base(), mode="probs"), x, SequentialPlan(SIGMA, 0.8, 0.1))
    with pytest.raises(ValueError, match="sigma"):
        certify_sequential(smoothed_by(make_base(), sigma=0.5), x, SequentialPlan(SIGMA, 0.8, 0.1))
