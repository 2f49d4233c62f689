"""Confidence bounds: they cover the true mean at the stated rate, and agree with scipy's exact interval."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from mix_perception.core import bounds

TRIALS = 4000


def allowed_failures(delta: float) -> float:
    """delta plus 4 binomial standard deviations over TRIALS simulated runs."""
    return delta + 4 * math.sqrt(delta * (1 - delta) / TRIALS)


@pytest.mark.parametrize("p", [0.0, 0.02, 0.3, 0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("n,delta", [(20, 0.1), (200, 0.05)])
def test_clopper_pearson_covers(p, n, delta):
    generator = torch.Generator().manual_seed(0)
    successes = torch.binomial(torch.full((TRIALS,), float(n)), torch.full((TRIALS,), p), generator=generator)
    lower = bounds.clopper_pearson_lower(successes, n, delta)
    upper = bounds.clopper_pearson_upper(successes, n, delta)
    assert (lower > p).double().mean() <= allowed_failures(delta)
    assert (upper < p).double().mean() <= allowed_failures(delta)
    assert ((lower >= 0) & (upper <= 1) & (lower <= upper)).all()


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (2.0, 5.0), (20.0, 1.0), (1.0, 200.0)])
@pytest.mark.parametrize("n", [10, 100])
def test_hoeffding_and_bernstein_cover_bounded_samples(a, b, n):
    delta = 0.1
    mean_true = a / (a + b)
    samples = torch.distributions.Beta(a, b).sample((TRIALS, n)).double()
    mean, variance = samples.mean(1), samples.var(1)
    for lower, upper in (
        (bounds.hoeffding_lower(mean, n, delta), bounds.hoeffding_upper(mean, n, delta)),
        (bounds.bernstein_lower(mean, variance, n, delta), bounds.bernstein_upper(mean, variance, n, delta)),
    ):
        assert (lower > mean_true).double().mean() <= allowed_failures(delta)
        assert (upper < mean_true).double().mean() <= allowed_failures(delta)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 2000), data=st.data(), delta=st.floats(1e-6, 0.4))
def test_clopper_pearson_equals_scipy_exact_interval(n, data, delta):
    k = data.draw(st.integers(0, n))
    interval = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact")
    lower = bounds.clopper_pearson_lower(torch.tensor([k]), n, delta).item()
    upper = bounds.clopper_pearson_upper(torch.tensor([k]), n, delta).item()
    assert lower == pytest.approx(interval.low, abs=1e-9)
    assert upper == pytest.approx(interval.high, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(mean=st.floats(0.0, 1.0), n=st.integers(2, 10_000), d1=st.floats(1e-9, 0.5), d2=st.floats(1e-9, 0.5))
def test_bounds_are_ordered_in_range_and_widen_as_delta_shrinks(mean, n, d1, d2):
    small, large = sorted((d1, d2))
    m = torch.tensor(mean, dtype=torch.float64)
    v = torch.tensor(mean * (1 - mean), dtype=torch.float64)
    for low, high in (
        (lambda d: bounds.hoeffding_lower(m, n, d), lambda d: bounds.hoeffding_upper(m, n, d)),
        (lambda d: bounds.bernstein_lower(m, v, n, d), lambda d: bounds.bernstein_upper(m, v, n, d)),
    ):
        assert 0.0 <= low(small) <= low(large) <= mean <= high(large) <= high(small) <= 1.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, math.nan])
def test_delta_outside_open_unit_interval_is_rejected(delta):
    with pytest.raises(ValueError):
        bounds.hoeffding_lower(torch.tensor(0.5), 10, delta)
    with pytest.raises(ValueError):
        bounds.clopper_pearson_lower(torch.tensor([5]), 10, delta)
