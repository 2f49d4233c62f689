"""What the safety monitor's OK means beyond the certificate (issue 18), with real nodes over DDS: the
acceptance rule, out_of_distribution, distribution_shift per camera, the guarantee on /diagnostics,
startup refusals; and the mixer's OOD score against core.ood on the same frame.

The monitor and the mixer run in this process (their own namespaces); the test publishes real
MixedClassification / Image messages and listens to what the nodes publish.
"""

import math
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from mix_perception.msg import MixedClassification, SafetyStatus
from mix_perception.ros.diagnostics import values_of
from mix_perception.ros.image_conversion import array_to_image
from mix_perception.ros.mixer_node import start_mixer
from mix_perception.ros.safety_monitor import STATUS_QOS, SafetyMonitorNode

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
GUARANTEE = {
    "required_radius": 0.1,
    "acceptance.score": "margin",
    "acceptance.threshold": 0.4,
    "acceptance.epsilon": 0.02,
    "acceptance.delta": 0.1,
    "acceptance.calibration_size": 1500,
    "acceptance.coverage": 0.7,
    "acceptance.pipeline": "0123456789abcdef",
    "acceptance.radius": 0.1,
    "ood.level": 0.05,
    "shift.alarms_per_hour": 1.0,
    "shift.rate_hz": 30.0,
    "diagnostics_period": 0.1,
}


def overrides(values: dict) -> list:
    return [Parameter(name, value=value) for name, value in values.items()]


@pytest.fixture(scope="module")
def monitor(ros, spin):
    """A safety monitor with the GUARANTEE under /verdict: (judge(source, ...) -> its status of a frame,
    the /diagnostics arrays received, wait(predicate, what) spinning until predicate() is truthy)."""
    context, node, executor = ros
    monitor = SafetyMonitorNode(context=context, namespace="/verdict", parameter_overrides=overrides(GUARANTEE))
    executor.add_node(monitor)
    statuses, diagnostics = [], []
    node.create_subscription(SafetyStatus, "/verdict/safety_monitor/status", statuses.append, STATUS_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    publisher = node.create_publisher(MixedClassification, "/verdict/mixer/classification", RELIABLE)
    spin(executor, lambda: publisher.get_subscription_count() >= 1, 30.0, "the monitor's subscription")
    count = [0]

    def judge(
        source: str,
        p_value=0.5,
        probabilities=(0.8, 0.1, 0.1),
        radius=0.3,
        shift_p=0.5,
        input_p=0.5,
        pipeline="0123456789abcdef",
    ):
        """Publish one certified frame of `source` (class 0; g agrees) and return the monitor's status of it."""
        count[0] += 1
        frame_id = f"frame_{count[0]}"
        msg = MixedClassification(
            source=source,
            class_id=0,
            standard_class_id=0,
            probabilities=list(probabilities),
            alpha=0.8,
            certified=radius > 0,
            certified_radius=radius,
            certificate=MixedClassification.CERTIFICATE_LIPSCHITZ if radius > 0 else 0,
            norm="l2",
            certificate_confidence=1.0,
            ood_score=1.0,
            ood_p_value=p_value,
            shift_p_value=shift_p,
            input_shift_p_value=input_p,
            pipeline=pipeline,
        )
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        publisher.publish(msg)
        found = lambda: next((s for s in statuses if s.header.frame_id == frame_id), None)  # noqa: E731
        return spin(executor, found, 30.0, f"the status of {frame_id}")

    def wait(predicate, what: str):
        return spin(executor, predicate, 30.0, what)

    yield judge, diagnostics, wait
    executor.remove_node(monitor)
    monitor.destroy_node()


def test_acceptance_rule_refuses_a_certified_frame_below_its_threshold(monitor):
    judge, _, _ = monitor
    assert judge("/cam_accept", probabilities=(0.8, 0.1, 0.1)).safe  # margin 0.7 >= 0.4
    low = judge("/cam_accept", probabilities=(0.55, 0.35, 0.1))  # margin 0.2
    assert not low.safe and list(low.reasons) == ["below_acceptance_threshold"] and low.level == SafetyStatus.ERROR
    uncertified = judge("/cam_accept", probabilities=(0.55, 0.35, 0.1), radius=0.0)
    assert list(uncertified.reasons) == ["not_certified"]  # the certificate's reason, not the acceptance one


def test_a_frame_of_another_pipeline_is_refused_as_not_calibrated(monitor):
    """E.g. alpha changed at runtime: the mixer's fingerprint changes, the calibrated threshold no longer applies."""
    judge, _, _ = monitor
    other = judge("/cam_accept", pipeline="fedcba9876543210")
    assert not other.safe and list(other.reasons) == ["not_calibrated"]


def test_out_of_distribution_on_a_low_p_value(monitor):
    judge, _, _ = monitor
    flagged = judge("/cam_ood", p_value=0.01)
    assert not flagged.safe and flagged.reason == "out_of_distribution"
    assert judge("/cam_ood", p_value=0.06).safe


def test_distribution_shift_flags_only_the_cameras_whose_p_values_run_low(monitor):
    """Each camera's two detectors watch shift_p_value (g's energy) and input_shift_p_value (frame
    statistics), not ood_p_value, each at half the rate: A = 3600 x 30 / 0.5. A run of p = 0.1 is evidence
    against the calibration data: each bet is 1 + 0.5 (1 - 0.2) = 1.4, so a detector alarms at the
    ceil(ln A / ln 1.4) = 37th frame, whichever stream runs low; the clean camera stays OK throughout."""
    judge, diagnostics, wait = monitor
    first_alarm = math.ceil(math.log(7200 * 30.0) / math.log(1.4))
    energy, frames, clean = [], [], []
    for frame in range(first_alarm + 5):
        energy.append(judge("/cam_shift", shift_p=0.1))
        frames.append(judge("/cam_jpeg", input_p=0.1))
        clean.append(judge("/cam_clean", p_value=0.01 if frame % 10 == 0 else 0.6, shift_p=0.6, input_p=0.6))
    for shifted in (energy, frames):
        assert all(s.safe for s in shifted[: first_alarm - 1])
        assert all(list(s.reasons) == ["distribution_shift"] for s in shifted[first_alarm - 1 :])
    assert all(s.safe or list(s.reasons) == ["out_of_distribution"] for s in clean)  # low OOD p-values: no shift

    def camera_status(source):
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.endswith(f"safety {source}"):
                    return values_of(status)
        return None

    def reported(source):
        values = camera_status(source)
        return values if values and values.get("reason_distribution_shift") == "6" else None

    values = wait(lambda: reported("/cam_shift"), "the shift alarms on /diagnostics")
    assert (values["shift_alarms_energy"], values["shift_alarms_input"]) == ("1", "0")
    assert values["shift_hold_frames"] == "56"
    assert (values["acceptance_score"], values["acceptance_threshold"], values["epsilon"]) == ("margin", "0.4", "0.02")
    assert (values["delta"], values["calibration_size"], values["expected_coverage"]) == ("0.1", "1500", "0.7")
    assert (values["ood_level"], values["shift_false_alarms_per_hour"]) == ("0.05", "1")
    assert values["shift_threshold"] == "2.16e+05"
    values = wait(lambda: reported("/cam_jpeg"), "the input-statistics alarm on /diagnostics")
    assert (values["shift_alarms_energy"], values["shift_alarms_input"]) == ("0", "1")
    clean_values = camera_status("/cam_clean")
    assert (clean_values["shift_alarms_energy"], clean_values["shift_alarms_input"]) == ("0", "0")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"acceptance.epsilon": 1.0}, r"^acceptance.epsilon must be in \(0, 1\), got 1.0$"),
        ({"acceptance.delta": 0.0}, r"^acceptance.delta must be in \(0, 1\), got 0.0$"),
        ({"acceptance.calibration_size": 0}, r"^acceptance.score margin needs acceptance.calibration_size > 0"),
        ({"acceptance.epsilon": 1.5}, r"acceptance.epsilon out of range"),
    ],
)
def test_the_monitor_refuses_a_guarantee_without_its_statistics_at_startup(ros, changes, message):
    context, _, _ = ros
    with pytest.raises(Exception, match=message):
        SafetyMonitorNode(context=context, namespace="/refused", parameter_overrides=overrides(GUARANTEE | changes))


@pytest.mark.slow
def test_the_monitor_executable_exits_with_one_line_on_a_score_without_statistics(start_node):
    node = start_node("safety_monitor", {"acceptance.score": "radius"}, namespace="/refused_process")
    deadline = time.monotonic() + 60
    while node.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.stop() == 1
    lines = [line for line in node.output().splitlines() if line.strip()]
    assert lines == ["safety_monitor: error: acceptance.epsilon must be in (0, 1), got 0.0"]


# --- the mixer's OOD score ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ood_files(tmp_path_factory):
    """(a fitted OOD model of the embedded Lipschitz h, a file of the wrong feature width, h, test frames):
    means and precision from 300 calibration-split images, the conformal scores of 200 others."""
    from mix_perception.core.frame_statistics import frame_statistics
    from mix_perception.core.models import load_default
    from mix_perception.core.ood import OODModel, energy, fit_input_statistics, fit_mahalanobis, penultimate_features
    from mix_perception.experiments.data import load_split

    h, g = load_default("lipschitz").double().eval(), load_default("standard").eval()
    calibration = load_split("calibration")
    chosen = torch.randperm(len(calibration.labels), generator=torch.Generator().manual_seed(0))[:500]
    labels = calibration.labels[chosen]  # the split is ordered by class: a random 500, every class in the first 300
    with torch.no_grad():
        features, _ = penultimate_features(h, calibration.images[chosen].double())
        energies = energy(g(calibration.images[chosen[300:]]))
    stats = fit_mahalanobis(features[:300], labels[:300])
    pixels = frame_statistics(calibration.images[chosen])
    frames_stats = fit_input_statistics(pixels[:300])
    references = energies, frames_stats, frames_stats.score(pixels[300:])
    folder = tmp_path_factory.mktemp("ood")
    OODModel.create(stats, stats.score(features[300:]), *references).save(folder / "ood.pt")
    narrow = fit_mahalanobis(features[:300, :128], labels[:300])
    OODModel.create(narrow, narrow.score(features[300:, :128]), *references).save(folder / "narrow.pt")
    frames = (load_split("test").images[:3, 0].numpy() * 255).round().astype(np.uint8)
    return folder / "ood.pt", folder / "narrow.pt", (h, g), frames


MIXER = {"device": "cpu", "cpu_threads": 1, "alpha": 0.8}


def test_the_mixer_publishes_the_ood_score_and_p_values_of_core_ood(ros, spin, ood_files):
    from mix_perception.core.frame_statistics import frame_statistics
    from mix_perception.core.ood import OODModel, conformal_p_values, penultimate_features

    context, node, executor = ros
    path, _, (h, g), frames = ood_files
    mixer = start_mixer(
        context=context, namespace="/ood", parameter_overrides=overrides(MIXER | {"ood_model": str(path)})
    )
    executor.add_node(mixer)
    received = []
    node.create_subscription(MixedClassification, "/ood/mixer/classification", received.append, RELIABLE)
    images = node.create_publisher(Image, "/ood/image", qos_profile_sensor_data)
    try:
        spin(executor, lambda: images.get_subscription_count() >= 1, 30.0, "the mixer's image subscription")
        for index, pixels in enumerate(frames):
            image = array_to_image(pixels, "mono8")
            image.header.frame_id = f"ood_{index}"
            classified = lambda name=image.header.frame_id: any(m.header.frame_id == name for m in received)  # noqa: E731
            for _ in range(60):  # best effort: publish until classified, twice a second (a flood of frames
                images.publish(image)  # would keep the GIL from the mixer's inference thread)
                if spin(executor, classified, 0.5, "the classification", required=False):
                    break
            assert classified(), "no classification"
    finally:
        executor.remove_node(mixer)
        mixer.destroy_node()
    model = OODModel.load(path)
    with torch.no_grad():  # the node's input: float32 pixels / 255, h's float64 copy
        x = (torch.from_numpy(frames).float() * (1.0 / 255.0)).double().unsqueeze(1)
        scores, p_values = model.score(penultimate_features(h, x)[0])
        shift_p_values = model.shift_p_values(g(x.float()))
        distances = model.input_statistics.score(frame_statistics(x.float()))
        input_p_values = conformal_p_values(model.input_scores, distances)
    for index in range(len(frames)):
        msg = next(m for m in received if m.header.frame_id == f"ood_{index}")
        assert msg.ood_score == pytest.approx(float(scores[index]), rel=1e-5)
        assert msg.ood_p_value == pytest.approx(float(p_values[index]), rel=1e-6)
        assert msg.shift_p_value == pytest.approx(float(shift_p_values[index]), rel=1e-6)
        assert msg.input_shift_p_value == pytest.approx(float(input_p_values[index]), rel=1e-6)
        assert 0 <= msg.standard_class_id < 10


def test_the_mixer_refuses_an_ood_model_of_another_feature_width_at_configure(ros, ood_files):
    context, _, _ = ros
    _, narrow, _, _ = ood_files
    with pytest.raises(RuntimeError) as refused:
        start_mixer(
            context=context, namespace="/ood_narrow", parameter_overrides=overrides(MIXER | {"ood_model": str(narrow)})
        )
    assert str(refused.value) == (
        "OOD model is for 10 classes and 128 features, h has 10 classes and 256 features "
        "(the input width of its last nn.Linear)"
    )
