"""MixedClassifier and mix_logits against a direct float64 computation, at ordinary and extreme logits."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mix_perception.core.mixing import MixedClassifier, mix_logits


def reference_mix(g_logits: np.ndarray, h_logits: np.ndarray, alpha: float) -> np.ndarray:
    """log((1-alpha) softmax(g) + alpha softmax(h)) in float64 numpy, with max-shifted softmax."""

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    with np.errstate(divide="ignore"):
        return np.log((1.0 - alpha) * softmax(g_logits) + alpha * softmax(h_logits))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.73, 0.99, 1.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_mix_logits_matches_float64_reference(alpha, scale):
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(64, 10, generator=generator, dtype=torch.float64) * scale
    h = torch.randn(64, 10, generator=generator, dtype=torch.float64) * scale
    expected = reference_mix(g.numpy(), h.numpy(), alpha)
    np.testing.assert_allclose(mix_logits(g, h, alpha).numpy(), expected, rtol=1e-12, atol=1e-12)
    # float32 path agrees to float32 precision, and mixed probabilities sum to 1
    got32 = mix_logits(g.float(), h.float(), alpha)
    np.testing.assert_allclose(got32.double().exp().numpy(), np.exp(expected), atol=1e-6)
    assert torch.allclose(got32.exp().sum(-1), torch.ones(64), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_extreme_logits_are_finite_with_finite_gradients(alpha):
    g = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, 1e4]], requires_grad=True)
    h = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -1e4], [-1e4, -1e4, -1e4]], requires_grad=True)
    mixed = mix_logits(g, h, alpha)
    if 0.0 < alpha < 1.0:
        expected = reference_mix(g.detach().double().numpy(), h.detach().double().numpy(), alpha)
        finite = np.isfinite(expected)
        np.testing.assert_allclose(mixed.detach().double().numpy()[finite], expected[finite], atol=1e-4)
    mixed.logsumexp(-1).sum().backward()  # a loss that touches every class
    for side in (g, h):  # an unused side (alpha 0 or 1) gets no gradient at all
        assert side.grad is None or torch.isfinite(side.grad).all()
    assert torch.isfinite(mixed).all()


def test_alpha_zero_and_one_are_exact():
    generator = torch.Generator().manual_seed(1)
    g, h = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    assert torch.equal(mix_logits(g, h, 0.0), torch.log_softmax(g, -1))
    assert torch.equal(mix_logits(g, h, 1.0), torch.log_softmax(h, -1))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_bad_alpha_is_rejected(bad):
    model = MixedClassifier(nn.Identity(), nn.Identity(), 0.6)
    with pytest.raises((ValueError, TypeError)):
        model.alpha = bad
    assert model.alpha == 0.6


def test_classifier_is_batched_and_changeable(affine):
    generator = torch.Generator().manual_seed(2)
    g, h = affine(torch.randn(12, 4, generator=generator)), affine(torch.randn(12, 4, generator=generator))
    x = torch.rand(16, 3, 2, 2, generator=generator)
    model = MixedClassifier(g, h, alpha=0.2)
    first = model(x)
    model.alpha = 0.8
    second = model(x)
    assert first.shape == second.shape == (16, 4)
    assert torch.allclose(second, mix_logits(g(x), h(x), 0.8))
    assert not torch.allclose(first, second)
    # batching does not change per-sample results
    assert torch.allclose(model(x[:1]), second[:1], atol=1e-6)


def test_classifier_runs_on_every_available_device(affine):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        generator = torch.Generator().manual_seed(3)
        model = MixedClassifier(affine(torch.randn(4, 3, generator=generator)), affine(torch.randn(4, 3)), 0.7)
        model = model.to(device)
        assert model(torch.rand(5, 4, device=device)).device.type == torch.device(device).type


@settings(max_examples=200, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0),
    g=st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3),
    h=st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3),
)
def test_mixed_probabilities_are_a_distribution_between_the_two(alpha, g, h):
    g_t, h_t = torch.tensor([g], dtype=torch.float64), torch.tensor([h], dtype=torch.float64)
    probs = mix_logits(g_t, h_t, alpha).exp()
    assert not torch.isnan(probs).any()
    assert math.isclose(probs.sum().item(), 1.0, abs_tol=1e-9)
    low = torch.minimum(torch.softmax(g_t, -1), torch.softmax(h_t, -1))
    high = torch.maximum(torch.softmax(g_t, -1), torch.softmax(h_t, -1))
    assert (probs >= low - 1e-12).all() and (probs <= high + 1e-12).all()
