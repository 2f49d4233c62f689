"""The Figure-1 ablation's mixing variants (mix_perception.experiments.ablation)."""

import pytest
import torch

from mix_perception.core.mixing import MixedClassifier
from mix_perception.experiments.ablation import MixingVariant, output_gradient_norms


def test_gradient_norms_match_the_analytic_gradient_of_an_affine_model(affine):
    weight = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -2.0]])  # 2 inputs, 3 classes
    norms = output_gradient_norms(affine(weight), torch.rand(4, 2))
    assert torch.allclose(norms, weight.norm(dim=0).expand(4, 3))


@pytest.mark.parametrize("space", ["logits", "probs"])
@pytest.mark.parametrize("scale", ["one", "grad_g", "grad_gmax", "grad_ratio"])
def test_every_ablation_variant_returns_finite_scores(space, scale, affine):
    generator = torch.Generator().manual_seed(4)
    g, h = affine(torch.randn(6, 5, generator=generator)), affine(torch.randn(6, 5, generator=generator))
    x = torch.rand(7, 6, generator=generator)
    scores = MixingVariant(g, h, 0.6, space=space, scale=scale)(x)
    assert scores.shape == (7, 5) and torch.isfinite(scores).all()
    if space == "probs" and scale == "one":
        assert torch.allclose(scores, MixedClassifier(g, h, 0.6)(x), atol=1e-6)
    if space == "logits" and scale == "grad_ratio":  # R_i = ||W_g[:, i]|| / ||W_h[:, i]|| for affine models
        r = g.weight.norm(dim=0) / h.weight.norm(dim=0)
        assert torch.allclose(scores, 0.4 * g(x) + 0.6 * r * h(x), atol=1e-5)
