"""Learn-then-Test acceptance: the guarantee holds over many calibration draws, refusals, bad levels."""

import math

import numpy as np
import pytest

from mix_perception.core import risk_control

EPSILON, DELTA, DRAWS, N = 0.02, 0.1, 400, 2000
GRID = np.linspace(0.85, 0.0, 86)  # strict to lenient, fixed before any draw; 15% accepted at the start


def conditional_risk(t: float) -> float:
    """Scores s ~ U(0, 1), P(wrong | s) = 0.3 (1 - s)^2: P(wrong | s >= t) = 0.1 (1 - t)^2."""
    return 0.1 * (1.0 - t) ** 2


def draw(rng, n=N):
    scores = rng.random(n)
    return scores, rng.random(n) < 0.3 * (1.0 - scores) ** 2


def test_the_guarantee_holds_over_calibration_draws():
    rng = np.random.default_rng(0)
    results = [risk_control.learn_then_test(*draw(rng), GRID, EPSILON, DELTA) for _ in range(DRAWS)]
    accepted = [r for r in results if not r.refused]
    violations = sum(conditional_risk(r.threshold) > EPSILON for r in accepted)
    assert violations / DRAWS <= DELTA + 4 * math.sqrt(DELTA * (1 - DELTA) / DRAWS)
    assert len(accepted) >= 0.9 * DRAWS  # not a trivial refusal: the best threshold (0.553) covers 44.7%
    assert np.median([r.coverage for r in accepted]) > 0.25


def test_the_result_reports_what_the_threshold_gives():
    scores, wrong = draw(np.random.default_rng(1))
    result = risk_control.learn_then_test(scores, wrong, GRID, EPSILON, DELTA)
    accepted = scores >= result.threshold
    assert (result.n, result.accepted, result.wrong) == (N, accepted.sum(), (wrong & accepted).sum())
    assert result.empirical_risk == pytest.approx(result.wrong / result.accepted)
    assert result.coverage == pytest.approx(accepted.mean())
    assert result.p_value == pytest.approx(risk_control.binomial_p_value(result.wrong, result.accepted, EPSILON))
    assert result.p_value <= DELTA and (result.epsilon, result.delta) == (EPSILON, DELTA)


def test_binomial_p_value_is_the_exact_tail():
    assert risk_control.binomial_p_value(0, 0, 0.01) == 1.0
    assert risk_control.binomial_p_value(0, 299, 0.01) == pytest.approx(0.99**299)
    assert risk_control.binomial_p_value(3, 100, 0.01) == pytest.approx(
        sum(math.comb(100, k) * 0.01**k * 0.99 ** (100 - k) for k in range(4))
    )


def test_refuses_when_no_threshold_is_valid():
    scores = np.linspace(0, 1, 500)
    all_wrong = risk_control.learn_then_test(scores, np.ones(500, bool), GRID, EPSILON, DELTA)
    assert all_wrong.refused and all_wrong.threshold is None and all_wrong.coverage == 0.0
    # too few calibration frames: 100 frames without a single error cannot show 2% at delta 0.1
    too_few = risk_control.learn_then_test(scores[:100], np.zeros(100, bool), GRID, EPSILON, DELTA)
    assert too_few.refused
    # the fixed sequence stops at its first failure: a strict start that accepts nothing refuses
    uncertified = np.full(500, -np.inf)
    assert risk_control.learn_then_test(uncertified, np.zeros(500, bool), GRID, EPSILON, DELTA).refused


@pytest.mark.parametrize("epsilon,delta", [(0.0, 0.1), (1.0, 0.1), (0.01, 0.0), (0.01, 1.5), (-0.1, 0.1)])
def test_levels_outside_zero_one_raise_one_line(epsilon, delta):
    with pytest.raises(ValueError, match=r"^(epsilon|delta) must be in \(0, 1\)") as error:
        risk_control.learn_then_test(np.ones(3), np.zeros(3, bool), [0.5], epsilon, delta)
    assert "\n" not in str(error.value)


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="two non-empty"):
        risk_control.learn_then_test(np.ones(3), np.zeros(4, bool), [0.5], 0.1, 0.1)


def test_quantile_grid_runs_strict_to_lenient_from_the_start_fraction():
    scores = np.concatenate([np.linspace(0, 1, 800), np.full(200, -np.inf)])  # 80% certified
    grid = risk_control.quantile_grid(scores, 0.2, steps=50)
    assert np.all(np.diff(grid) < 0)
    assert np.mean(scores >= grid[0]) == pytest.approx(0.2, abs=0.002)
    assert np.mean(scores >= grid[-1]) == pytest.approx(0.8)
