"""OOD score and conformal p-values: exact formulas, uniform p-values under exchangeability, storage."""

import numpy as np
import pytest
import torch
from torch import nn

from mix_perception.core import ood
from mix_perception.core.frame_statistics import frame_statistics


def test_conformal_p_value_formula_counts_ties():
    calibration = torch.tensor([1.0, 2.0, 2.0, 3.0])
    p = ood.conformal_p_values(calibration, torch.tensor([0.0, 2.0, 2.5, 9.0]))
    assert p.tolist() == [1.0, 4 / 5, 2 / 5, 1 / 5]


def test_conformal_p_values_are_uniform_under_exchangeability():
    generator = torch.Generator().manual_seed(0)
    draws, n = 20000, 99
    values = torch.randn(draws, n + 1, generator=generator)
    p = torch.stack([ood.conformal_p_values(row[:n], row[n:]) for row in values[:, :]]).flatten()
    for u in (0.01, 0.05, 0.2, 0.5):
        expected = np.floor(u * (n + 1)) / (n + 1)  # p is uniform on {1/(n+1), ..., 1}
        assert abs((p <= u).double().mean().item() - expected) < 4 * np.sqrt(expected * (1 - expected) / draws)


def clusters(generator, per_class=400, dim=6):
    centres = 5.0 * torch.eye(3, dim, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), labels, centres


def test_mahalanobis_is_the_nearest_class_distance():
    features, labels, centres = clusters(torch.Generator().manual_seed(1))
    stats = ood.fit_mahalanobis(features, labels, shrinkage=0.0)
    points = torch.cat([centres, features[:5], torch.full((1, 6), 40.0, dtype=torch.float64)])
    explicit = torch.stack(
        [torch.stack([(x - m) @ stats.precision @ (x - m) for m in stats.means]).min() for x in points]
    )
    assert torch.allclose(stats.score(points), explicit, atol=1e-8)
    assert stats.score(centres).max() < 0.5 and stats.score(points[-1:]).item() > 100


def test_mahalanobis_saves_and_loads_as_tensors(tmp_path):
    features, labels, _ = clusters(torch.Generator().manual_seed(2))
    stats = ood.fit_mahalanobis(features, labels)
    stats.save(tmp_path / "ood.pt")
    loaded = ood.Mahalanobis.load(tmp_path / "ood.pt")
    assert torch.equal(loaded.means, stats.means) and torch.equal(loaded.precision, stats.precision)


def test_penultimate_features_are_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 3, 2, 2)
    features, logits = ood.penultimate_features(model, x)
    assert torch.equal(features, model[2](model[1](model[0](x))))
    assert torch.equal(logits, model(x))
    assert not model[3]._forward_hooks


def test_energy_is_higher_for_less_confident_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    energy = ood.energy(logits)
    assert torch.allclose(energy, -torch.logsumexp(logits.double(), 1))
    assert energy[1] > energy[0] - 9.0  # flat logits: -log(3 e); peaked: about -10


def input_statistics():
    """The Gaussian of the frame statistics of 300 random frames (1, 8, 8), and 30 frames' distances."""
    frames = torch.rand(330, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    statistics = ood.fit_input_statistics(frame_statistics(frames[:300]))
    return statistics, statistics.score(frame_statistics(frames[300:]))


def ood_file(tmp_path, name="ood.pt", **changes):
    """An OOD model file of the mixer's format (3 classes, 6 features, 50 calibration scores, 40 energies,
    30 frame-statistics distances), with `changes`."""
    features, labels, _ = clusters(torch.Generator().manual_seed(3))
    stats = ood.fit_mahalanobis(features[::2], labels[::2])
    state = {"means": stats.means, "precision": stats.precision, "calibration_scores": stats.score(features[1:100:2])}
    state["energy_calibration_scores"] = ood.energy(features[1:80:2, :3])
    frames, distances = input_statistics()
    state |= {"input_means": frames.means, "input_precision": frames.precision, "input_calibration_scores": distances}
    torch.save({key: value for key, value in (state | changes).items() if value is not None}, tmp_path / name)
    return tmp_path / name


def test_ood_model_file_round_trips_and_scores_like_its_parts(tmp_path):
    model = ood.OODModel.load(ood_file(tmp_path))
    assert (model.classes, model.feature_width, model.calibration_scores.numel()) == (3, 6, 50)
    model.save(tmp_path / "again.pt")
    again = ood.OODModel.load(tmp_path / "again.pt")
    assert torch.equal(again.calibration_scores, model.calibration_scores)
    points = torch.randn(4, 6, dtype=torch.float64)
    scores, p = again.score(points)
    assert torch.equal(scores, model.mahalanobis.score(points))
    assert torch.equal(p, ood.conformal_p_values(model.calibration_scores, scores))
    logits = torch.randn(4, 3)
    assert torch.equal(again.shift_p_values(logits), ood.conformal_p_values(model.energy_scores, ood.energy(logits)))
    assert model.energy_scores.numel() == 40
    frames = torch.rand(4, 1, 8, 8)
    distances = model.input_statistics.score(frame_statistics(frames))
    input_p = ood.conformal_p_values(model.input_scores, distances)
    per_frame = again.per_frame(points, logits, frames)  # the mixer's call: all four at once
    assert torch.equal(per_frame, torch.stack((scores, p, again.shift_p_values(logits), input_p)))
    assert model.input_scores.numel() == 30 and torch.equal(again.input_scores, model.input_scores)
    model.check(3, 6)


def test_the_padded_references_give_each_rows_own_p_values(tmp_path):
    """per_frame searches the three references at once, padded with +inf to one length: each row's p-values are
    those against its own scores alone, at ties, beyond the largest score, at +inf and for NaN (1/(n + 1))."""
    model = ood.OODModel.load(ood_file(tmp_path))
    padded, plus_one = model.references
    rows = (model.calibration_scores, model.energy_scores, model.input_scores)
    assert [int(p) - 1 for p in plus_one.flatten()] == [50, 40, 30]
    for row, reference in enumerate(rows):
        scores = torch.cat((reference[[0, 7, -1]], torch.tensor([-1e9, 1e9, float("inf"), float("nan")])))
        stacked = torch.zeros(3, len(scores), dtype=torch.float64)
        stacked[row] = scores
        together = ood._p_values(padded, stacked, plus_one)[row]
        alone = ood.conformal_p_values(reference, scores)
        assert torch.equal(together, alone) and together[-1] == 1 / (len(reference) + 1)


def test_a_bad_ood_model_file_is_refused_with_one_line(tmp_path):
    cases = {
        "missing.pt": (None, "No such file"),
        "no_scores.pt": ({"calibration_scores": None}, "lacks the tensors calibration_scores: rebuild it"),
        "before_frame_statistics.pt": (
            {"input_means": None, "input_precision": None, "input_calibration_scores": None},
            "lacks the tensors input_means, input_precision, input_calibration_scores: rebuild it with "
            "mix-perception calibrate --goal risk",
        ),
        "statistics.pt": ({"input_means": torch.zeros(1, 5, dtype=torch.float64)}, r"frame statistics \(dark, "),
        "few_distances.pt": (
            {"input_calibration_scores": torch.ones(18, dtype=torch.float64)},
            "needs >= 19 input_calibration_scores, got 18",
        ),
        "few_energies.pt": (
            {"energy_calibration_scores": torch.ones(3, dtype=torch.float64)},
            "needs >= 19 energy_calibration_scores, got 3",
        ),
        "shapes.pt": ({"precision": torch.eye(5, dtype=torch.float64)}, r"\(D, D\), got \(3, 6\), \(5, 5\)"),
        "nan.pt": ({"means": torch.full((3, 6), float("nan"), dtype=torch.float64)}, "must be finite"),
        "not_definite.pt": ({"precision": -torch.eye(6, dtype=torch.float64)}, "precision must be symmetric positive"),
        "few.pt": ({"calibration_scores": torch.ones(5, dtype=torch.float64)}, "needs >= 19 calibration_scores, got 5"),
    }
    for name, (changes, message) in cases.items():
        path = tmp_path / name if changes is None else ood_file(tmp_path, name, **changes)
        with pytest.raises(ValueError, match=message) as refused:
            ood.OODModel.load(path)
        assert str(refused.value).startswith(f"OOD model {path}: ") and "\n" not in str(refused.value)
    model = ood.OODModel.load(ood_file(tmp_path))
    with pytest.raises(ValueError, match="OOD model is for 3 classes and 6 features, h has 10 classes and 6 features"):
        model.check(10, 6)
