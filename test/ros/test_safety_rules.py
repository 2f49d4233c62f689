"""The safety monitor's pure rules."""

import math

import pytest

from mix_perception.ros import safety_rules as rules

LIMITS = rules.Limits(required_radius=0.1, max_frame_age=0.5)


@pytest.mark.parametrize(
    "certified, radius, alpha, age, reasons",
    [
        (True, 0.2, 0.75, 0.01, ()),
        (True, 0.1, 0.75, 0.5, ()),  # boundaries are safe
        (True, 0.05, 0.75, 0.01, (rules.RADIUS_BELOW_REQUIRED,)),
        (False, 0.0, 0.75, 0.01, (rules.NOT_CERTIFIED,)),
        (False, 0.0, 0.5, 0.01, (rules.ALPHA_NOT_ABOVE_HALF, rules.NOT_CERTIFIED)),
        (True, 0.2, 0.75, 0.6, (rules.FRAME_TOO_OLD,)),
        (True, math.nan, 0.75, 0.01, (rules.RADIUS_BELOW_REQUIRED,)),
        (True, 0.2, 0.75, math.nan, (rules.FRAME_TOO_OLD,)),
        (False, 0.0, 0.3, 9.0, (rules.ALPHA_NOT_ABOVE_HALF, rules.NOT_CERTIFIED, rules.FRAME_TOO_OLD)),
    ],
)
def test_judge_frame(certified, radius, alpha, age, reasons):
    verdict = rules.judge_frame(certified, radius, alpha, age, LIMITS)
    assert verdict.reasons == reasons
    assert verdict.safe is (not reasons)
    assert verdict.level == (rules.OK if not reasons else rules.ERROR)
    assert verdict.reason == "; ".join(reasons)


def test_required_radius_zero_still_needs_a_certificate():
    limits = rules.Limits(0.0, 0.5)
    assert rules.judge_frame(False, 0.0, 0.9, 0.0, limits).reasons == (rules.NOT_CERTIFIED,)
    assert rules.judge_frame(True, 0.0, 0.9, 0.0, limits).safe


def test_rejected_and_stale():
    assert rules.judge_rejected() == rules.Verdict(False, rules.ERROR, (rules.BAD_INPUT,))
    assert rules.judge_stream(0.4, LIMITS) is None
    stale = rules.judge_stream(0.6, LIMITS)
    assert stale.level == rules.STALE and stale.reasons == (rules.STALE_STREAM,) and not stale.safe


def test_consecutive_unsafe_counter():
    bad, good = rules.judge_rejected(), rules.judge_frame(True, 1.0, 0.9, 0.0, LIMITS)
    count = 0
    for verdict, expected in [(bad, 1), (bad, 2), (good, 0), (bad, 1)]:
        count = rules.next_consecutive(count, verdict)
        assert count == expected
