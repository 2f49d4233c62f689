"""The statistical layer of the safety verdict: the acceptance rule, the OOD level and the stream-shift
watch, and the guarantee they run under (safety monitor parameters acceptance.*, ood.*, shift.*). No ROS.

Acceptance (Learn-then-Test, core.risk_control): a frame certified at required_radius is accepted when
its acceptance score s >= acceptance.threshold. The threshold was chosen on acceptance.calibration_size
calibration frames so that, with probability >= 1 - delta over that draw, P(wrong class | accepted) <=
epsilon for frames exchangeable with the calibration frames; acceptance.coverage is the fraction of them
it accepted. Scores (higher = more trusted; -inf when the frame is not certified at required_radius):
radius (certified_radius), top_probability (max of the mixed probabilities), margin (top minus runner-up),
margin_if_g_agrees and radius_if_g_agrees (as margin and radius when g's argmax is the published class,
else -inf).
The guarantee is about the pipeline it was calibrated on (acceptance.pipeline, core.fingerprint: g, h,
certification, h's logit scale, input shape, alpha) at acceptance.radius: a frame of another pipeline
(another alpha set at runtime, other models) or while required_radius differs is refused as
`not_calibrated`, since the bound says nothing about it.

Out of distribution: flagged when the mixer's ood_p_value <= ood.level (0 = off). A conformal p-value is
super-uniform on in-distribution frames, so they are flagged with probability <= ood.level.

Stream shift: per camera, two core.stream_shift.ShiftDetectors (SHIFT_STREAMS), one fed with every
classified frame's shift_p_value (the conformal p-value of g's energy: the robust h barely reacts to
noise or blur, g does), one with its input_shift_p_value (the conformal p-value of the frame's low-level
statistics, core.frame_statistics: what no model score sees, e.g. JPEG artefacts). Each alarms at A =
threshold_for_rate(shift.alarms_per_hour / 2, shift.rate_hz), so each raises <= alarms_per_hour / 2 false
alarms an hour on a clean camera at rate_hz, and the camera, which alarms when either does, <=
alarms_per_hour (union bound: the long-run rates add; no independence between the two streams is needed).
Assumption: on a clean camera each stream's p-values are i.i.d. super-uniform (frames exchangeable with
the reference frames; against one fixed reference set only marginally so, see core.stream_shift), which
for the frame statistics includes the same image path as calibration: [0, 1] pixels, no input.mean/std,
no JPEG transport, no resizing (a camera that differs there is flagged, by design). A detector restarts
after its alarm, so the camera stays flagged `distribution_shift` for `hold` frames from an alarm
(counting it), hold = ceil(ln A / ln(1 + lam/2)): the frames a restarted detector needs to alarm again
when every p-value is <= 1/4 (each bet >= 1 + lam/2). So a stream whose p-values stay <= 1/4 stays
flagged without a gap, a weaker shift is flagged `hold` frames per alarm, and each false alarm flags a
clean camera for `hold` frames. Without an OOD model the mixer publishes p-values 1, each bet is
1 - lam < 1 and the statistics stay 0: no alarm.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

from mix_perception.core.names import ACCEPTANCE_SCORES
from mix_perception.core.risk_control import check_level
from mix_perception.core.stream_shift import ShiftDetector, threshold_for_rate
from mix_perception.ros.safety_rules import Evidence

SHIFT_STREAMS = ("energy", "input")  # the p-values a camera's detectors watch: shift_p_value, input_shift_p_value


def acceptance_score(name: str, frame, required_radius: float) -> float:
    """Score `name` (ACCEPTANCE_SCORES) of `frame`, any object with MixedClassification's fields
    (certified, certified_radius, probabilities, class_id, standard_class_id); -inf when the frame is not
    certified at required_radius, or for *_if_g_agrees when g's class is not the published class."""
    if not (frame.certified and frame.certified_radius >= required_radius):
        return -math.inf
    if name.endswith("_if_g_agrees") and frame.standard_class_id != frame.class_id:
        return -math.inf
    if name.startswith("radius"):
        return float(frame.certified_radius)
    top, runner_up = (sorted(map(float, frame.probabilities), reverse=True) + [0.0, 0.0])[:2]
    return top if name == "top_probability" else top - runner_up


class Acceptance(NamedTuple):
    """The acceptance rule (score name, threshold) and the Learn-then-Test guarantee it was calibrated with:
    P(wrong | accepted) <= epsilon w.p. >= 1 - delta over calibration_size frames; coverage: accepted fraction."""

    score: str
    threshold: float
    epsilon: float
    delta: float
    calibration_size: int
    coverage: float
    pipeline: str
    radius: float

    def covers(self, frame, required_radius: float) -> bool:
        """True when `frame` (MixedClassification's `pipeline`) comes from the calibrated pipeline and the
        monitor requires the calibrated radius."""
        return frame.pipeline == self.pipeline and required_radius == self.radius


class Shift(NamedTuple):
    """Alarm level `threshold` (A, > 1) and bet `lam` of each of a camera's detectors (one per SHIFT_STREAMS);
    the false-alarm rate they guarantee together (alarms_per_hour at rate_hz frames per second)."""

    threshold: float
    lam: float
    alarms_per_hour: float
    rate_hz: float

    @property
    def hold(self) -> int:
        """Frames flagged from an alarm: ceil(ln A / ln(1 + lam/2)) (module docstring)."""
        return math.ceil(math.log(self.threshold) / math.log1p(self.lam / 2.0))


class ShiftWatch:
    """One camera's ShiftDetectors (one per SHIFT_STREAMS) and its distribution_shift flag; `alarms` counts
    each detector's alarms ({stream: count})."""

    def __init__(self, shift: Shift):
        self.detectors = {stream: ShiftDetector(shift.threshold, shift.lam) for stream in SHIFT_STREAMS}
        self.hold = shift.hold
        self.left = 0
        self.alarms = dict.fromkeys(SHIFT_STREAMS, 0)

    def update(self, p_values: Sequence[float]) -> bool:
        """Feed one frame's p-values (one per SHIFT_STREAMS, in that order); True while the camera is flagged
        (this frame included)."""
        for stream, p_value in zip(SHIFT_STREAMS, p_values, strict=True):
            if self.detectors[stream].update(p_value):
                self.alarms[stream] += 1
                self.left = self.hold
        flagged = self.left > 0
        self.left = max(self.left - 1, 0)
        return flagged


class Guarantee(NamedTuple):
    """What the monitor checks beyond the certificate: acceptance (None: no rule), ood_level (0: off),
    shift (None: off)."""

    acceptance: Acceptance | None
    ood_level: float
    shift: Shift | None

    def evidence(self, frame, required_radius: float, shifted: bool) -> Evidence:
        """What this layer finds about a classified frame (fields as `acceptance_score`, plus ood_p_value);
        `shifted`: its camera's ShiftWatch flag."""
        rule = self.acceptance
        certified = frame.certified and frame.certified_radius >= required_radius
        other = rule is not None and not rule.covers(frame, required_radius)
        below = rule is not None and certified and acceptance_score(rule.score, frame, required_radius) < rule.threshold
        outlier = self.ood_level > 0 and frame.ood_p_value <= self.ood_level
        return Evidence(other, below, outlier, shifted)

    def values(self) -> dict:
        """The guarantee as /diagnostics reports it."""
        rule = self.acceptance or Acceptance("none", -math.inf, 0.0, 0.0, 0, 1.0, "", 0.0)
        shift = self.shift
        return {
            "acceptance_score": rule.score,
            "acceptance_threshold": rule.threshold,
            "epsilon": rule.epsilon,
            "delta": rule.delta,
            "calibration_size": rule.calibration_size,
            "expected_coverage": rule.coverage,
            "calibrated_pipeline": rule.pipeline,
            "calibrated_radius": rule.radius,
            "ood_level": self.ood_level,
            "shift_threshold": shift.threshold if shift else 0.0,
            "shift_false_alarms_per_hour": shift.alarms_per_hour if shift else 0.0,
            "shift_rate_hz": shift.rate_hz if shift else 0.0,
            "shift_hold_frames": shift.hold if shift else 0,
        }


def acceptance_from(values: dict) -> Acceptance | None:
    """Acceptance from the acceptance.* parameters (None when acceptance.score is ""); ValueError (one line)
    for an unknown score, or a score without its statistics."""
    score = values["acceptance.score"]
    if not score:
        return None
    if score not in ACCEPTANCE_SCORES:
        raise ValueError(f'acceptance.score must be "" or one of {", ".join(ACCEPTANCE_SCORES)}, got {score!r}')

    epsilon = check_level("acceptance.epsilon", values["acceptance.epsilon"])
    delta = check_level("acceptance.delta", values["acceptance.delta"])
    size, coverage = values["acceptance.calibration_size"], values["acceptance.coverage"]
    if size <= 0:
        raise ValueError(f"acceptance.score {score} needs acceptance.calibration_size > 0, got {size}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"acceptance.score {score} needs acceptance.coverage in (0, 1], got {coverage}")
    pipeline, radius = values["acceptance.pipeline"], values["acceptance.radius"]
    if not pipeline or radius <= 0:
        raise ValueError(
            f"acceptance.score {score} needs acceptance.pipeline and acceptance.radius > 0 (what it was calibrated "
            "on, written by mix-perception calibrate --goal risk)"
        )
    return Acceptance(score, values["acceptance.threshold"], epsilon, delta, size, coverage, pipeline, radius)


def shift_from(values: dict) -> Shift | None:
    """Shift from the shift.* parameters (None when shift.alarms_per_hour is 0); ValueError (one line) for an
    inconsistent one."""
    if values["shift.alarms_per_hour"] <= 0:
        return None
    lam = check_level("shift.lam", values["shift.lam"])
    rate = values["shift.alarms_per_hour"] / len(SHIFT_STREAMS)  # the union bound: each detector half
    threshold = threshold_for_rate(rate, values["shift.rate_hz"])
    if threshold <= 1.0:
        raise ValueError("shift.alarms_per_hour must be below twice the frames of an hour, 7200 x shift.rate_hz")
    return Shift(threshold, lam, values["shift.alarms_per_hour"], values["shift.rate_hz"])


def guarantee_from(values: dict) -> Guarantee:
    """Guarantee from the safety monitor's parameters; ValueError (one line) for an inconsistent one."""
    level = values["ood.level"]
    if not 0.0 <= level < 1.0:
        raise ValueError(f"ood.level must be in [0, 1), got {level}")
    return Guarantee(acceptance_from(values), level, shift_from(values))
