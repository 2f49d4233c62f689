"""FrameClassifier: the mixture it publishes, and that only the core's certificates are published."""

import numpy as np
import pytest
import torch
from torch import nn

from mix_perception.core.mixing import mix_logits
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings
from mix_perception.ros.inference import (
    CERTIFICATE_LIPSCHITZ,
    CERTIFICATE_NONE,
    CERTIFICATE_SMOOTHING,
    NO_CERTIFICATE,
    Certification,
    FrameClassifier,
    publishable_certificate,
)


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


X = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
SETTINGS = SmoothingSettings(sigma=0.25, n_select=16, n_estimate=200, delta=0.001, batch_size=512)
SMOOTHING = Certification("smoothing", SETTINGS, seed=1)


@pytest.fixture
def constant(constant_logits):
    """constant(label): a model whose logits are 20 for `label` and 0 for the 9 other classes, everywhere."""
    return lambda label: constant_logits(torch.nn.functional.one_hot(torch.tensor(label), 10).float() * 20.0)


def test_no_certification_publishes_the_plain_mixture():
    g, h = linear(0), linear(1)
    classifier = FrameClassifier(g, h, Certification("none"))
    for alpha in (0.0, 0.3, 0.75, 1.0):
        result = classifier.classify(X, alpha)
        expected = torch.softmax(mix_logits(g(X), h(X), alpha), dim=-1)[0]
        torch.testing.assert_close(torch.from_numpy(result.probabilities), expected.detach())
        assert result.class_id == int(expected.argmax())
        assert result.robust_class_id == int(h(X).argmax())
        assert result.alpha == alpha
        assert (result.certified, result.certificate, result.certified_radius, result.norm) == (
            False,
            CERTIFICATE_NONE,
            0.0,
            "",
        )
        assert result.inference_ms > 0


@pytest.mark.parametrize("method, kind", [("smoothing", CERTIFICATE_SMOOTHING), ("lipschitz", CERTIFICATE_LIPSCHITZ)])
def test_a_confident_robust_model_is_certified_with_the_cores_radius(method, kind, constant):
    certification = Certification(method, SETTINGS, seed=1)
    classifier = FrameClassifier(linear(0), constant(3), certification)
    result = classifier.classify(X, 0.8)
    assert result.class_id == 3 and result.robust_class_id == 3
    assert result.certified and result.certificate == kind and result.norm == "l2"
    assert result.confidence == pytest.approx(0.999)
    reference = SmoothedClassifier(constant(3), SETTINGS, seed=1).certify(X, 0.8, method=method)
    assert result.certified_radius == pytest.approx(float(reference.radius[0]), rel=1e-6)
    assert result.robust_margin == pytest.approx(1.0)
    assert abs(float(result.probabilities.sum()) - 1.0) < 1e-5


def test_alpha_at_most_half_is_never_certified(constant):
    classifier = FrameClassifier(linear(0), constant(3), SMOOTHING)
    for alpha in (0.0, 0.25, 0.5):
        result = classifier.classify(X, alpha)
        assert not result.certified and result.certified_radius == 0.0 and result.certificate == CERTIFICATE_NONE


def test_a_robust_model_split_between_classes_is_not_certified():
    class CoinFlip(nn.Module):  # class 1 or 2 depending on the sign of the noise at one pixel
        def forward(self, x):
            positive = (x[:, 0, 0, 0] > X[0, 0, 0, 0]).float().unsqueeze(1)
            logits = torch.zeros(x.shape[0], 10)
            return logits + 10 * torch.cat([torch.zeros_like(positive), positive, 1 - positive, logits[:, 3:]], 1)

    result = FrameClassifier(linear(0), CoinFlip(), SMOOTHING).classify(X, 0.9)
    assert not result.certified and result.certified_radius == 0.0


def test_published_radius_is_never_rounded_up_to_float32():
    for radius in (0.1, 1 / 3, 0.123456789123, 2.0**-30 * 3.0000001):
        published = publishable_certificate(True, 3, radius, 3, 0.8, SMOOTHING).radius
        assert published <= radius and float(np.float32(published)) == published
        assert radius - published <= abs(radius) * 2**-23


def test_publishable_certificate_needs_the_same_class_and_a_real_certificate():
    assert publishable_certificate(True, 3, 0.4, 3, 0.8, SMOOTHING).certified
    assert publishable_certificate(True, 3, 0.4, 5, 0.8, SMOOTHING) == NO_CERTIFICATE  # mixed class differs
    assert publishable_certificate(False, 3, 0.4, 3, 0.8, SMOOTHING) == NO_CERTIFICATE
    assert publishable_certificate(True, 3, 0.4, 3, 0.5, SMOOTHING) == NO_CERTIFICATE
    assert publishable_certificate(True, 3, 0.0, 3, 0.8, SMOOTHING) == NO_CERTIFICATE
    assert publishable_certificate(True, 3, float("inf"), 3, 0.8, SMOOTHING) == NO_CERTIFICATE
    assert publishable_certificate(True, 3, float("nan"), 3, 0.8, SMOOTHING) == NO_CERTIFICATE


def test_an_unknown_certification_method_is_refused():
    with pytest.raises(ValueError, match="certification must be one of"):
        Certification("exact")
