"""The shift detector: false alarms within the guaranteed rate, quick alarms on a shifted stream."""

import math

import numpy as np
import pytest

from mix_perception.core import stream_shift


def test_false_alarms_on_uniform_p_values_stay_within_one_per_threshold_frames():
    rng = np.random.default_rng(0)
    frames, threshold = 400_000, 2000.0
    alarms = stream_shift.run_detector(rng.random(frames), threshold)
    assert len(alarms) <= frames / threshold  # the bound is 200; the CUSUM is far below it


def test_simulated_rate_at_30_hz_is_within_the_guarantee():
    threshold = stream_shift.threshold_for_rate(alarms_per_hour=20.0, rate_hz=30.0)  # A = 5400
    rates = [stream_shift.simulate_false_alarms(500, 1.0, 30.0, threshold, seed=seed) for seed in range(3)]
    assert np.mean(rates) <= 20.0


def test_a_shifted_stream_alarms_quickly_and_the_statistic_restarts():
    rng = np.random.default_rng(1)
    threshold = stream_shift.threshold_for_rate(0.1, 30.0)
    shifted = rng.random(2000) * 0.2  # p-values of frames unlike the calibration data
    alarms = stream_shift.run_detector(shifted, threshold)
    assert 0 < alarms[0] < 100
    assert np.all(np.diff(alarms) > 10)  # after an alarm the statistic starts again from 0
    detector = stream_shift.ShiftDetector(threshold)
    while not detector.update(0.0):
        pass
    assert detector.statistic == 0.0


def test_threshold_for_rate():
    assert stream_shift.threshold_for_rate(0.1, 30.0) == pytest.approx(1.08e6)
    assert math.log(stream_shift.threshold_for_rate(1.0, 30.0)) == pytest.approx(math.log(108000))


@pytest.mark.parametrize("bad", [dict(threshold=1.0), dict(threshold=100.0, lam=1.0), dict(threshold=100.0, lam=0.0)])
def test_bad_settings_raise(bad):
    with pytest.raises(ValueError):
        stream_shift.ShiftDetector(**bad)
    with pytest.raises(ValueError):
        stream_shift.threshold_for_rate(0.0, 30.0)
