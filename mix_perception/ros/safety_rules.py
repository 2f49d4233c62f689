"""The safety monitor's rules as pure functions: facts about a frame in, a verdict out.

A frame is safe iff it is certified (a certificate from the mixer, not an estimate) at a radius
>= `required_radius`, computed with alpha > 1/2, not older than `max_frame_age`, and the statistical
layer (`safety_guarantee`: acceptance rule, OOD level, stream shift) found nothing against it. A
rejected input is unsafe. A stream with no frame for longer than `max_frame_age` is stale (unsafe).
Every rule that fails adds its named reason; reasons are joined by "; " in that order.
"""

from typing import NamedTuple

# Named reasons (the SafetyStatus.reason vocabulary).
NOT_CERTIFIED = "not_certified"  # the mixer published no certificate for the frame
RADIUS_BELOW_REQUIRED = "radius_below_required"  # certified, but at a radius < required_radius
ALPHA_NOT_ABOVE_HALF = "alpha_not_above_half"  # alpha <= 1/2: no certificate is possible
FRAME_TOO_OLD = "frame_too_old"  # now - header.stamp > max_frame_age
STALE_STREAM = "stale_stream"  # no frame (classified or rejected) for longer than max_frame_age
BAD_INPUT = "bad_input"  # the mixer rejected the frame (bad encoding, size, ...)
NOT_CALIBRATED = "not_calibrated"  # the acceptance rule was calibrated on another pipeline or required_radius
BELOW_ACCEPTANCE_THRESHOLD = "below_acceptance_threshold"  # certified, but its acceptance score < the threshold
OUT_OF_DISTRIBUTION = "out_of_distribution"  # the frame's OOD p-value <= ood.level
DISTRIBUTION_SHIFT = "distribution_shift"  # its camera's shift detector alarmed (within the hold)
REASONS = (
    NOT_CERTIFIED,
    RADIUS_BELOW_REQUIRED,
    ALPHA_NOT_ABOVE_HALF,
    FRAME_TOO_OLD,
    STALE_STREAM,
    BAD_INPUT,
    NOT_CALIBRATED,
    BELOW_ACCEPTANCE_THRESHOLD,
    OUT_OF_DISTRIBUTION,
    DISTRIBUTION_SHIFT,
)

# Levels, as diagnostic_msgs/DiagnosticStatus and SafetyStatus use them.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


class Limits(NamedTuple):
    """required_radius (input units of the certificate's norm, >= 0); max_frame_age (seconds, > 0)."""

    required_radius: float
    max_frame_age: float


class Evidence(NamedTuple):
    """What the statistical layer found against a frame (safety_guarantee.Guarantee.evidence)."""

    not_calibrated: bool = False
    below_acceptance_threshold: bool = False
    out_of_distribution: bool = False
    distribution_shift: bool = False


NOTHING_FOUND = Evidence()


class Verdict(NamedTuple):
    safe: bool
    level: int
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def judge_frame(
    certified: bool, radius: float, alpha: float, age: float, limits: Limits, evidence: Evidence = NOTHING_FOUND
) -> Verdict:
    """Verdict on one classified frame. `age` = receipt time - header stamp, seconds."""
    reasons = []
    if alpha <= 0.5:
        reasons.append(ALPHA_NOT_ABOVE_HALF)
    if not certified:
        reasons.append(NOT_CERTIFIED)
    elif not radius >= limits.required_radius:  # also catches NaN
        reasons.append(RADIUS_BELOW_REQUIRED)
    if not age <= limits.max_frame_age:
        reasons.append(FRAME_TOO_OLD)
    named = (NOT_CALIBRATED, BELOW_ACCEPTANCE_THRESHOLD, OUT_OF_DISTRIBUTION, DISTRIBUTION_SHIFT)
    reasons += [reason for reason, found in zip(named, evidence, strict=True) if found]
    return Verdict(not reasons, ERROR if reasons else OK, tuple(reasons))


def judge_rejected() -> Verdict:
    """Verdict on a frame the mixer could not use."""
    return Verdict(False, ERROR, (BAD_INPUT,))


def judge_stream(silence: float, limits: Limits) -> Verdict | None:
    """Watchdog: a STALE verdict when no frame arrived for longer than max_frame_age, else None."""
    if silence > limits.max_frame_age:
        return Verdict(False, STALE, (STALE_STREAM,))
    return None


def next_consecutive(count: int, verdict: Verdict) -> int:
    """Unsafe verdicts in a row including this one; 0 after a safe one."""
    return 0 if verdict.safe else count + 1
