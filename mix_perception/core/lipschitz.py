"""Proven upper bounds on the l2 Lipschitz constant of a network's logits w.r.t. its [0, 1] pixels.

For a chain of layers f = f_n o ... o f_1, Lip(f) <= prod_k Lip(f_k). Each factor here is an upper
bound proven for the layer as it runs, with its real padding and stride, computed in float64 from
the weights the model holds (not from any training-time parametrization, and never a power-iteration
estimate, which is a lower bound). Supported layers and their bounds:

- nn.Conv2d (dilation 1, groups 1): exact spectral norm of the circular convolution on the padded
  grid (see `conv2d_bound`), for circular / reflect / replicate padding times sqrt(the most copies
  padding makes of one pixel) unless circular padding is exact (`_padded_conv_bound`);
- nn.Linear: the largest singular value of the weight;
- nn.ReLU, architectures.GroupSort2, nn.Identity, nn.Flatten: 1;
- nn.MaxPool2d and the L2-norm pools nn.LPPool2d(2, ...) and architectures.L2NormPool2d: sqrt(m),
  m = ceil(kh / sh) * ceil(kw / sw) the most windows one input pixel can belong to (1 when the
  windows do not overlap); nn.AvgPool2d: sqrt(m kh kw) / divisor (`avg_pool_bound`);
- nn.PixelUnshuffle, nn.PixelShuffle (deel-torchlip's InvertibleDownSampling / UpSampling export to
  these): 1, they only move pixels;
- models.Normalized ((x - mean) / std): 1 / min(std); models.RepeatChannels (grey -> C): sqrt(C);
- nn.Sequential (and deel-torchlip's Sequential, whose forward is nn.Sequential's): the product over
  its children;
- the deel-torchlip layers that `vanilla_export()` leaves in a model as they are: see `deel_bound`.

Types are matched exactly (a subclass may compute something else, e.g. pad symmetrically). Any other
module raises ValueError naming it: a model whose constant cannot be bounded is refused.
Every numerically computed factor (conv, linear) is multiplied by 1 + RELATIVE_SLACK, far above the
float64 rounding of an SVD or FFT of these sizes (~1e-13 relative). The bound is a statement about
the network in exact arithmetic; the float32 forward pass deviates from it by its own rounding
(~1e-6 relative on the logits), which no Lipschitz constant covers.
"""

import math
import sys

import torch
from torch import nn

from mix_perception.core.architectures import GroupSort2, L2NormPool2d
from mix_perception.core.models import Normalized, RepeatChannels

RELATIVE_SLACK = 1e-6
_ONE_LIPSCHITZ = (nn.ReLU, GroupSort2, nn.Identity, nn.Flatten, nn.PixelUnshuffle, nn.PixelShuffle)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv2d_bound(conv: nn.Conv2d, input_shape) -> float:
    """Upper bound on the l2 operator norm of conv (bias ignored) on inputs of shape (C, H, W).

    Let P embed x into the zero-padded grid n1 x n2 = (H + pad_h, W + pad_w) (an isometry), and C_circ
    the circular cross-correlation with conv's kernel on that grid (grid at least kernel-sized). At
    the output positions conv computes (window inside the padded grid, taken every `stride`), no
    index wraps around, so conv(x) = S C_circ P x with S a selection of coordinates (norm <= 1): the
    zero padding is a restriction and the stride a subsampling of the circular operator. The 2-D DFT
    block-diagonalizes C_circ, so ||C_circ||_2 = max over the n1 * n2 frequencies of the largest
    singular value of the (out, in) matrix sum_{a,b} K[:, :, a, b] e^{-2 pi i (a u / n1 + b v / n2)}
    (Sedghi, Gupta, Long, ICLR 2019), computed here in float64. Hence ||conv||_2 <= ||C_circ||_2.
    The kernel is real, so the matrix at frequency (-u, -v) is the complex conjugate of the one at
    (u, v), with the same singular values: the half spectrum of rfft2 (n1 x (n2 // 2 + 1)) covers all.
    """
    if _pair(conv.dilation) != (1, 1) or conv.groups != 1:
        raise ValueError(f"cannot bound {conv}: only dilation 1 and groups 1 are supported")
    if conv.padding_mode != "zeros":
        return _padded_conv_bound(conv, input_shape) * (1.0 + RELATIVE_SLACK)
    kh, kw = _pair(conv.kernel_size)
    if conv.padding == "valid":
        pad_h, pad_w = 0, 0
    elif conv.padding == "same":
        pad_h, pad_w = kh - 1, kw - 1
    else:
        pad_h, pad_w = (2 * p for p in _pair(conv.padding))
    n1, n2 = max(input_shape[1] + pad_h, kh), max(input_shape[2] + pad_w, kw)
    return _circulant_norm(conv, n1, n2) * (1.0 + RELATIVE_SLACK)


def _circulant_norm(conv: nn.Conv2d, n1: int, n2: int) -> float:
    """||C_circ||_2 of conv's kernel on an n1 x n2 grid (at least kernel-sized): see `conv2d_bound`."""
    symbol = torch.fft.rfft2(conv.weight.detach().double().cpu(), s=(n1, n2))  # (out, in, n1, n2 // 2 + 1)
    return float(torch.linalg.matrix_norm(symbol.permute(2, 3, 0, 1), ord=2).max())


def _padded_conv_bound(conv: nn.Conv2d, input_shape) -> float:
    """Bound for padding_mode circular, reflect or replicate (deel-torchlip's padding modes export to these).

    torch pads x with copies of its own pixels, P x, then convolves without padding: conv(x) = V P x, V
    the unpadded convolution on the padded grid, bounded by the circulant there (`conv2d_bound`). P has
    one 1 per row, so P^T P = diag(copies of each pixel) and ||P||_2 = sqrt(most copies of one pixel),
    counted by padding an index grid. Circular padding whose outputs land on distinct positions modulo
    (H, W) (and a grid at least kernel-sized) is a selection of the circulant on the H x W grid itself:
    output row i is row (i sh - top) mod H of it, so the bound is that circulant's norm, without sqrt(copies).
    """
    (_, h, w), (kh, kw), (sh, sw) = input_shape, _pair(conv.kernel_size), _pair(conv.stride)
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    rows, cols = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    if conv.padding_mode == "circular" and h >= kh and w >= kw and (rows - 1) * sh < h and (cols - 1) * sw < w:
        return _circulant_norm(conv, h, w)
    index = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    try:
        padded = nn.functional.pad(index, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    except (RuntimeError, ValueError, NotImplementedError) as error:
        raise ValueError(f"cannot bound {conv} on inputs {tuple(input_shape)}: {error}") from None
    copies = int(torch.bincount(padded.flatten().long()).max())
    return _circulant_norm(conv, max(padded.shape[-2], kh), max(padded.shape[-1], kw)) * math.sqrt(copies)


def linear_bound(linear: nn.Linear) -> float:
    """Largest singular value of the weight W (float64), the exact l2 operator norm, times 1 + slack.

    Computed as sqrt(largest eigenvalue of the smaller Gram matrix, W W^T or W^T W), the same number:
    rounding ~1e-13 relative at these sizes, far below the slack. An SVD of the wide (256, 3136) weight
    of the default model took 0.5-8 s on 2 busy cores (LAPACK threads), this ~0.1 s.
    """
    weight = linear.weight.detach().double().cpu()
    gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)) * (1.0 + RELATIVE_SLACK)


def pool_bound(pool: nn.Module) -> float:
    """sqrt(m) for MaxPool2d (dilation 1) or the L2-norm pool LPPool2d(2, ..., ceil_mode=False).

    Each output is 1-Lipschitz in its window's pixels in l2 (|max a - max b| <= max |a - b| <= ||a - b||_2,
    and | ||a||_2 - ||b||_2 | <= ||a - b||_2), so ||f(x) - f(x')||^2 <= sum over windows of
    ||(x - x')_window||^2 <= m ||x - x'||^2, where a pixel lies in at most m = ceil(kh/sh) ceil(kw/sw)
    windows. Padding (MaxPool2d pads with -inf) and partial windows only drop terms. LPPool2d with
    ceil_mode rescales partial windows (by more than 1), so it is refused, as are other norms.
    """
    if isinstance(pool, nn.LPPool2d) and (float(pool.norm_type) != 2.0 or pool.ceil_mode):
        raise ValueError(f"cannot bound {pool}: only the L2-norm pool (norm_type 2, ceil_mode False) is supported")
    if isinstance(pool, nn.MaxPool2d) and _pair(pool.dilation) != (1, 1):
        raise ValueError(f"cannot bound {pool}: only dilation 1 is supported")
    (kh, kw), (sh, sw) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw))


def avg_pool_bound(pool: nn.AvgPool2d) -> float:
    """sqrt(m kh kw) / d for nn.AvgPool2d with ceil_mode False, d = divisor_override or kh kw, padding
    counted in the divisor (count_include_pad, or no padding).

    Each output is (1/d) times the sum of at most kh kw pixels: by Cauchy-Schwarz its square is at most
    (kh kw / d^2) times the sum of their squares, and a pixel lies in at most m = ceil(kh/sh) ceil(kw/sw)
    windows, so ||f(x) - f(x')||^2 <= (m kh kw / d^2) ||x - x'||^2 (1 for non-overlapping windows and
    d = kh kw). Padding zeros only drop terms. Refused: ceil_mode (partial windows are divided by their
    own, smaller size) and padding left out of the divisor, for the same reason.
    """
    (kh, kw), (sh, sw) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    if pool.ceil_mode or (not pool.count_include_pad and _pair(pool.padding) != (0, 0)):
        raise ValueError(f"cannot bound {pool}: ceil_mode and count_include_pad=False with padding are not supported")
    divisor = pool.divisor_override or kh * kw
    return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw) * kh * kw) / divisor


def deel_bound(module: nn.Module) -> float | None:
    """Proven bound of a deel-torchlip layer that `vanilla_export()` keeps as it is, or None for other types.

    deel-torchlip is never imported here (the node does not need it): an instance of one of its classes
    exists only when its module is loaded, so the classes are taken from sys.modules and matched exactly.
    k is the layer's `_coefficient_lip`, by which its forward multiplies the output (deel-torchlip 1.0.5, the
    pinned version, whose forwards test_lipschitz checks against each bound through the unrolled Jacobian):
    - GroupSort (GroupSort2, FullSort): sorts disjoint groups of channels; sorting is 1-Lipschitz in l2
      (rearrangement inequality: sum sort(a)_i sort(b)_i >= sum a_i b_i), so |k|;
    - MaxMin: x -> (relu(x), relu(-x)); per coordinate the squared change is at most (a - b)^2, so |k|;
    - ScaledL2NormPool2d: |k| pool_bound (an nn.LPPool2d(2));
    - ScaledAvgPool2d: |k| scalingFactor avg_pool_bound (an nn.AvgPool2d times its scalingFactor);
    - ScaledAdaptiveAvgPool2d and ScaledAdaptativeL2NormPool2d to (1, 1): the channel's sum / sqrt(HW)
      and its l2 norm, each 1-Lipschitz: |k|;
    - InvertibleDownSampling, InvertibleUpSampling (kept when k != 1): their forward is PixelUnshuffle /
      PixelShuffle's, a permutation, and ignores k: 1;
    - LPReLU: slope 1 for x >= 0 and clamp(a, -k, k) below: max(1, max |clamp(a, -k, k)|).
    """
    deel = sys.modules.get("deel.torchlip")
    if deel is None:
        return None
    kind, k = type(module), abs(float(getattr(module, "_coefficient_lip", 1.0)))
    if kind in (deel.GroupSort, deel.GroupSort2, deel.FullSort, deel.MaxMin):
        return k
    if kind is deel.ScaledL2NormPool2d:
        return k * pool_bound(module)
    if kind is deel.ScaledAvgPool2d:
        return k * float(module.scalingFactor) * avg_pool_bound(module)
    if kind in (deel.ScaledAdaptiveAvgPool2d, deel.ScaledAdaptativeL2NormPool2d):
        if _pair(module.output_size) != (1, 1):
            raise ValueError(f"cannot bound {module}: only output_size (1, 1) is supported")
        return k
    if kind in (deel.InvertibleDownSampling, deel.InvertibleUpSampling):
        return 1.0
    if kind is deel.LPReLU:
        slopes = module.weight.detach().double().clamp(-k, k).abs()
        return max(1.0, float(slopes.max()))
    return None


def _is_sequential(module: nn.Module) -> bool:
    """nn.Sequential, or deel-torchlip's Sequential (it keeps nn.Sequential's forward), matched exactly."""
    deel = sys.modules.get("deel.torchlip")
    return type(module) is nn.Sequential or (deel is not None and type(module) is deel.Sequential)


def _steps(module: nn.Module):
    """The model as a flat chain of (module, is_normalization) in the order they run."""
    if _is_sequential(module):
        for child in module:
            yield from _steps(child)
    elif type(module) is Normalized:
        yield module, True
        yield from _steps(module.model)
    else:
        yield module, False


def _step_bound(module: nn.Module, is_normalization: bool, input_shape) -> float:
    """Proven l2 Lipschitz bound of one step on inputs of shape (C, H, W) or (D,); ValueError if unknown."""
    kind = type(module)  # exact types: a subclass may compute something else (e.g. pad symmetrically)
    if is_normalization:
        return 1.0 / float(module.std.min())
    if kind is nn.Conv2d:
        return conv2d_bound(module, input_shape)
    if kind is nn.Linear:
        return linear_bound(module)
    if kind in (nn.MaxPool2d, nn.LPPool2d, L2NormPool2d):
        return pool_bound(module)
    if kind is nn.AvgPool2d:
        return avg_pool_bound(module)
    if kind is RepeatChannels:
        return math.sqrt(module.channels)
    if kind in _ONE_LIPSCHITZ:
        return 1.0
    bound = deel_bound(module)
    if bound is not None:
        return bound
    raise ValueError(f"cannot bound the Lipschitz constant of layer type {type(module).__name__} ({module})")


def layer_bounds(model: nn.Module, input_shape) -> list[tuple[nn.Module, float]]:
    """(module, proven bound) for each step of the model on inputs of shape input_shape (C, H, W), in order.

    A Normalized wrapper appears once for its (x - mean) / std step, before its inner network's steps.
    Shapes between layers come from one forward of a zero input (on the model's device and dtype).
    """
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), torch.zeros(()))
    x = torch.zeros(1, *(int(s) for s in input_shape), device=reference.device, dtype=reference.dtype)
    bounds = []
    with torch.no_grad():
        for module, is_normalization in _steps(model):
            bounds.append((module, _step_bound(module, is_normalization, tuple(x.shape[1:]))))
            if not is_normalization:
                x = module(x)
    return bounds


def lipschitz_bound(model: nn.Module, input_shape) -> float:
    """Proven upper bound L on the l2 Lipschitz constant of x -> model(x) (logits) for x of shape (C, H, W):
    ||model(x) - model(x')||_2 <= L ||x - x'||_2. The product of `layer_bounds`; ValueError for a layer
    it cannot bound."""
    return math.prod(bound for _, bound in layer_bounds(model, input_shape))


def lipschitz_constants(model: nn.Module, input_shape) -> tuple[float, torch.Tensor]:
    """(lipschitz_bound, margin_lipschitz) of the model from one pass of `layer_bounds` (the costly part)."""
    bounds = layer_bounds(model, input_shape)
    return math.prod(bound for _, bound in bounds), _margin_constants(bounds)


def margin_lipschitz(model: nn.Module, input_shape) -> torch.Tensor:
    """(C, C) float64 matrix K of proven l2 Lipschitz bounds of the logit differences z_i - z_j (K_ii = 0).

    The model's last step must be nn.Linear with weight W (else ValueError; sqrt(2) L bounds every
    difference then): z_i - z_j = (W_i - W_j) . u + const with u the features before it, so
    K_ij = ||W_i - W_j||_2 * (bound of the steps before it) * (1 + slack). This is at most about
    sqrt(2) L (||W_i - W_j||_2 <= sqrt(2) ||W||_2), and often well below.
    """
    return _margin_constants(layer_bounds(model, input_shape))


def _margin_constants(bounds) -> torch.Tensor:
    """margin_lipschitz from the model's `layer_bounds`."""
    last = bounds[-1][0]
    if not isinstance(last, nn.Linear):
        raise ValueError(f"the model's last layer is {type(last).__name__}, not nn.Linear: no margin constants")
    weight = last.weight.detach().double().cpu()
    before = math.prod(bound for _, bound in bounds[:-1]) * (1.0 + RELATIVE_SLACK)
    return (weight.unsqueeze(1) - weight.unsqueeze(0)).norm(dim=-1) * before
