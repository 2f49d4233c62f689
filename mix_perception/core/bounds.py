"""One-sided confidence bounds on the mean of [0, 1]-valued samples.

Each function returns a bound B on the true mean p such that, over the sampling,
P(p < B) <= delta for a lower bound and P(p > B) <= delta for an upper bound. Inputs are
tensors of any shape (broadcast together); outputs are float64 tensors in [0, 1].

- Clopper-Pearson: exact, for counts k of successes out of n Bernoulli trials (votes).
- Hoeffding: for means of n independent samples in [0, 1].
- Empirical Bernstein (Maurer and Pontil 2009, Theorem 4): for means of n >= 2 independent samples
  in [0, 1] with unbiased sample variance `variance`; tighter than Hoeffding when the variance is small.
"""

import math

import torch
from scipy.special import betaincinv


def check_delta(delta: float) -> float:
    """Return delta as a float, or raise ValueError unless 0 < delta < 1."""
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return delta


def clopper_pearson_lower(successes: torch.Tensor, trials: int, delta: float) -> torch.Tensor:
    """Lower bound: the delta quantile of Beta(k, n - k + 1); 0 where k = 0."""
    delta = check_delta(delta)
    k = successes.detach().double().cpu().numpy()
    bound = torch.from_numpy(betaincinv(k, trials - k + 1, delta)).nan_to_num(0.0)
    return bound.where(torch.from_numpy(k > 0), torch.zeros(())).to(successes.device)


def clopper_pearson_upper(successes: torch.Tensor, trials: int, delta: float) -> torch.Tensor:
    """Upper bound: the 1 - delta quantile of Beta(k + 1, n - k); 1 where k = n."""
    return 1.0 - clopper_pearson_lower(trials - successes.double(), trials, delta)


def hoeffding_lower(mean: torch.Tensor, count: int, delta: float) -> torch.Tensor:
    """mean - sqrt(ln(1/delta) / (2 n)), clipped to [0, 1]."""
    width = math.sqrt(math.log(1.0 / check_delta(delta)) / (2.0 * count))
    return (mean.double() - width).clamp(0.0, 1.0)


def hoeffding_upper(mean: torch.Tensor, count: int, delta: float) -> torch.Tensor:
    """mean + sqrt(ln(1/delta) / (2 n)), clipped to [0, 1]."""
    return 1.0 - hoeffding_lower(1.0 - mean.double(), count, delta)


def bernstein_lower(mean: torch.Tensor, variance: torch.Tensor, count: int, delta: float) -> torch.Tensor:
    """mean - sqrt(2 V ln(2/delta) / n) - 7 ln(2/delta) / (3 (n - 1)), clipped to [0, 1]; needs n >= 2."""
    if count < 2:
        raise ValueError(f"the empirical Bernstein bound needs at least 2 samples, got {count}")
    log_term = math.log(2.0 / check_delta(delta))
    width = torch.sqrt(2.0 * variance.double().clamp_min(0.0) * log_term / count) + 7.0 * log_term / (3.0 * (count - 1))
    return (mean.double() - width).clamp(0.0, 1.0)


def bernstein_upper(mean: torch.Tensor, variance: torch.Tensor, count: int, delta: float) -> torch.Tensor:
    """Upper bound of the empirical Bernstein inequality (the lower bound applied to 1 - X)."""
    return 1.0 - bernstein_lower(1.0 - mean.double(), variance, count, delta)
