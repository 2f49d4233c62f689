"""Per-camera test that a stream's conformal p-values are still consistent with the calibration data.

Test martingale: while the frames are exchangeable with the calibration frames, their conformal
p-values (core.ood) are (super-)uniform, and the bet f(p) = 1 + lam (1 - 2 p) (0 < lam < 1) has
E[f(p)] <= 1, so a running product of bets is a test (super)martingale: money multiplies when the
p-values run small, i.e. when frames look less like the calibration data than they should.

Statistic and alarm: Page's CUSUM of the bets, S_t = max(0, S_{t-1} + log f(p_t)), S_0 = 0 (the best
product of bets over every start time); an alarm when S_t >= log A, after which S is reset to 0 (the
detector restarts, so a shift that persists alarms again about every log A / E[log f] frames).

Guarantee (false alarms): the Shiryaev-Roberts statistic R_t = (1 + R_{t-1}) f(p_t) dominates
exp(S_t) (a sum of the products over start times >= their maximum) and R_t - t is a (super)martingale
under the null, so by optional stopping the mean time to a false alarm is E[tau] >= A frames (Pollak
1985; the CUSUM alarms no sooner than the SR statistic reaches A). With resets, alarms form a renewal
process: the long-run false-alarm rate is <= 1/A per frame, i.e. <= 3600 * rate_hz / A per hour.
Ville's inequality is the same argument without resets: P(ever M_t >= A) <= 1/A, but a plain product
of bets drifts towards 0 on clean data and would react ever more slowly to a later shift; the CUSUM
does not. Assumption: p-values i.i.d. super-uniform. Conformal p-values against one fixed calibration
set are only marginally uniform (they share the calibration draw); `simulate_false_alarms` measures the
per-hour rate with that dependence included.

Several streams (the safety monitor watches two per camera): k detectors, detector i at level A_i on its
own stream, an alarm when any alarms. Each detector's alarms are a renewal process of rate <= 1/A_i, so the
union's long-run rate is <= sum_i 1/A_i (union bound; the streams may depend on each other): A_i = k A
keeps the rate of one detector at A, for ln k more nats of evidence per alarm.
"""

import math

import numpy as np

from mix_perception.core.risk_control import check_level


def threshold_for_rate(alarms_per_hour: float, rate_hz: float) -> float:
    """A = 3600 rate_hz / alarms_per_hour: the alarm level whose guaranteed false-alarm rate is alarms_per_hour."""
    if alarms_per_hour <= 0 or rate_hz <= 0:
        raise ValueError(f"alarms_per_hour and rate_hz must be > 0, got {alarms_per_hour!r}, {rate_hz!r}")
    return 3600.0 * rate_hz / alarms_per_hour


class ShiftDetector:
    """CUSUM of the bets f(p) = 1 + lam (1 - 2p) on one camera's p-values; alarm at S >= log(threshold).

    Mean frames to a false alarm >= threshold (see the module docstring). `update` takes one p-value
    and returns True on an alarm (then S restarts at 0); `statistic` is S, in nats.
    """

    def __init__(self, threshold: float, lam: float = 0.5):
        if threshold <= 1.0:
            raise ValueError(f"threshold must be > 1, got {threshold!r}")
        self.lam = check_level("lam", lam)
        self.log_threshold = math.log(threshold)
        self.statistic = 0.0

    def update(self, p_value: float) -> bool:
        self.statistic = max(0.0, self.statistic + math.log1p(self.lam * (1.0 - 2.0 * float(p_value))))
        if self.statistic >= self.log_threshold:
            self.statistic = 0.0
            return True
        return False


def run_detector(p_values, threshold: float, lam: float = 0.5) -> np.ndarray:
    """Indices (0-based) of the frames at which a fresh ShiftDetector alarms on the sequence p_values."""
    detector = ShiftDetector(threshold, lam)
    return np.asarray([t for t, p in enumerate(np.asarray(p_values, dtype=np.float64)) if detector.update(p)])


def simulate_false_alarms(
    calibration_size: int, hours: float, rate_hz: float, threshold: float, lam: float = 0.5, seed: int = 0
) -> float:
    """False alarms per hour of a clean camera, by simulation: one calibration draw of `calibration_size`
    continuous scores, then hours * 3600 * rate_hz fresh scores from the same distribution, their conformal
    p-values (1 + #{calibration >= s}) / (n + 1) fed to a ShiftDetector. Scores are uniform(0, 1) draws:
    conformal p-values depend only on ranks, so this holds for any continuous score distribution."""
    rng = np.random.default_rng(seed)
    calibration = np.sort(rng.random(calibration_size))
    frames = int(hours * 3600 * rate_hz)
    stream = rng.random(frames)
    p_values = (1.0 + calibration_size - np.searchsorted(calibration, stream, side="left")) / (calibration_size + 1.0)
    return len(run_detector(p_values, threshold, lam)) / hours
