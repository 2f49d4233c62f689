"""The safety monitor's pure rules: the certificate, age and input rules, and the statistical layer."""

import math

import pytest

from mix_perception.ros import safety_guarantee as guarantee
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


# --- the statistical layer (safety_guarantee) ------------------------------------------------------


def frame(
    certified=True, radius=0.3, probabilities=(0.7, 0.2, 0.1), class_id=0, standard_class_id=0, p=0.5, pipeline=None
):
    """A MixedClassification with the fields the statistical layer reads."""
    from mix_perception.msg import MixedClassification

    return MixedClassification(
        certified=certified,
        certified_radius=radius,
        probabilities=list(probabilities),
        class_id=class_id,
        standard_class_id=standard_class_id,
        ood_p_value=p,
        alpha=0.8,
        pipeline=ACCEPTANCE["acceptance_pipeline"] if pipeline is None else pipeline,
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("radius", 0.3),
        ("top_probability", 0.7),
        ("margin", 0.5),
        ("margin_if_g_agrees", 0.5),
        ("radius_if_g_agrees", 0.3),
    ],
)
def test_acceptance_scores_of_a_certified_frame(name, expected):
    assert guarantee.acceptance_score(name, frame(), 0.1) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", guarantee.ACCEPTANCE_SCORES)
def test_acceptance_scores_are_minus_infinity_without_a_certificate_at_the_required_radius(name):
    assert guarantee.acceptance_score(name, frame(certified=False, radius=0.0), 0.1) == -math.inf
    assert guarantee.acceptance_score(name, frame(radius=0.05), 0.1) == -math.inf
    disagree = guarantee.acceptance_score(name, frame(standard_class_id=2), 0.1)
    assert (disagree == -math.inf) == name.endswith("_if_g_agrees")


def values(**changes):
    """The safety monitor's parameter defaults (rules off) with `changes` ("acceptance_score" = "acceptance.score")."""
    from mix_perception.ros import parameters

    table = parameters.defaults(parameters.SAFETY_MONITOR)
    return table | {name.replace("_", ".", 1): value for name, value in changes.items()}


ACCEPTANCE = {
    "acceptance_score": "margin",
    "acceptance_threshold": 0.4,
    "acceptance_epsilon": 0.05,
    "acceptance_delta": 0.1,
    "acceptance_calibration_size": 1000,
    "acceptance_coverage": 0.8,
    "acceptance_pipeline": "0123456789abcdef",
    "acceptance_radius": 0.1,
}


def test_the_defaults_check_nothing_beyond_the_certificate():
    rules_off = guarantee.guarantee_from(values())
    assert rules_off == guarantee.Guarantee(None, 0.0, None)
    assert rules_off.evidence(frame(p=1e-6, probabilities=(0.4, 0.39, 0.21)), 0.1, False) == rules.Evidence()


def test_acceptance_refuses_a_certified_frame_below_the_threshold_only():
    checks = guarantee.guarantee_from(values(**ACCEPTANCE))
    assert checks.acceptance == guarantee.Acceptance("margin", 0.4, 0.05, 0.1, 1000, 0.8, "0123456789abcdef", 0.1)
    assert checks.evidence(frame(), 0.1, False) == rules.Evidence()  # margin 0.5 >= 0.4
    low = frame(probabilities=(0.5, 0.4, 0.1))
    assert checks.evidence(low, 0.1, False) == rules.Evidence(below_acceptance_threshold=True)
    uncertified = frame(certified=False, radius=0.0, probabilities=(0.5, 0.4, 0.1))
    assert checks.evidence(uncertified, 0.1, False) == rules.Evidence()  # its reason is not_certified


def test_acceptance_refuses_frames_of_another_pipeline_or_at_another_required_radius():
    """The Learn-then-Test bound is about the calibrated pipeline at the calibrated radius: another alpha or
    other models (another fingerprint), or a monitor requiring another radius, get not_calibrated, even when
    the frame's score clears the threshold."""
    checks = guarantee.guarantee_from(values(**ACCEPTANCE))
    assert checks.evidence(frame(), 0.1, False) == rules.Evidence()
    assert checks.evidence(frame(pipeline="fedcba9876543210"), 0.1, False) == rules.Evidence(not_calibrated=True)
    assert checks.evidence(frame(radius=0.3), 0.2, False) == rules.Evidence(not_calibrated=True)
    verdict = rules.judge_frame(True, 0.3, 0.8, 0.0, LIMITS, checks.evidence(frame(pipeline=""), 0.1, False))
    assert not verdict.safe and verdict.reasons == (rules.NOT_CALIBRATED,)


def test_out_of_distribution_at_a_p_value_at_most_the_level():
    checks = guarantee.guarantee_from(values(ood_level=0.01))
    assert checks.evidence(frame(p=0.01), 0.1, False).out_of_distribution
    assert not checks.evidence(frame(p=0.02), 0.1, False).out_of_distribution


def test_judge_frame_names_the_statistical_reasons_after_the_others():
    found = rules.Evidence(True, True, True, True)
    verdict = rules.judge_frame(True, 0.2, 0.75, 0.9, LIMITS, found)
    assert verdict.reasons == (
        rules.FRAME_TOO_OLD,
        rules.NOT_CALIBRATED,
        rules.BELOW_ACCEPTANCE_THRESHOLD,
        rules.OUT_OF_DISTRIBUTION,
        rules.DISTRIBUTION_SHIFT,
    )
    assert not verdict.safe and verdict.level == rules.ERROR
    assert rules.judge_frame(True, 0.2, 0.75, 0.0, LIMITS, rules.Evidence(distribution_shift=True)).reasons == (
        rules.DISTRIBUTION_SHIFT,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({**ACCEPTANCE, "acceptance_epsilon": 0.0}, r"acceptance.epsilon must be in \(0, 1\), got 0.0"),
        ({**ACCEPTANCE, "acceptance_delta": 1.0}, r"acceptance.delta must be in \(0, 1\), got 1.0"),
        (
            {**ACCEPTANCE, "acceptance_calibration_size": 0},
            r"acceptance.score margin needs acceptance.calibration_size",
        ),
        ({**ACCEPTANCE, "acceptance_coverage": 0.0}, r"acceptance.score margin needs acceptance.coverage in \(0, 1\]"),
        ({**ACCEPTANCE, "acceptance_pipeline": ""}, r"acceptance.score margin needs acceptance.pipeline and "),
        ({**ACCEPTANCE, "acceptance_radius": 0.0}, r"acceptance.score margin needs acceptance.pipeline and "),
        ({**ACCEPTANCE, "acceptance_score": "entropy"}, r"acceptance.score must be \"\" or one of radius, "),
        ({"acceptance_score": "radius"}, r"acceptance.epsilon must be in \(0, 1\), got 0.0"),
        ({"ood_level": 1.0}, r"ood.level must be in \[0, 1\), got 1.0"),
        ({"shift_alarms_per_hour": 1.0, "shift_lam": 1.0}, r"shift.lam must be in \(0, 1\), got 1.0"),
        ({"shift_alarms_per_hour": 1e6, "shift_rate_hz": 1.0}, r"shift.alarms_per_hour must be below twice the frames"),
    ],
)
def test_a_guarantee_without_what_it_needs_is_refused_with_one_line(changes, message):
    with pytest.raises(ValueError, match=message) as refused:
        guarantee.guarantee_from(values(**changes))
    assert "\n" not in str(refused.value)


def test_shift_watch_flags_a_camera_from_either_detectors_alarm_for_hold_frames():
    from mix_perception.core.stream_shift import threshold_for_rate

    checks = guarantee.guarantee_from(values(shift_alarms_per_hour=1.0, shift_rate_hz=30.0))
    shift = checks.shift
    assert shift.threshold == threshold_for_rate(0.5, 30.0) and shift.lam == 0.5  # each detector: half the rate
    assert shift.hold == math.ceil(math.log(216000.0) / math.log(1.25)) == 56
    watch = guarantee.ShiftWatch(shift)
    assert not any(watch.update((0.5, 0.5)) for _ in range(1000))  # p = 1/2: the bet is 1, nothing accumulates
    low = [watch.update((1.0, 0.25)) for _ in range(3 * shift.hold)]  # input statistics: each bet 1 + lam/2
    first = low.index(True)
    assert first == shift.hold - 1 and watch.alarms["input"] >= 2 and watch.alarms["energy"] == 0
    assert all(low[first:])  # a shift that keeps p <= 1/4 stays flagged without a gap
    after = [watch.update((1.0, 1.0)) for _ in range(2 * shift.hold)]  # the stream is clean again
    assert after.index(False) <= shift.hold and not any(after[shift.hold :])
    energy_low = [watch.update((0.25, 1.0)) for _ in range(shift.hold)]  # now g's energy alone
    assert energy_low.index(True) == shift.hold - 1 and watch.alarms["energy"] == 1
    assert checks.values()["shift_hold_frames"] == 56 and checks.values()["shift_false_alarms_per_hour"] == 1.0
