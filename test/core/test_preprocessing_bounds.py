"""core.preprocessing_bounds against dense matrices: the Kronecker norm is exact, the description applies
as the unrolled matrix does, the rounding bound covers a float32 evaluation, radii convert both ways."""

import math

import numpy as np
import pytest
import torch

from mix_perception.core.preprocessing_bounds import (
    FrameBound,
    LinearPreprocessing,
    frame_radii,
    preprocessing_bound,
    spectral_norm,
    unbounded,
)

RNG = np.random.default_rng(0)


def random_resize(rows_out: int, rows_in: int) -> np.ndarray:
    """A nonnegative matrix whose rows sum to 1, as a bilinear resize's are."""
    matrix = RNG.random((rows_out, rows_in)) * (RNG.random((rows_out, rows_in)) < 0.3)
    matrix[:, 0] += 1e-3
    return matrix / matrix.sum(axis=1, keepdims=True)


def random_operator(c_out=3, c_in=4, size_in=(6, 5), size_out=(4, 7)) -> LinearPreprocessing:
    channels = RNG.normal(size=(c_out, c_in))
    resize = (random_resize(size_out[0], size_in[0]), random_resize(size_out[1], size_in[1]))
    return LinearPreprocessing(channels, RNG.normal(size=c_out), resize, 11)


def dense(operator: LinearPreprocessing) -> np.ndarray:
    rows, columns = operator.resize
    return np.kron(operator.channels, np.kron(rows, columns))


def test_the_norm_is_the_largest_singular_value_of_the_unrolled_matrix():
    for _ in range(5):
        operator = random_operator()
        expected = np.linalg.svd(dense(operator), compute_uv=False)[0]
        assert preprocessing_bound(operator, 28).norm == pytest.approx(expected, rel=1e-9)
        assert preprocessing_bound(operator, 28).norm >= expected


def test_apply_is_the_unrolled_matrix_plus_the_offset():
    operator = random_operator()
    x = RNG.random((4, 6, 5))
    expected = (dense(operator) @ x.ravel()).reshape(3, 4, 7) + operator.offset[:, None, None]
    assert np.allclose(operator.apply(x), expected, atol=1e-12)
    identity = LinearPreprocessing(np.eye(1), np.zeros(1), None, 0)
    assert np.array_equal(identity.apply(x[:1]), x[:1])


def test_spectral_norm_of_known_matrices():
    assert spectral_norm(np.diag([3.0, -4.0])) == pytest.approx(4.0)
    luma = np.array([[0.299, 0.587, 0.114]])
    assert spectral_norm(luma) == pytest.approx(0.66856, abs=1e-5)
    assert spectral_norm(np.ones((3, 1))) == pytest.approx(math.sqrt(3))


def test_the_rounding_bound_covers_a_float32_evaluation_in_any_order():
    """The float32 map of random frames (resize as one flat sum of products, then the channels) is within
    eps(X) of the exact one."""
    operator = random_operator(size_in=(40, 30), size_out=(12, 9))
    bound = preprocessing_bound(operator, 12 * 9)
    rows, columns = operator.resize
    flat = torch.from_numpy(dense(operator)).float()
    for scale in (1.0, 100.0):
        x = RNG.uniform(-scale, scale, (4, 40, 30))
        values = flat @ torch.from_numpy(x.ravel()).float() + torch.from_numpy(
            operator.offset
        ).float().repeat_interleave(108)
        error = np.linalg.norm(values.double().numpy() - operator.apply(x).ravel())
        assert 0 < error <= bound.rounding(float(np.abs(x).max()))


def test_frame_radii_invert_model_radius():
    bound = preprocessing_bound(random_operator(), 28).for_frame()
    assert bound.divisor > 0 and bound.offset > 0
    for radius in (0.01, 0.3, 2.0):
        assert frame_radii(np.array([bound.model_radius(radius)]), [bound])[0] == pytest.approx(radius)
    assert frame_radii(np.array([bound.offset / 2]), [bound])[0] == 0.0  # below the rounding allowance: nothing


def test_a_float_frame_pays_for_its_largest_pixel_and_the_perturbation():
    """Float frames: X' <= X + r, so r = (r_model - 2 eps(X)) / (||P|| + a)."""
    bound = preprocessing_bound(random_operator(), 28)
    frame = bound.for_frame(3.0)
    assert frame.divisor == bound.norm + bound.slope and frame.offset == 2 * bound.rounding(3.0)
    r = frame_radii(np.array([0.5]), [frame])[0]
    assert bound.norm * r + bound.rounding(3.0) + bound.rounding(3.0 + r) == pytest.approx(0.5)


def test_unbounded_frames_get_radius_0_and_need_an_infinite_model_radius():
    bound = unbounded("why")
    assert frame_radii(np.array([5.0, 0.0]), [bound, FrameBound(2.0, 0.0)]).tolist() == [0.0, 0.0]
    assert bound.model_radius(0.1) == math.inf and bound.reason == "why"
