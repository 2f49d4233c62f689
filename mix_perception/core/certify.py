"""Certified radii of the mixed classifier (Bai, Anderson, Sojoudi, L4DC).

The mixture is f = (1 - alpha) softmax(g) + alpha h with h's probabilities h_i in [0, 1]. All radii
are in the input units (pixels in [0, 1]) of the norm that the Lipschitz constant or sigma carries.
Every function returns 0 — never a negative number, never NaN — where nothing is certified,
in particular for alpha <= 1/2, where g can outvote h whatever h says.

The functions are exact statements about the probabilities they are given. When h's probabilities
are Monte Carlo estimates (a smoothed h), pass confidence bounds, not estimates: see
`smoothing.SmoothedClassifier.certify`.
"""

import math

import torch

from mix_perception.core.mixing import check_alpha


def gaussian_lipschitz(sigma: float) -> float:
    """l2 Lipschitz constant sqrt(2/pi)/sigma of x -> E[u(x + N(0, sigma^2 I))] for any u with values in [0, 1]."""
    if not sigma > 0.0 or math.isinf(sigma):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    return math.sqrt(2.0 / math.pi) / sigma


def top_two_margin(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus runner-up probability per row of probs (N, C) -> (N,); the top-1 itself when C == 1.

    For h's probabilities this is the margin of Lemma 2 (and of the paper's Table 1).
    """
    if probs.shape[-1] < 2:
        return probs[..., 0]
    top = probs.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def margin_certified(margin: torch.Tensor, alpha: float) -> torch.Tensor:
    """Lemma 2's condition, elementwise: alpha > 1/2 and margin > (1 - alpha) / alpha.

    If h's top-1 minus every other class probability exceeds (1 - alpha)/alpha at every point of a
    ball, the mixture predicts h's class on that ball. Returns a bool tensor of margin's shape.
    """
    alpha = check_alpha(alpha)
    margin = torch.as_tensor(margin)
    if alpha <= 0.5:
        return torch.zeros_like(margin, dtype=torch.bool)
    return margin > (1.0 - alpha) / alpha


def lipschitz_radius_from_bounds(
    top_class: torch.Tensor,
    p_top_lower: torch.Tensor,
    p_upper: torch.Tensor,
    alpha: float,
    lipschitz,
) -> torch.Tensor:
    """Theorem 4 with bounds: r = min_{i != y} (alpha (L_y - U_i) + alpha - 1) / (alpha (Lip_y + Lip_i)), clipped at 0.

    top_class y (N,) int; p_top_lower L_y (N,) a lower bound on h_y(x); p_upper U (N, C) upper
    bounds on h_i(x) (column y is ignored); lipschitz: a positive scalar or (C,) tensor of the
    Lipschitz constants of h's probabilities in the chosen norm. Returns (N,) float64 radii.
    """
    alpha = check_alpha(alpha)
    p_upper = torch.as_tensor(p_upper).double()
    constants = torch.as_tensor(lipschitz, dtype=torch.float64, device=p_upper.device)
    if not (torch.all(constants > 0) and torch.all(torch.isfinite(constants))):
        raise ValueError(f"Lipschitz constants must be positive and finite, got {lipschitz!r}")
    constants = constants.expand(p_upper.shape[-1])
    top_class = torch.as_tensor(top_class, device=p_upper.device).long()
    if alpha <= 0.5:
        return torch.zeros(p_upper.shape[0], dtype=torch.float64, device=p_upper.device)
    lower = torch.as_tensor(p_top_lower, device=p_upper.device).double().unsqueeze(-1)
    numerator = alpha * (lower - p_upper) + alpha - 1.0
    denominator = alpha * (constants[top_class].unsqueeze(-1) + constants)
    per_class = (numerator / denominator).scatter(-1, top_class.unsqueeze(-1), math.inf)
    radius = per_class.min(dim=-1).values
    return radius.nan_to_num(nan=0.0, posinf=0.0).clamp_min(0.0)


def lipschitz_radius(robust_probs: torch.Tensor, alpha: float, lipschitz) -> torch.Tensor:
    """Theorem 4 on exact probabilities of h (N, C): radius (N,) around each x, y = argmax h(x).

    Within that radius (in the norm of the Lipschitz constants) the mixture predicts y.
    """
    robust_probs = torch.as_tensor(robust_probs).double()
    top_class = robust_probs.argmax(dim=-1)
    p_top = robust_probs.gather(-1, top_class.unsqueeze(-1)).squeeze(-1)
    return lipschitz_radius_from_bounds(top_class, p_top, robust_probs, alpha, lipschitz)


def smoothing_radius(p_top_lower, p_runner_upper, alpha: float, sigma: float) -> torch.Tensor:
    """Theorem 5, l2: r = sigma/2 (PhiInv(alpha L_y) - PhiInv(alpha U + 1 - alpha)), clipped at 0.

    For h(x) = E[hbar(x + N(0, sigma^2 I))] with hbar in [0, 1]: if L_y <= h_y(x) and
    U >= max_{i != y} h_i(x), the mixture predicts y within the returned l2 radius. Elementwise over
    broadcast tensors; float64; +inf only when L_y = 1 and alpha = 1 (the exact all-y case).
    """
    alpha = check_alpha(alpha)
    gaussian_lipschitz(sigma)  # validates sigma
    lower = torch.as_tensor(p_top_lower).double().clamp(0.0, 1.0)
    upper = torch.as_tensor(p_runner_upper).double().clamp(0.0, 1.0)
    if alpha <= 0.5:
        return torch.zeros(torch.broadcast_shapes(lower.shape, upper.shape), dtype=torch.float64)
    gap = torch.special.ndtri(alpha * lower) - torch.special.ndtri(alpha * upper + 1.0 - alpha)
    return (0.5 * sigma * gap).nan_to_num(nan=0.0, posinf=math.inf).clamp_min(0.0)
