"""FrameClassifier: the mixture it publishes for a batch of frames, and that only the core's certificates
are published."""

import numpy as np
import pytest
import torch
from torch import nn

from mix_perception.core.mixing import mix_logits
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings
from mix_perception.ros.inference import (
    CERTIFICATE_NONE,
    CERTIFICATE_SMOOTHING,
    Certification,
    FrameClassifier,
    RobustOutput,
    float32_at_most,
)


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


X = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
SETTINGS = SmoothingSettings(sigma=0.25, n_select=16, n_estimate=200, delta=0.001, batch_size=512)
SMOOTHING = Certification("smoothing", smoothing=SETTINGS, seed=1)


@pytest.fixture
def constant(constant_logits):
    """constant(label): a model whose logits are 20 for `label` and 0 for the 9 other classes, everywhere."""
    return lambda label: constant_logits(torch.nn.functional.one_hot(torch.tensor(label), 10).float() * 20.0)


def test_no_certification_publishes_the_plain_mixture_per_frame():
    g, h = linear(0), linear(1)
    classifier = FrameClassifier(g, h, Certification("none"))
    for alpha in (0.0, 0.3, 0.75, 1.0):
        results = classifier.classify(X, alpha)
        expected = torch.softmax(mix_logits(g(X), h(X), alpha), dim=-1).detach()
        assert len(results) == 3
        for result, want, h_logits in zip(results, expected, h(X), strict=True):
            torch.testing.assert_close(torch.from_numpy(result.probabilities), want)
            assert result.class_id == int(want.argmax())
            assert result.robust_class_id == int(h_logits.argmax())
            assert result.alpha == alpha and result.samples == 0 and result.inference_ms > 0
            assert (result.certified, result.certificate, result.certified_radius, result.norm) == (
                False,
                CERTIFICATE_NONE,
                0.0,
                "",
            )


def test_a_frame_is_classified_the_same_alone_and_in_a_batch():
    g, h = linear(0), linear(1)
    classifier = FrameClassifier(g, h, Certification("none"))
    batch = classifier.classify(X, 0.6)
    for index in range(3):
        alone = classifier.classify(X[index : index + 1], 0.6)[0]
        np.testing.assert_allclose(alone.probabilities, batch[index].probabilities, atol=1e-6)


@pytest.mark.parametrize("method", ["smoothing", "smoothing_theorem4"])
def test_a_confident_robust_model_is_certified_with_the_cores_radius(method, constant):
    certification = Certification(method, smoothing=SETTINGS, seed=1)
    results = FrameClassifier(linear(0), constant(3), certification).classify(X, 0.8)
    reference = SmoothedClassifier(constant(3), SETTINGS, seed=1).certify(X, 0.8, method=method)
    for result, radius in zip(results, reference.radius, strict=True):
        assert result.class_id == 3 and result.robust_class_id == 3
        assert result.certified and result.certificate == CERTIFICATE_SMOOTHING and result.norm == "l2"
        assert result.certificate_confidence == pytest.approx(0.999)
        assert result.certified_radius == pytest.approx(float(radius), rel=1e-6)
        assert result.robust_margin == pytest.approx(1.0)
        assert result.samples == 16 + 200
        assert abs(float(result.probabilities.sum()) - 1.0) < 1e-5


def test_alpha_at_most_half_is_never_certified(constant):
    classifier = FrameClassifier(linear(0), constant(3), SMOOTHING)
    for alpha in (0.0, 0.25, 0.5):
        for result in classifier.classify(X, alpha):
            assert not result.certified and result.certified_radius == 0.0 and result.certificate == CERTIFICATE_NONE


def test_only_a_certificate_of_the_published_class_with_a_finite_positive_radius_is_published(constant_logits):
    """The certifier's word is taken only for frames where its class is the mixed class, its radius is
    positive and finite, and alpha > 1/2. Frames: (certified class, radius) = (2, 0.3) published;
    (3, 0.3) about another class than the mixture's 2; (2, 0) nothing; (2, inf) and (2, nan) not finite."""
    g = constant_logits(torch.nn.functional.one_hot(torch.tensor(2), 10).float() * 30.0)
    robust_probs = torch.full((5, 10), 0.0)
    robust_probs[:, 2] = robust_probs[:, 3] = 0.5
    certified_class = torch.tensor([2, 3, 2, 2, 2])
    radius = torch.tensor([0.3, 0.3, 0.0, float("inf"), float("nan")], dtype=torch.float64)

    class Given:  # a certifier that says exactly the above
        kind = CERTIFICATE_SMOOTHING

        def __call__(self, x, alpha, required_radius, features=False):
            return RobustOutput(robust_probs, certified_class, radius, torch.full((5,), 40))

    classifier = FrameClassifier(g, linear(1), SMOOTHING)
    classifier.certifier = Given()
    results = classifier.classify(torch.rand(5, 1, 28, 28), 0.8)
    assert [r.class_id for r in results] == [2] * 5
    assert [r.certified for r in results] == [True, False, False, False, False]
    assert results[0].certified_radius == pytest.approx(0.3) and results[0].certificate == CERTIFICATE_SMOOTHING
    assert all(r.certified_radius == 0.0 and r.certificate == CERTIFICATE_NONE for r in results[1:])
    assert [r.samples for r in results] == [40] * 5
    assert not any(r.certified for r in classifier.classify(torch.rand(5, 1, 28, 28), 0.5))


def test_a_robust_model_split_between_classes_is_not_certified():
    class CoinFlip(nn.Module):  # class 1 or 2 depending on the sign of the noise at one pixel
        def forward(self, x):
            positive = (x[:, 0, 0, 0] > X[0, 0, 0, 0]).float().unsqueeze(1)
            logits = torch.zeros(x.shape[0], 10)
            return logits + 10 * torch.cat([torch.zeros_like(positive), positive, 1 - positive, logits[:, 3:]], 1)

    result = FrameClassifier(linear(0), CoinFlip(), SMOOTHING).classify(X[:1], 0.9)[0]
    assert not result.certified and result.certified_radius == 0.0


def test_published_radius_is_never_rounded_up_to_float32():
    radii = np.array([0.1, 1 / 3, 0.123456789123, 2.0**-30 * 3.0000001, 0.0])
    published = float32_at_most(radii)
    assert (published <= radii).all()
    assert (published.astype(np.float32).astype(np.float64) == published).all()
    assert (radii - published <= np.abs(radii) * 2**-23).all()


def test_an_unknown_certification_method_is_refused():
    with pytest.raises(ValueError, match="certification must be one of"):
        Certification("exact")


def test_a_scaled_h_is_refused_with_a_smoothing_certificate():
    with pytest.raises(ValueError, match="needs certification none or lipschitz"):
        Certification("smoothing", logit_scale=2.0)
    assert Certification("lipschitz", logit_scale=2.0).logit_scale == 2.0


def test_sequential_smoothing_publishes_the_cores_sequential_certificate(constant, constant_logits):
    """Sequential certification at the required radius: a confident h certifies at the first look with the
    radius of certify_sequential; the plan follows alpha and the radius; a frame whose bound stops below
    the required radius still publishes the smaller radius it certifies."""
    from mix_perception.core.sequential import SequentialPlan, certify_sequential

    certification = Certification("smoothing", smoothing=SETTINGS, sequential=True, seed=1)
    classifier = FrameClassifier(linear(0), constant(3), certification)
    results = classifier.classify(X, 0.8, 0.1)
    plan = SequentialPlan(0.25, 0.8, 0.1, SETTINGS.delta, SETTINGS.n_max)
    reference = certify_sequential(SmoothedClassifier(constant(3), SETTINGS, seed=1), X, plan)
    for result, radius, samples in zip(results, reference.radius, reference.samples, strict=True):
        assert result.certified and result.certificate == CERTIFICATE_SMOOTHING and result.class_id == 3
        assert result.samples == int(samples) == plan.looks[0]
        assert result.certified_radius == pytest.approx(float(radius), rel=1e-6) and radius >= 0.1
    classifier.classify(X, 0.9, 0.2)
    assert (classifier.certifier.plan.alpha, classifier.certifier.plan.required_radius) == (0.9, 0.2)
    # A required radius no count of votes can reach: every frame draws n_max and keeps the radius it has.
    far = classifier.classify(X, 0.8, 5.0)
    assert all(r.samples == SETTINGS.n_max and r.certified and 0 < r.certified_radius < 5.0 for r in far)


def test_sequential_needs_votes():
    with pytest.raises(ValueError, match="smoothing.sequential counts votes"):
        Certification("smoothing", smoothing=SmoothingSettings(mode="probs"), sequential=True)


def fitted_ood(model: nn.Module, generator_seed: int = 0, standard: nn.Module | None = None):
    """An OODModel of `model`'s penultimate features and of the frame statistics, fitted on 60 random frames,
    40 more as calibration (also of `standard`'s energy: g's, or `model`'s when none is given)."""
    from mix_perception.core.frame_statistics import frame_statistics
    from mix_perception.core.ood import OODModel, energy, fit_input_statistics, fit_mahalanobis, penultimate_features

    frames = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(generator_seed))
    with torch.no_grad():
        features, logits = penultimate_features(model, frames)
        energies = energy((standard or model)(frames[60:]))
    labels = torch.arange(100) % 10  # every class present
    stats = fit_mahalanobis(features[:60], labels[:60], shrinkage=0.1)
    frames_stats = fit_input_statistics(frame_statistics(frames[:60]))
    distances = frames_stats.score(frame_statistics(frames[60:]))
    return OODModel.create(stats, stats.score(features[60:]), energies, frames_stats, distances)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize(
    "method, sequential", [("none", False), ("lipschitz", False), ("smoothing", False), ("smoothing", True)]
)
def test_ood_score_and_p_value_are_those_of_the_core_on_hs_features(method, sequential):
    """With an OOD model every frame carries the Mahalanobis score of h's clean-frame features and its
    conformal p-value (core.ood), whichever certifier runs h; g's class is published too."""
    from mix_perception.core.frame_statistics import frame_statistics
    from mix_perception.core.ood import conformal_p_values, penultimate_features

    g, h = linear(0), mlp(1)
    ood = fitted_ood(h, standard=g)
    certification = Certification(method, smoothing=SETTINGS, sequential=sequential, seed=1)
    results = FrameClassifier(g, h, certification, input_shape=(1, 28, 28), ood=ood).classify(X, 0.8, 0.1)
    with torch.no_grad():
        features, _ = penultimate_features(h.double(), X.double())
        scores, p_values = ood.score(features)
        shift_p_values = ood.shift_p_values(g(X))
        distances = ood.input_statistics.score(frame_statistics(X))
        input_p_values = conformal_p_values(ood.input_scores, distances)
    for result, score, p, shift_p, input_p, standard in zip(
        results, scores, p_values, shift_p_values, input_p_values, g(X).argmax(1), strict=True
    ):
        assert result.ood_score == pytest.approx(float(score), rel=1e-5)
        assert result.ood_p_value == float(p) and result.standard_class_id == int(standard)
        assert result.shift_p_value == float(shift_p) and result.input_shift_p_value == float(input_p)


def test_without_an_ood_model_the_score_is_0_and_the_p_value_1():
    for result in FrameClassifier(linear(0), mlp(1), Certification("none")).classify(X, 0.8):
        assert (result.ood_score, result.ood_p_value, result.shift_p_value, result.input_shift_p_value) == (0, 1, 1, 1)


def test_an_ood_model_that_does_not_fit_h_is_refused():
    ood = fitted_ood(mlp(1))
    with pytest.raises(ValueError, match=r"OOD model is for 10 classes and 16 features, h has 10 classes and 784"):
        FrameClassifier(linear(0), linear(1), Certification("none"), input_shape=(1, 28, 28), ood=ood)
    with pytest.raises(ValueError, match="ood_model needs a robust model with an nn.Linear layer"):
        FrameClassifier(linear(0), nn.Flatten(), Certification("none"), input_shape=(1, 28, 28), ood=ood)
