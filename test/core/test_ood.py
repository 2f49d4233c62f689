"""OOD score and conformal p-values: exact formulas, uniform p-values under exchangeability, storage."""

import numpy as np
import torch
from torch import nn

from mix_perception.core import ood


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
