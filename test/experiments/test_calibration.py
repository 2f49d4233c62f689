"""Calibration: the search picks the known answer of constructed cases (attack and certified goals),
the sharpening modules, and `mix-perception calibrate` writes a parameter file with the node's keys."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mix_perception import cli
from mix_perception.core.models import load_model
from mix_perception.core.smoothing import SmoothingSettings
from mix_perception.core.transforms import MixedNUTSLogits, Transform
from mix_perception.experiments import calibration, certified_curves, parameter_file
from mix_perception.experiments.attacks import PGDConfig
from mix_perception.experiments.batches import RunSettings
from mix_perception.experiments.data import Dataset
from mix_perception.ros import parameters

# The mixer's parameter names.
NODE_NAMES = {spec.name for spec in parameters.MIXER}

# A constructed case whose outcome is known in closed form. Images: 8 x 8, labels 1 (first half)
# and 2. g memorizes the images: on an exact image it predicts its label with certainty; anywhere
# else (every PGD point, since PGD starts at a random point of the eps-ball) it predicts class 3.
# h ignores its input: constant logits V. With p = softmax(s V) (s: sharpening), the mixture is
#   clean:    label 1 always right; label 2 right iff 1 - a + a p2 > a p1, i.e. a < 1 / (1 + p1 - p2)
#   attacked: label 1 right iff a p1 > 1 - a + a p3, i.e. a > 1 / (1 + p1 - p3); label 2 never.
ROBUST_LOGITS = [0.0, 3.0, 2.0, 0.5, 0.0]
CLASSES = len(ROBUST_LOGITS)


class Memorizer(nn.Module):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, other: int = 3, confidence: float = 30.0):
        super().__init__()
        self.register_buffer("images", images.flatten(1).clone())
        self.register_buffer("labels", labels.clone())
        self.other = other
        self.confidence = confidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.flatten(1).unsqueeze(1) - self.images.unsqueeze(0)).abs().amax(dim=-1)
        match = distance < 1e-6
        index = match.to(torch.float32).argmax(dim=1)
        label = torch.where(match.any(dim=1), self.labels[index], torch.full_like(index, self.other))
        logits = nn.functional.one_hot(label, 5).to(x.dtype) * self.confidence
        return logits + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)


def constructed_data(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator) * 0.8 + 0.1
    y = torch.tensor([1] * (n // 2) + [2] * (n - n // 2))
    return x, y


def constructed_dataset(x, y) -> Dataset:
    return Dataset(x, y, (), "constructed")


def candidate_grid(alphas, transforms) -> list:
    """(alpha, transform) for every transform, then every alpha: the order calibrate builds."""
    return [(a, t) for t in transforms for a in alphas]


def expected(alpha: float, scale: float) -> tuple[float, float]:
    """(clean accuracy, MIX accuracy) of the constructed case, from the closed form above."""
    p = torch.softmax(torch.tensor(ROBUST_LOGITS, dtype=torch.float64) * scale, 0).tolist()
    clean_2 = 1 - alpha + alpha * p[2] > alpha * p[1]
    attacked_1 = alpha * p[1] > 1 - alpha + alpha * p[3]
    return (1.0 + clean_2) / 2, attacked_1 / 2


ALPHAS = [0.3, 0.45, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0]
SCALES = [1.0, 2.0, 4.0]
CLI_ALPHAS = [0.3, 0.45, 0.55, 0.6, 0.8, 1.0]  # at scale 1 none is both accurate and robust; at scale 2, 0.55 is


def expected_choice(floor: float, alphas=ALPHAS, scales=SCALES):
    grid = [(a, s, *expected(a, s)) for a in alphas for s in scales]
    grid.sort(key=lambda c: (-c[2], -c[0], c[1]))
    return next((c for c in grid if c[3] >= floor), None)


@pytest.mark.parametrize("search", ["ordered", "bisect"])
@pytest.mark.parametrize("floor", [0.5, 0.25, 0.0])
def test_attack_goal_picks_the_known_answer(floor, search, constant_logits):
    x, y = constructed_data()
    standard, robust = Memorizer(x, y), constant_logits(ROBUST_LOGITS)
    result = calibration.calibrate_attack(
        standard,
        robust,
        constructed_dataset(x, y),
        candidate_grid(ALPHAS, calibration.transform_grid("logit_scale", SCALES)),
        calibration.Floor(floor, 0.0),
        calibration.AttackGoal(PGDConfig("linf", 0.05, 3), search=search),
        RunSettings(batch_size=5),
    )
    for c in result.candidates:
        clean, attacked = expected(c.alpha, c.transform.scale)
        assert c.clean_accuracy == clean
        if c.robust_accuracy is not None:
            assert c.robust_accuracy == attacked
    alpha, scale, clean, attacked = expected_choice(floor)
    assert (result.chosen.alpha, result.chosen.transform.scale) == (alpha, scale)
    assert result.chosen.clean_accuracy == clean and result.chosen.robust_accuracy == attacked
    if search == "ordered":  # only candidates at least as accurate as the answer were attacked
        assert all(c.clean_accuracy >= clean for c in result.candidates if c.robust_accuracy is not None)


def test_attack_goal_with_no_feasible_candidate_returns_none(constant_logits):
    x, y = constructed_data()
    result = calibration.calibrate_attack(
        Memorizer(x, y),
        constant_logits(ROBUST_LOGITS),
        constructed_dataset(x, y),
        candidate_grid([0.3, 0.5], [Transform()]),
        calibration.Floor(0.9),
        calibration.AttackGoal(PGDConfig("linf", 0.05, 1)),
    )
    assert result.chosen is None
    assert all(c.feasible is False for c in result.candidates)


def test_robust_lower_bound_is_the_clopper_pearson_bound():
    """k of n -> the delta quantile of Beta(k, n - k + 1) (scipy), 0 for k = 0; delta 0 -> the accuracy."""
    from scipy.stats import beta

    for k, n, delta in [(1337, 2000, 0.05), (3, 4, 0.05), (1, 2, 0.2), (7, 7, 0.01)]:
        expected_bound = beta.ppf(delta, k, n - k + 1)
        assert calibration.robust_lower_bound(k / n, n, delta) == pytest.approx(expected_bound, rel=1e-9)
        assert calibration.robust_lower_bound(k / n, n, 0.0) == k / n
    assert calibration.robust_lower_bound(0.0, 100, 0.05) == 0.0
    with pytest.raises(ValueError, match="floor_delta"):
        calibration.robust_lower_bound(0.5, 10, 1.0)


@pytest.mark.parametrize("floor, delta, answer_floor", [(0.24, 0.05, 0.5), (0.25, 0.05, None), (0.25, 0.0, 0.25)])
def test_attack_goal_holds_the_floor_against_the_lower_bound(floor, delta, answer_floor, constant_logits):
    """On the 12-image case robust accuracy is 0 or 6/12; with delta 0.05 the bound on 6 of 12 is 0.2453
    (Beta(6, 7)'s 5% quantile), so a floor of 0.24 admits exactly the candidates a measured floor of 0.5
    admits, and 0.25 admits none, where the measured numbers alone would admit every one at 1/2."""
    x, y = constructed_data()
    transforms = calibration.transform_grid("logit_scale", SCALES)
    result = calibration.calibrate_attack(
        Memorizer(x, y),
        constant_logits(ROBUST_LOGITS),
        constructed_dataset(x, y),
        candidate_grid(ALPHAS, transforms),
        calibration.Floor(floor, delta),
        calibration.AttackGoal(PGDConfig("linf", 0.05, 3)),
        RunSettings(batch_size=5),
    )
    for c in result.candidates:
        if c.robust_accuracy is not None:
            assert c.robust_lower == calibration.robust_lower_bound(c.robust_accuracy, len(y), delta)
            assert c.feasible == (c.robust_lower >= floor)
    if answer_floor is None:
        assert result.chosen is None and result.to_json()["floor_delta"] == delta
        return
    alpha, scale = expected_choice(answer_floor)[:2]
    assert (result.chosen.alpha, result.chosen.transform.scale) == (alpha, scale)


CERT_PROBS = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])


def certified_case():
    """Four images. g is certain of: class 0 on image 0, class 1 on images 1-3; labels 0, 0, 0, 1.
    Smoothed h: class 0 everywhere, estimate CERT_PROBS, bounds L = 0.9, U = 0.05, sigma 0.5."""
    y = torch.tensor([0, 0, 0, 1])
    standard_probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    bounds = certified_curves.Bounds(
        torch.zeros(4, dtype=torch.long),
        torch.full((4,), 0.9, dtype=torch.float64),
        torch.full((4,), 0.05, dtype=torch.float64),
        CERT_PROBS,
        0.5,
    )
    return y, standard_probs, bounds


def smoothing_case(radius: float):
    """outcome(alpha, transform) of the certified case at `radius` (Theorem 5)."""
    y, standard_probs, bounds = certified_case()
    return lambda a, t: certified_curves.smoothing_outcome(standard_probs, bounds, y, a, "smoothing", radius)


def expected_certified(alpha: float, radius: float) -> tuple[float, float]:
    """(clean, certified accuracy at radius) by hand: image 0 always right; images 1, 2 right iff
    0.9 a > 1 - a + 0.1 a; image 3 right iff 1 - a + 0.4 a > 0.6 a but never certified (h says 0);
    certified images need Theorem 5's radius sigma/2 (PhiInv(0.9 a) - PhiInv(0.05 a + 1 - a)) >= radius."""
    from scipy.stats import norm

    right_12 = 0.9 * alpha > 1 - alpha + 0.1 * alpha
    right_3 = 1 - alpha + 0.4 * alpha > 0.6 * alpha
    r = 0.25 * (norm.ppf(0.9 * alpha) - norm.ppf(0.05 * alpha + 1 - alpha)) if alpha > 0.5 else 0.0
    clean = (1 + 2 * right_12 + right_3) / 4
    certified = (1 + 2 * right_12) / 4 if r >= radius and r > 0 else 0.0
    return clean, certified


@pytest.mark.parametrize("radius, floor", [(0.25, 0.75), (0.1, 0.75), (0.4, 0.75), (0.25, 0.2), (0.9, 0.1)])
def test_certified_goal_picks_the_known_answer(radius, floor):
    y, standard_probs, bounds = certified_case()
    alphas = [0.4, 0.6, 0.7, 0.8, 0.9, 1.0]
    result = calibration.calibrate_certified(
        smoothing_case(radius), [(a, Transform()) for a in alphas], calibration.Floor(floor, 0.0)
    )
    for c in result.candidates:
        clean, certified = expected_certified(c.alpha, radius)
        assert c.clean_accuracy == clean and c.robust_accuracy == pytest.approx(certified)
    grid = sorted(((a, *expected_certified(a, radius)) for a in alphas), key=lambda c: (-c[1], -c[0]))
    answer = next((c for c in grid if c[2] >= floor - 1e-12), None)
    if answer is None:
        assert result.chosen is None
    else:
        assert result.chosen.alpha == answer[0] and result.chosen.clean_accuracy == answer[1]
    assert result.reference["clean_accuracy"] == 0.75  # h alone: images 0-2


def test_certified_goal_holds_the_floor_against_the_lower_bound():
    """Alpha 0.9 certifies 3 of 4 images at radius 0.1; with delta 0.05 the bound is Beta(3, 2)'s 5%
    quantile, 0.249: a floor of 0.2 is reached, 0.3 (which 3/4 measured would reach) is not."""
    assert expected_certified(0.9, 0.1)[1] == 0.75
    for floor, reached in [(0.2, True), (0.3, False)]:
        result = calibration.calibrate_certified(smoothing_case(0.1), [(0.9, Transform())], calibration.Floor(floor))
        (candidate,) = result.candidates
        assert candidate.robust_lower == pytest.approx(0.2486, abs=1e-4)
        assert (result.chosen is candidate) == reached


def test_certified_goal_with_a_lipschitz_h_chooses_alpha_and_logit_scale_together():
    """Two classes, Lipschitz constant 1; g is sure of class 0 everywhere. 10 images of class 1 where h's
    logits are (0, 2) (h right and confident) and 10 of class 0 where they are (0, 0.52) (h wrong, unsure).
    On the first, the mixture is right iff alpha s(2T) > 1 - alpha + alpha s(-2T) (s the sigmoid) and is
    certified when the deterministic radius reaches 0.9; on the second, right iff 1 - alpha + alpha s(-0.52T)
    > alpha s(0.52T). At T = 1 the first group is certified from alpha 0.8 on, where the second is lost
    (alpha > 0.797); at T = 3 it is certified from alpha 0.6, where the second is still right (< 0.605):
    the most accurate certified setting needs the logit scale and the alpha together."""
    from mix_perception.core.certify import lipschitz_logit_radius

    radius = 0.9
    z = torch.tensor([[0.0, 2.0]] * 10 + [[0.0, 0.52]] * 10, dtype=torch.float64)
    y = torch.tensor([1] * 10 + [0] * 10)
    h = certified_curves.LipschitzLogits(z, 1.0, torch.full((2, 2), 2**0.5))
    standard_probs = torch.tensor([[1.0, 0.0]] * 20)

    def outcome(a, t):
        return certified_curves.lipschitz_outcome(standard_probs, h, y, a, t.scale, radius)

    def expected(a: float, scale: float) -> tuple[float, float]:
        s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        first = a * s(2 * scale) > 1 - a + a * s(-2 * scale)
        second = 1 - a + a * s(-0.52 * scale) > a * s(0.52 * scale)
        r = float(lipschitz_logit_radius(z[:1], a, 1.0, None, scale)[0])
        return (first + second) / 2, (first and r >= radius and r > 0) / 2

    alphas, transforms = [0.55, 0.6, 0.7, 0.8, 0.9], calibration.transform_grid("logit_scale", [1.0, 3.0])
    grid = [(a, t) for t in transforms for a in alphas]
    result = calibration.calibrate_certified(outcome, grid, calibration.Floor(0.5, 0.0))
    for c in result.candidates:
        assert (c.clean_accuracy, c.robust_accuracy) == expected(c.alpha, c.transform.scale)
    ranked = sorted(grid, key=lambda p: (-expected(p[0], p[1].scale)[0], -p[0], p[1].scale))
    answer = next(p for p in ranked if expected(p[0], p[1].scale)[1] >= 0.5)
    assert (result.chosen.alpha, result.chosen.transform) == answer == (0.6, Transform("logit_scale", 3.0))
    assert result.chosen.clean_accuracy == 1.0 and result.chosen.robust_accuracy == 0.5
    assert result.reference == {"clean_accuracy": 0.5, "certified_accuracy": 0.5}


def test_node_parameters_use_the_node_names():
    settings = SmoothingSettings(sigma=0.25)
    params = parameter_file.node_parameters(0.7, "default:standard", "default", "smoothing", smoothing=settings)
    flat = set(parameters.flatten(params["/**/mixer"]["ros__parameters"]))
    assert flat <= NODE_NAMES


def save_constructed_case(folder, x, y, constant_logits):
    """Write the constructed case: data (returned path, .npz), g as folder/g.ts, h as folder/h.ts."""
    data = folder / "constructed.npz"
    np.savez(data, images=x.numpy(), labels=y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Memorizer(x, y)), str(folder / "g.ts"))
        torch.jit.save(torch.jit.script(constant_logits(ROBUST_LOGITS)), str(folder / "h.ts"))
    return data


def calibrate_argv(folder, data, *options) -> list[str]:
    """`calibrate` on the saved case: floor 0.5 on the measured accuracies (12 images are too few for a
    useful confidence bound), PGD eps 0.05 with 2 steps, output in folder/out."""
    return [
        "calibrate", "--standard", str(folder / "g.ts"), "--robust", str(folder / "h.ts"),
        "--calibration-data", str(data), "--test-data", str(data), "--min-robust", "0.5", "--floor-delta", "0",
        "--eps", "0.05", "--steps", "2", "--device", "cpu", "--out", str(folder / "out"), "--quiet", *options,
    ]  # fmt: skip


def test_calibrate_command_writes_a_parameter_file_the_node_reads(tmp_path, constant_logits):
    x, y = constructed_data()
    data = save_constructed_case(tmp_path, x, y, constant_logits)
    out = tmp_path / "out"
    options = ["--alphas", ",".join(map(str, CLI_ALPHAS)), "--robust-logit-scales", "2,4"]
    assert cli.main(calibrate_argv(tmp_path, data, *options)) == 0
    alpha, scale, clean, attacked = expected_choice(0.5, CLI_ALPHAS)
    assert scale != 1.0  # the answer needs sharpening: the YAML names h and the node's robust_logit_scale

    params = yaml.safe_load((out / "mixer_calibrated.yaml").read_text())["/**/mixer"]["ros__parameters"]
    assert set(parameters.flatten(params)) <= NODE_NAMES
    assert params["alpha"] == alpha and params["certification"] == "none"
    assert params["robust_model"] == str((tmp_path / "h.ts").resolve()) and params["robust_logit_scale"] == scale
    assert not (out / "robust_sharpened.pt").exists()
    assert load_model(params["standard_model"])(x[:2]).argmax(-1).tolist() == y[:2].tolist()

    report = json.loads((out / "calibration.json").read_text())
    assert report["calibration"]["chosen"]["alpha"] == alpha
    assert report["test"]["mixture"]["clean_accuracy"] == clean
    assert report["test"]["mixture"]["attacks"]["mix"]["accuracy"] == attacked
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_exports_a_mixednuts_sharpened_h_as_torchscript(tmp_path, constant_logits):
    x, y = constructed_data()
    data = save_constructed_case(tmp_path, x, y, constant_logits)
    out = tmp_path / "out"
    options = ["--alphas", "0.3,0.6,0.73,1", "--transform", "mixednuts", "--robust-logit-scales", "1", "--powers", "1"]
    assert cli.main(calibrate_argv(tmp_path, data, *options, "--offsets", "0.5")) == 0
    params = yaml.safe_load((out / "mixer_calibrated.yaml").read_text())["/**/mixer"]["ros__parameters"]
    chosen = json.loads((out / "calibration.json").read_text())["calibration"]["chosen"]
    # h -> relu(LN(V) + 0.5) = (0, 2.08, 1.25, 0, 0): clean and attacked right for 0.674 < alpha < 0.762;
    # plain h only for 0.628 < alpha < 0.710, so alpha 0.73 needs the transform.
    assert (chosen["alpha"], chosen["transform"]["kind"], chosen["clean_accuracy"]) == (0.73, "mixednuts", 1.0)
    assert "robust_logit_scale" not in params
    probe = torch.rand(3, 1, 8, 8)
    expected = MixedNUTSLogits(constant_logits(ROBUST_LOGITS), 1.0, 1.0, 0.5)(probe)
    assert torch.allclose(load_model(params["robust_model"])(probe), expected)


def test_calibrate_reports_an_unreachable_floor(tmp_path, capsys, constant_logits):
    x, y = constructed_data()
    data = save_constructed_case(tmp_path, x, y, constant_logits)
    argv = [
        "calibrate", "--standard", str(tmp_path / "g.ts"), "--robust", str(tmp_path / "h.ts"),
        "--calibration-data", str(data), "--no-test", "--min-robust", "0.9", "--alphas", "0.3,0.6",
        "--robust-logit-scales", "1", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no candidate reaches the floor 0.9000" in err and "\n" not in err
    assert math.isclose(json.loads((tmp_path / "out" / "calibration.json").read_text())["calibration"]["floor"], 0.9)


@pytest.mark.slow  # two proven constants of a Lipschitz CNN and a calibrate run
def test_calibrate_certified_with_a_lipschitz_h_writes_the_nodes_parameters(tmp_path):
    from mix_perception.core.architectures import build

    torch.manual_seed(2)
    lipschitz = tmp_path / "lipschitz.pt"
    torch.save({"arch": "mix_perception:lipschitz_cnn", "state_dict": build("lipschitz_cnn").state_dict()}, lipschitz)
    out = tmp_path / "out"
    argv = [
        "calibrate", "--goal", "certified", "--certification", "lipschitz", "--lipschitz-model", str(lipschitz),
        "--radius", "0.001", "--min-robust", "0", "--floor-delta", "0", "--alphas", "0.6,0.9",
        "--robust-logit-scales", "1,2",
        "--limit", "16", "--test-limit", "16", "--device", "cpu", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((out / "calibration.json").read_text())
    candidates = report["calibration"]["candidates"]
    grid = {(c["alpha"], c["transform"]["scale"]) for c in candidates}
    assert grid == {(0.6, 1.0), (0.9, 1.0), (0.6, 2.0), (0.9, 2.0)}
    params = yaml.safe_load((out / "mixer_calibrated.yaml").read_text())["/**/mixer"]["ros__parameters"]
    assert set(parameters.flatten(params)) <= NODE_NAMES
    assert params["certification"] == "lipschitz" and params["robust_model"] == str(lipschitz.resolve())
    chosen = report["calibration"]["chosen"]
    assert params["alpha"] == chosen["alpha"] and params.get("robust_logit_scale", 1.0) == chosen["transform"]["scale"]
    assert set(report["test"]["mixture"]) >= {"clean_accuracy", "certified_accuracy"}
