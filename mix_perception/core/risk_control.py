"""The acceptance threshold of the safety verdict, with a finite-sample guarantee (Learn-then-Test).

Rule: a frame is accepted when its acceptance score s >= t (the caller gives frames that are not
certified at the required radius the score -inf, so "accepted" implies "certified"). Guarantee sought:

    R(t) = P(wrong class | accepted at t) <= epsilon,   with probability >= 1 - delta over the calibration draw,

assuming calibration and deployment frames are exchangeable (i.i.d. from one distribution).

Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei 2021, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", Theorem 1): test the null H_t: R(t) > epsilon for each
threshold t of a grid with valid p-values and a family-wise-error-controlling procedure; every
threshold whose null is rejected has R(t) <= epsilon, all of them simultaneously, with probability
>= 1 - delta. Here the procedure is fixed-sequence testing (no alpha spending): thresholds are tested
in a fixed order, strict to lenient, each at level delta, stopping at the first null not rejected; the
most lenient rejected threshold is returned. Valid because a false rejection requires the first true
null of the sequence to be rejected, which happens with probability <= delta. The grid and its order
must not depend on the calibration frames that are tested (use other frames to place it:
`quantile_grid` on a selection subset).

Why the exact binomial p-value on the accepted frames is valid for the conditional risk: the
calibration frames are i.i.d.; given that m of the n frames are accepted at t, those m frames are
i.i.d. draws from the distribution of frames conditional on acceptance, so their count of wrong
classes K is Binomial(m, R(t)) (conditionally on m). Under H_t (R(t) > epsilon), P(K <= k | m) <=
binom.cdf(k, m, epsilon), so p = binom.cdf(K, m, epsilon) satisfies P(p <= u | m) <= u for every m,
hence also unconditionally. With m = 0 the p-value is 1 (nothing is learnt).

Why own code and not a library: mapie 1.6.0 (CRC, RCPS, LTT) pulls in scikit-learn, joblib and
narwhals, torchcp 1.2.1 far more (pandas, transformers, ...); the node's core must import only torch,
numpy and scipy, and the rule is scipy.stats.binom plus a loop.
"""

from dataclasses import dataclass

import numpy as np


def check_level(name: str, value: float) -> float:
    """Return value as a float, or raise ValueError unless 0 < value < 1."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return value


def binomial_p_value(wrong: int, accepted: int, epsilon: float) -> float:
    """Exact p-value of H: R > epsilon, from `wrong` errors among `accepted` frames: binom.cdf(wrong, accepted, eps)."""
    if accepted == 0:
        return 1.0
    from scipy.stats import binom  # here, not at the top: the safety monitor loads this module, and scipy.stats ~1 s

    return float(binom.cdf(wrong, accepted, check_level("epsilon", epsilon)))


@dataclass(frozen=True)
class RiskGuarantee:
    """The outcome of the calibration: threshold t (None: refusal, no threshold is valid) and what holds.

    With probability >= 1 - delta over the n calibration frames, P(wrong | score >= t) <= epsilon.
    accepted / wrong: calibration frames accepted at t and misclassified among them; empirical_risk =
    wrong / accepted; coverage = accepted / n (the expected fraction of in-distribution frames
    accepted, estimated); p_value: of the returned threshold (or of the first one tested on refusal).
    """

    threshold: float | None
    epsilon: float
    delta: float
    n: int
    accepted: int
    wrong: int
    empirical_risk: float
    coverage: float
    p_value: float

    @property
    def refused(self) -> bool:
        return self.threshold is None


def learn_then_test(scores, wrong, thresholds, epsilon: float, delta: float) -> RiskGuarantee:
    """Fixed-sequence Learn-then-Test over `thresholds` (ordered strict to lenient: any order works,
    the guarantee needs only that it is fixed before the calibration labels are seen).

    scores: (n,) acceptance scores of the calibration frames (-inf: never accepted); wrong: (n,) bool,
    the prediction is not the label. Returns the most lenient threshold reached before the first
    p-value > delta, or a refusal (threshold None) when the first one already fails.
    """
    epsilon, delta = check_level("epsilon", epsilon), check_level("delta", delta)
    scores = np.asarray(scores, dtype=np.float64)
    wrong = np.asarray(wrong, dtype=bool)
    if scores.shape != wrong.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores and wrong must be two non-empty (n,) arrays, got {scores.shape} and {wrong.shape}")
    n = scores.size
    best = None
    for t in np.asarray(thresholds, dtype=np.float64):
        accepted = scores >= t
        m, k = int(accepted.sum()), int((wrong & accepted).sum())
        p = binomial_p_value(k, m, epsilon)
        if p > delta:
            if best is None:
                return RiskGuarantee(None, epsilon, delta, n, 0, 0, 0.0, 0.0, p)
            break
        best = RiskGuarantee(float(t), epsilon, delta, n, m, k, k / m, m / n, p)
    if best is None:
        raise ValueError("thresholds is empty")
    return best


def quantile_grid(selection_scores, start_fraction: float, steps: int = 200) -> np.ndarray:
    """Thresholds strict to lenient: the score values accepting start_fraction ... 100% of `selection_scores`
    (frames apart from the calibration frames tested: the grid must not depend on them), `steps` values."""
    scores = np.asarray(selection_scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise ValueError("no selection frame has a finite score")
    fractions = np.linspace(check_level("start_fraction", start_fraction), 1.0, steps)
    levels = np.clip(1.0 - fractions * scores.size / finite.size, 0.0, 1.0)
    return np.unique(np.quantile(finite, levels, method="lower"))[::-1]
