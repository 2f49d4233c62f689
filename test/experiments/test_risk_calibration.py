"""Calibrating the safety verdict (`calibrate --goal risk`, experiments/risk_calibration.py): the acceptance
rule of constructed cases, the OOD model file the mixer reads, the parameter file's names, refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml

from mix_perception import cli
from mix_perception.core import ood
from mix_perception.experiments import risk_calibration as rc
from mix_perception.ros import parameters

# The names the verdict's parameters have in the nodes: calibrate writes the monitor's verdict (and its
# required radius) in full, and only mixer parameters.
MIXER_NAMES = {spec.name for spec in parameters.MIXER}
MONITOR_NAMES = {"required_radius"} | {spec.name for spec in parameters.SAFETY_MONITOR if "." in spec.name}
ACCEPTANCE_SCORE_NAMES = {"top_probability", "radius", "margin", "margin_if_g_agrees", "radius_if_g_agrees"}


def constructed_scores(n: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Scores uniform in (0, 1); a frame is wrong only when its score < 0.3 (then with probability 1/2)."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    wrong = (s < 0.3) & (rng.random(n) < 0.5)
    return {"top_probability": s, "radius": -s}, wrong


def test_acceptance_picks_the_informative_score_and_a_threshold_above_the_errors():
    scores, wrong = constructed_scores(3000)
    calibration = rc.calibrate_acceptance(scores, wrong, 600, 0.01, 0.05)
    assert calibration.score == "top_probability"
    g = calibration.guarantee
    assert not g.refused and g.threshold >= 0.29 and g.n == 2400
    assert g.wrong <= 0.01 * g.accepted and 0.6 < g.coverage < 0.75
    accepted = scores["top_probability"][600:] >= g.threshold
    assert g.accepted == accepted.sum() and g.wrong == wrong[600:][accepted].sum()


def test_acceptance_refuses_when_too_few_frames_can_show_the_risk():
    scores, wrong = constructed_scores(400)
    assert rc.calibrate_acceptance(scores, wrong, 100, 0.001, 0.05).guarantee.refused
    with pytest.raises(ValueError, match="selection"):
        rc.calibrate_acceptance(scores, wrong, 400, 0.01, 0.05)


def test_acceptance_scores_are_minus_infinity_unless_certified():
    outputs = rc.FrameOutputs(
        pred=np.array([0, 1, 1]),
        probs=np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]]),
        radius=np.array([0.2, 0.05, 0.3]),
        g_logits=torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
        h_features=torch.zeros(3, 4, dtype=torch.float64),
        input_statistics=torch.zeros(3, 7, dtype=torch.float64),
    )
    scores = rc.acceptance_scores(outputs, 0.1)
    assert set(scores) == ACCEPTANCE_SCORE_NAMES
    assert np.allclose(scores["top_probability"], [0.9, -np.inf, 0.6])
    assert np.allclose(scores["margin"], [0.8, -np.inf, 0.2])
    assert np.allclose(scores["radius_if_g_agrees"], [0.2, -np.inf, -np.inf])


def run_calibrate(out, *extra) -> int:
    argv = [
        "calibrate", "--goal", "risk", "--limit", "400", "--selection", "150", "--test-limit", "200",
        "--ood-fit-data", "test", "--ood-fit-limit", "600", "--device", "cpu", "--quiet", "--out", str(out), *extra,
    ]  # fmt: skip
    return cli.main(argv)


@pytest.mark.slow  # the embedded models' proven constant and three passes over a few hundred frames
def test_calibrate_risk_writes_files_the_nodes_accept(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_calibrate(out, "--max-risk", "0.05", "--delta", "0.1", "--radius", "0.05") == 0
    printed = capsys.readouterr().out
    assert "Learn-then-Test on 250 frames" in printed and "test (200 frames)" in printed
    model = ood.OODModel.load(out / "ood_model.pt")  # the mixer's own reader
    assert model.classes == 10 and model.calibration_scores.shape == (150,)  # the selection frames
    assert model.energy_scores.shape == model.input_scores.shape == (400,)  # all calibration frames
    files = yaml.safe_load((out / "mixer_risk.yaml").read_text())
    mixer, monitor = (files[f"/**/{node}"]["ros__parameters"] for node in ("mixer", "safety_monitor"))
    assert set(parameters.flatten(mixer)) <= MIXER_NAMES
    assert set(parameters.flatten(monitor)) == MONITOR_NAMES
    assert mixer["ood_model"] == str((out / "ood_model.pt").resolve()) and mixer["certification"] == "lipschitz"
    assert mixer["required_radius"] == monitor["required_radius"] == 0.05
    assert monitor["acceptance"]["score"] in ACCEPTANCE_SCORE_NAMES
    report = json.loads((out / "risk_calibration.json").read_text())
    assert monitor["acceptance"]["threshold"] == report["acceptance"]["threshold"]
    assert monitor["acceptance"]["calibration_size"] == 250 and monitor["acceptance"]["epsilon"] == 0.05
    assert 0 <= report["test"]["passed"] <= report["test"]["accepted"] <= report["test"]["certified"]


@pytest.mark.slow  # the embedded models' proven constant and a pass over the calibration frames
def test_calibrate_risk_refuses_when_no_threshold_is_valid(tmp_path, capsys):
    assert run_calibrate(tmp_path / "out", "--max-risk", "0.0001") == 2
    error = capsys.readouterr().err.strip()
    assert "no threshold is valid" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "mixer_risk.yaml").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(("--max-risk", "0"), "--max-risk must be in (0, 1)"), (("--delta", "1.5"), "--delta must be in (0, 1)"),
     (("--ood-level", "1"), "--ood-level must be in (0, 1)"), (("--alpha", "0.5"), "alpha <= 1/2")],
)  # fmt: skip
def test_calibrate_risk_refuses_levels_outside_the_unit_interval(tmp_path, capsys, extra, message):
    assert run_calibrate(tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_the_ood_model_needs_every_class_among_its_fit_frames():
    fit = rc.FrameOutputs(None, None, None, torch.zeros(6, 3), torch.rand(6, 4), torch.rand(6, 7))
    reference = rc.FrameOutputs(None, None, None, torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"classes \[1\] have no frame"):
        rc.fit_ood_model(fit, torch.tensor([0, 0, 2, 2, 0, 2]), reference, reference)


def test_the_shipped_ood_model_matches_its_card():
    from importlib import resources

    folder = resources.files("mix_perception").joinpath("default_models")
    card = json.loads(folder.joinpath("ood_lipschitz.json").read_text())
    model = ood.OODModel.load(str(folder.joinpath(card["file"])))  # the mixer's reader: shapes, finite values
    assert (model.classes, model.feature_width) == (10, 256)
    assert model.calibration_scores.shape == (600,) and model.energy_scores.shape == model.input_scores.shape == (2000,)
    assert torch.allclose(model.mahalanobis.precision, model.mahalanobis.precision.T)
    assert hashlib.sha256(folder.joinpath(card["file"]).read_bytes()).hexdigest() == card["sha256"]


def test_the_calibrated_scores_are_the_ones_the_monitor_computes():
    """calibrate's vectorized acceptance scores equal the safety monitor's own, frame by frame, on the
    FrameResults the mixer publishes (one definition of each score, two implementations)."""
    from types import SimpleNamespace

    from mix_perception.core.models import load_model
    from mix_perception.experiments.data import load_split
    from mix_perception.ros.inference import Certification, FrameClassifier
    from mix_perception.ros.safety_guarantee import acceptance_score

    g, h = load_model("default:standard"), load_model("default:lipschitz")
    classifier = FrameClassifier(g, h, Certification("lipschitz", 12.0), input_shape=(1, 28, 28))
    x = load_split("test").images[:40]
    vectorized = rc.acceptance_scores(rc.frame_outputs(classifier, x, 0.65, 0.1), 0.1)
    for i, result in enumerate(classifier.classify(x, 0.65, 0.1)):
        frame = SimpleNamespace(**result._asdict())
        for name, scores in vectorized.items():
            assert acceptance_score(name, frame, 0.1) == pytest.approx(scores[i], rel=1e-6), name
