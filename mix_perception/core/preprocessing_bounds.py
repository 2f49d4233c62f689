"""The l2 norm of the mixer's preprocessing, so that a radius proven on the model's input holds in a
frame's own pixels.

The preprocessing of a frame x of C_in channels, H x W pixels in [0, 1] (uint8 / 255, uint16 / 65535;
float frames as they are) is affine (`ros.image_conversion.FrameConverter.operator` describes its own):

    x_model = P x + b,   P = M (x) R_h (x) R_w   (x flattened as (C_in, H, W))

R_h (H', H) and R_w (W', W) resize each axis, M (C_out, C_in) is the channel map (order, alpha dropped,
luma or grey repeated, 1 / std) and b = -mean / std. The spectral norm of a Kronecker product is the
product of its factors' norms, so ||P||_2 = ||M||_2 ||R_h||_2 ||R_w||_2 exactly (largest singular
values of small matrices, float64 SVD).

Guarantee. The float32 evaluation of P x + b is off by at most, in l2,
    eps(X) = gamma_K sqrt(H' W') (X rho_h rho_w || |M| 1 ||_2 + ||b||_2),   X = max |x|,
rho the largest absolute row sum of a resize, gamma_K = K u / (1 - K u), u = 2^-24, K the roundings on
any path from a pixel to an output (products and sums in any order: taps_h taps_w + 4 for the resize, with
each axis' float32 weight taken as rounded once more, plus the channel steps); the standard bound for
sums of products (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3). Hence for frames x, x'
with ||x' - x||_2 <= r the model inputs differ by at most ||P||_2 r + eps(X) + eps(X'), and a radius
r_model proven around the model input of x gives the frame radius
    r = (r_model - eps(X) - eps(X')) / ||P||_2.
Integer frames: X, X' <= 1. Float frames: X' <= X + r (max |.| <= ||.||_2), so r = (r_model - 2 eps(X)) /
(||P||_2 + a), a = d eps / dX.

Own code: the norm of a resize operator and this rounding bound are a few lines of numpy; no library
gives them.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

UNIT_ROUNDOFF = 2.0**-24  # float32, the dtype of the model input
SVD_SLACK = 1e-10  # relative: a float64 SVD's largest singular value is within ~n 1e-16 of the exact one


class FrameBound(NamedTuple):
    """How a radius on the model input becomes one in the frame's pixels (l2):
    r_frame = max(r_model - offset, 0) / divisor. divisor inf (and `reason`): the preprocessing of such
    frames is not bounded, nothing is certified."""

    divisor: float
    offset: float
    reason: str = ""

    def model_radius(self, frame_radius: float) -> float:
        """The model-space radius a frame radius needs: frame_radius * divisor + offset (inf when unbounded)."""
        return frame_radius * self.divisor + self.offset


def unbounded(reason: str) -> FrameBound:
    """The FrameBound of frames whose preprocessing is not bounded: nothing of theirs is certified."""
    return FrameBound(math.inf, 0.0, reason)


def frame_radii(model_radii: np.ndarray, bounds) -> np.ndarray:
    """Per-frame r_frame (N,) from model-space radii (N,) and one FrameBound per frame."""
    offsets = np.array([bound.offset for bound in bounds], dtype=np.float64)
    divisors = np.array([bound.divisor for bound in bounds], dtype=np.float64)
    return np.maximum(np.asarray(model_radii, dtype=np.float64) - offsets, 0.0) / divisors


@dataclass(frozen=True)
class LinearPreprocessing:
    """x_model = (M (x) R_h (x) R_w) x + b for a frame x (C_in, H, W) of [0, 1] pixels.

    channels M (C_out, C_in) and offset b (C_out,), float64; resize (R_h (H', H), R_w (W', W)) or None
    (not resized); channel_roundings: float32 roundings of the steps after the resize (see module)."""

    channels: np.ndarray
    offset: np.ndarray
    resize: tuple[np.ndarray, np.ndarray] | None
    channel_roundings: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        """P x + b in float64: x (C_in, H, W) -> (C_out, H', W')."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if self.resize is not None:
            rows, columns = self.resize
            x = rows @ x @ columns.T
        return np.einsum("oc,chw->ohw", self.channels, x) + self.offset[:, None, None]


@dataclass(frozen=True)
class PreprocessingBound:
    """||P||_2 (`norm`) and the float32 rounding eps(X) = slope X + constant of one evaluation (module)."""

    norm: float
    slope: float
    constant: float

    def rounding(self, max_abs: float) -> float:
        """eps(X): l2 bound on the float32 rounding of one evaluation of a frame with max |x| = X."""
        return self.slope * max_abs + self.constant

    def for_frame(self, max_abs: float | None = None) -> FrameBound:
        """The FrameBound of an integer frame (max_abs None: every frame of the encoding is in [0, 1]) or
        of a float frame whose largest |pixel| is max_abs."""
        if max_abs is None:
            return FrameBound(self.norm, 2.0 * self.rounding(1.0))
        return FrameBound(self.norm + self.slope, 2.0 * self.rounding(max_abs))


def spectral_norm(matrix: np.ndarray) -> float:
    """Largest singular value of a matrix (float64 SVD), raised by SVD_SLACK for the SVD's own rounding."""
    return float(np.linalg.norm(np.asarray(matrix, dtype=np.float64), 2)) * (1.0 + SVD_SLACK)


def _gamma(roundings: int) -> float:
    """gamma_K = K u / (1 - K u): relative error of K float32 roundings in a row."""
    ku = roundings * UNIT_ROUNDOFF
    if ku >= 1.0:
        raise ValueError(f"{roundings} float32 roundings: no rounding bound")
    return ku / (1.0 - ku)


def preprocessing_bound(operator: LinearPreprocessing, output_pixels: int) -> PreprocessingBound:
    """||P||_2 and the rounding bound of `operator`, whose output has `output_pixels` = H' W' per channel."""
    norm = spectral_norm(operator.channels)
    spread, roundings = 1.0, operator.channel_roundings
    if operator.resize is not None:
        taps = 1
        for axis in operator.resize:
            norm *= spectral_norm(axis)
            spread *= float(np.abs(axis).sum(axis=1).max())
            taps *= int(np.count_nonzero(axis, axis=1).max())
        roundings += taps + 4
    scale = _gamma(roundings) * math.sqrt(output_pixels)
    slope = scale * spread * float(np.linalg.norm(np.abs(operator.channels).sum(axis=1)))
    return PreprocessingBound(norm, slope, scale * float(np.linalg.norm(operator.offset)))
