"""Certified radii of the mixed classifier (Bai, Anderson, Sojoudi, L4DC).

The mixture is f = (1 - alpha) softmax(g) + alpha h with h's probabilities h_i in [0, 1]. All radii
are in the input units (pixels in [0, 1]) of the norm that the Lipschitz constant or sigma carries.
Every function takes alpha in [0, 1] as a precondition (validated once at the boundary: the node's
parameter callback, the command line's argument types, MixedClassifier / mix_logits), and returns
0 — never a negative number, never NaN — where nothing is certified, in particular for alpha <= 1/2,
where g can outvote h whatever h says.

`lipschitz_logit_radius` is the deterministic certificate for an h given by logits z with a proven
l2 constant (mix_perception.core.lipschitz): it holds with probability 1.

The other functions are exact statements about the probabilities they are given. When h's probabilities
are Monte Carlo estimates (a smoothed h), pass confidence bounds, not estimates: see
`smoothing.SmoothedClassifier.certify`.
"""

import math

import numpy as np
import torch


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
    gaussian_lipschitz(sigma)  # validates sigma
    lower = torch.as_tensor(p_top_lower).double().clamp(0.0, 1.0)
    upper = torch.as_tensor(p_runner_upper).double().clamp(0.0, 1.0)
    if alpha <= 0.5:
        return torch.zeros(torch.broadcast_shapes(lower.shape, upper.shape), dtype=torch.float64)
    gap = torch.special.ndtri(alpha * lower) - torch.special.ndtri(alpha * upper + 1.0 - alpha)
    return (0.5 * sigma * gap).nan_to_num(nan=0.0, posinf=math.inf).clamp_min(0.0)


def _positive(name: str, value) -> float:
    """float(value); ValueError unless it is a positive finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 < number < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _softmax_lipschitz(lipschitz: float, logit_scale: float) -> float:
    """l2 constant (sqrt(2)/4) T L of each softmax_i(T z(x)) (T: the logit scale) when
    ||z(x) - z(x')||_2 <= L ||x - x'||_2.

    grad_z softmax_i(z) = p_i (e_i - p), and ||e_i - p||_2^2 = (1 - p_i)^2 + sum_{j != i} p_j^2
    <= 2 (1 - p_i)^2, so its norm is at most sqrt(2) p_i (1 - p_i) <= sqrt(2)/4.
    """
    return math.sqrt(2.0) / 4.0 * logit_scale * lipschitz


SEARCH_POINTS = 63  # radii tried at once in each round: the bracket shrinks 64-fold a round
SEARCH_ROUNDS = 8  # 64^-8 = 2^-48 of the bracket: far below the float32 rounding of the published radius


def _largest_radius(logits: np.ndarray, rates: np.ndarray, alpha: float, logit_scale: float) -> np.ndarray:
    """The largest r (N,) with F(r) < 1 - c of `lipschitz_logit_radius`, 0 where it fails at r = 0.

    logits (N, C) float64; rates (C, C): K. F increases in r, so a search over the bracket [low, high]
    keeps `low` where the condition holds: each round tries SEARCH_POINTS radii inside the bracket at
    once (one set of numpy calls, not one per halving: the per-call cost dominates on a few rows) and
    keeps the largest that holds and the next one as the new bracket. Every returned radius satisfies
    the condition.
    """
    rows = np.arange(len(logits))
    top = logits.argmax(axis=-1)
    margins = logit_scale * (logits[rows, top][:, None] - logits)  # d_j
    speeds = logit_scale * rates[top]  # s_j / r
    margins[rows, top], speeds[rows, top] = np.inf, 0.0  # y itself never enters F
    log_c = math.log((1.0 - alpha) / alpha) if alpha < 1.0 else -math.inf
    log_limit = math.log1p(-(1.0 - alpha) / alpha)

    def holds(radius: np.ndarray) -> np.ndarray:
        """radius (N, P) -> (N, P) bool: F(radius) < 1 - c for each row's radii."""
        exponents = speeds[:, None, :] * radius[:, :, None] - margins[:, None, :]  # -(d_j - s_j r), -inf for y
        largest = exponents.max(axis=-1)
        log_sum = largest + np.log(np.exp(exponents - largest[..., None]).sum(axis=-1))
        return np.logaddexp(largest, log_c + log_sum) < log_limit

    fractions = np.arange(1, SEARCH_POINTS + 1) / (SEARCH_POINTS + 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        low = np.zeros(len(logits))
        # at r = min_j d_j / s_j some margin reaches 0, so F >= 1 > 1 - c: an upper end for the search
        high = np.where(speeds > 0, margins / speeds, np.inf).min(axis=-1)
        high = np.nan_to_num(high, nan=0.0, posinf=0.0)
        certified = holds(low[:, None])[:, 0]
        for _ in range(SEARCH_ROUNDS):
            radii = low[:, None] + (high - low)[:, None] * fractions  # (N, P), increasing in each row
            inside = holds(radii)
            # the radii that hold before the first that fails (F is monotone; counting only the leading
            # ones keeps `low` a radius that was checked even if rounding broke monotonicity)
            passed = np.where(inside.all(axis=-1), SEARCH_POINTS, inside.argmin(axis=-1))
            bounds = np.concatenate([low[:, None], radii, high[:, None]], axis=-1)
            low, high = bounds[rows, passed], bounds[rows, passed + 1]
    return np.where(certified, low, 0.0)


def lipschitz_logit_radius(
    logits: torch.Tensor,
    alpha: float,
    lipschitz: float,
    margin_lipschitz: torch.Tensor | None = None,
    logit_scale: float = 1.0,
) -> torch.Tensor:
    """Deterministic l2 radius (N,) float64 within which the mixture with ANY g predicts y = argmax h(x).

    h's probabilities are p = softmax(T z(x)) for logits z (N, C), logit scale T > 0, where
    ||z(x) - z(x')||_2 <= L ||x - x'||_2 (lipschitz = L, proven) and optionally
    |(z_i - z_j)(x) - (z_i - z_j)(x')| <= K_ij ||x - x'||_2 (margin_lipschitz = K, (C, C)); without K,
    K_ij = sqrt(2) L, and K is never used above sqrt(2) L. Radii in the units of x (pixels in [0, 1]).

    Derivation (Lemma 2). With c = (1 - alpha)/alpha < 1 (alpha > 1/2), the mixture predicts y for
    every g wherever p_y - p_i > c for all i != y. With margins d_j = T (z_y - z_j),
    p_y - p_i = (1 - e^{-d_i}) / (1 + S), S = sum_{j != y} e^{-d_j}, which increases in every d_j.
    Within distance r of x each d_j drops by at most s_j = T K_yj r, so at every point of the ball
    p_y - p_i >= (1 - e^{-(d_i - s_i)}) / (1 + sum_{j != y} e^{-(d_j - s_j)}), and the condition holds on
    the whole ball when
        F(r) = max_i e^{-(d_i - s_i)} + c sum_{j != y} e^{-(d_j - s_j)} < 1 - c.
    F increases in r, so the largest such r is found by a bracketing search (`_largest_radius`: float64, in
    the log domain, numpy, whose per-call cost on a few rows is a fraction of torch's; the returned value
    satisfies the strict inequality; for K_yj = sqrt(2) L it is the closed form
    ln((1 - c) / (e^{-d_min} + c S)) / (sqrt(2) T L)). Theorem 4 with the probability constants that
    L implies ((sqrt(2)/4) T L, `_softmax_lipschitz`) is also valid; the larger of the two is returned.

    Returns 0 (never negative or NaN) for alpha <= 1/2, for rows with NaN logits, and wherever
    p_y - p_i > c fails at x itself; positive exactly where it holds. At alpha = 1 (c = 0) this is
    h's own certificate min_j (z_y - z_j) / K_yj.
    """
    lipschitz, logit_scale = _positive("lipschitz", lipschitz), _positive("logit_scale", logit_scale)
    logits = torch.as_tensor(logits).double()
    count, classes = logits.shape
    if margin_lipschitz is None:
        rates = torch.full((classes, classes), math.sqrt(2.0) * lipschitz, dtype=torch.float64)
    else:
        rates = torch.as_tensor(margin_lipschitz, dtype=torch.float64).cpu()
        off_diagonal = ~torch.eye(classes, dtype=torch.bool)
        if rates.shape != (classes, classes) or not (rates[off_diagonal] > 0).all() or not rates.isfinite().all():
            raise ValueError(f"margin_lipschitz must be a ({classes}, {classes}) tensor, positive off the diagonal")
        rates = rates.clamp(max=math.sqrt(2.0) * lipschitz)
    if alpha <= 0.5 or count == 0:
        return torch.zeros(count, dtype=torch.float64, device=logits.device)
    radius = torch.from_numpy(_largest_radius(logits.cpu().numpy(), rates.numpy(), alpha, logit_scale))
    radius = radius.to(logits.device)
    probabilities = torch.softmax(logit_scale * logits, dim=-1)
    theorem4 = lipschitz_radius(probabilities, alpha, _softmax_lipschitz(lipschitz, logit_scale))
    return torch.maximum(radius, theorem4).nan_to_num(nan=0.0, posinf=0.0).clamp_min(0.0)
