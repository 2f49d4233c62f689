"""Sequential certification of the mixture at a required l2 radius (Gaussian smoothing, votes).

The mixture (1 - alpha) softmax(g) + alpha h, with h the smoothing of a base model (noise sigma), is
certified at x by Theorem 5 with one bound: L <= h_y(x) and U = 1 - L >= max_{i != y} h_i(x), so

    r = sigma/2 (PhiInv(alpha L) - PhiInv(1 - alpha L)) = sigma PhiInv(alpha L),
    r >= r_req  <=>  L >= p_min := Phi(r_req / sigma) / alpha     (unreachable when p_min > 1).

Instead of a fixed number of samples, votes for the class y are counted at looks n_1 < ... < n_K
(cumulative noise samples), and sampling stops at the first look whose Clopper-Pearson lower bound
L_k, at level delta_k, reaches p_min (certify), or when no later look can reach it even if every
remaining vote is for y (abstain). The plan precomputes the bound and the radius of every count at
every look, so certifying a frame calls no scipy function.

Guarantee (union bound over looks). Let S_k be the votes for y among the first n_k samples of the
noise stream and E the event that L_k(S_k) <= h_y(x) for EVERY k, including looks that sampling
never reaches. Each L_k is an exact one-sided bound at level delta_k, so P(not E) <= sum_k delta_k
<= delta, whatever the stopping rule. Sampling stops at some look tau, so on E the published
L_tau <= h_y(x) and Theorem 5 holds with L_tau and U = 1 - L_tau. Hence, for each input, with
probability >= 1 - delta over the noise: p_top_lower <= h_y(x) and the mixture with the exact h
predicts y at every x' with ||x' - x||_2 < radius, for any g; certified means radius >= r_req. This
needs y to be chosen without the estimation noise (the clean prediction of the base model, or a
class given by the caller), as in Cohen et al.'s CERTIFY. Re-testing at level delta after every
batch instead would not be valid: the chance that SOME look's bound misses grows with the looks.

Written here rather than taken from a library: `confseq` builds C++ from source on this machine,
`expectation` needs Python >= 3.12 (the ROS wheels run 3.11), and a few looks at exact
Clopper-Pearson levels are tighter at those looks than a confidence sequence valid at every n.
Mode "probs" is not supported: the empirical Bernstein bound needs n > 7 ln(2/delta) / (3 (1 - p_min))
samples even when every sample is 1 (about 140 at alpha 0.75, sigma 0.25, r_req 0.1, delta 1e-3),
so looking early gains nothing over the fixed-n `SmoothedClassifier.certify`.
"""

import math
from statistics import NormalDist
from typing import NamedTuple

import torch

from mix_perception.core import bounds
from mix_perception.core.certify import gaussian_lipschitz, smoothing_radius
from mix_perception.core.smoothing import SmoothedClassifier


class SequentialCertificate(NamedTuple):
    """Result of `certify_sequential` for a batch of N inputs (tensors on the inputs' device).

    prediction (N,) int64: the class y certified (chosen before any noise was drawn).
    certified (N,) bool: radius >= required_radius was decided (and radius > 0).
    radius (N,) float64: sigma PhiInv(alpha L) at the look where sampling stopped, clipped at 0 (it
        holds below the required radius too; 0 for alpha <= 1/2).
    p_top_lower (N,) float64: L, the lower bound on h_y(x) at that look.
    samples (N,) int64: noise samples drawn for each input (a look n_k).
    robust_probs (N, C) float: the Monte Carlo estimate of h(x) from those samples (not a bound).
    """

    prediction: torch.Tensor
    certified: torch.Tensor
    radius: torch.Tensor
    p_top_lower: torch.Tensor
    samples: torch.Tensor
    robust_probs: torch.Tensor


def default_looks(p_min: float, delta: float, n_max: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Looks n_1 < ... < n_K = n_max and their levels delta_k (summing to delta).

    Half of delta goes to the first look, at n_1 = ceil(ln(delta/2) / ln p_min): the fewest samples
    that certify when every vote agrees (the Clopper-Pearson bound of n votes out of n is
    delta_1^(1/n)), which decides most frames of an accurate model. The later looks grow
    geometrically by the ratio nearest 2 up to n_max and share the other half evenly. One look at
    n_max (level delta) when p_min >= 1 or n_max is below about 1.4 n_1.
    """
    first = math.ceil(math.log(delta / 2) / math.log(p_min)) if p_min < 1.0 else n_max
    steps = round(math.log2(n_max / first)) if first < n_max else 0
    if steps < 1:
        return (n_max,), (delta,)
    looks = tuple(sorted({round(first * (n_max / first) ** (k / steps)) for k in range(steps + 1)}))
    later = delta / 2 / (len(looks) - 1)
    return looks, (delta / 2,) + (later,) * (len(looks) - 1)


class SequentialPlan:
    """Looks, levels and the decision table of sequential certification at `required_radius`.

    Build once per (sigma, alpha, required_radius, delta, n_max) and reuse for every batch; alpha in
    [0, 1] (validated by the caller).
    Attributes: p_min = Phi(r_req / sigma) / alpha (inf for alpha <= 1/2); looks, deltas from
    `default_looks`; lower, radius (K, n_max + 1) float64: Clopper-Pearson bound at level delta_k and
    Theorem 5 radius (U = 1 - L) of count t at look k (t <= n_k); certify_at[k]: the smallest count
    with radius >= r_req and radius > 0 (n_k + 1 if none); continue_from[k]: the smallest count from
    which a later look can still certify (certify_at[k] at the last look: sampling ends there);
    reachable: whether any look can certify at all (if not, with p_min >= 1 there is one look, at n_max:
    each input still draws n_max samples, for the estimate of h that the mixture needs and for the
    smaller radius they certify).
    """

    def __init__(self, sigma: float, alpha: float, required_radius: float, delta: float = 0.001, n_max: int = 256):
        self.alpha = float(alpha)
        self.delta = bounds.check_delta(delta)
        if not (required_radius >= 0.0 and math.isfinite(required_radius)):
            raise ValueError(f"required_radius must be >= 0 and finite, got {required_radius!r}")
        if n_max < 1:
            raise ValueError(f"n_max must be positive, got {n_max}")
        gaussian_lipschitz(sigma)  # validates sigma
        self.sigma, self.required_radius = float(sigma), float(required_radius)
        phi = NormalDist().cdf(self.required_radius / self.sigma)
        self.p_min = phi / self.alpha if self.alpha > 0.5 else math.inf
        self.looks, self.deltas = default_looks(self.p_min, self.delta, int(n_max))
        self.lower = torch.zeros(len(self.looks), self.looks[-1] + 1, dtype=torch.float64)
        for k, (n, level) in enumerate(zip(self.looks, self.deltas, strict=True)):
            self.lower[k, : n + 1] = bounds.clopper_pearson_lower(torch.arange(n + 1), n, level)
        self.radius = smoothing_radius(self.lower, 1.0 - self.lower, self.alpha, self.sigma)
        enough = (self.radius >= self.required_radius) & (self.radius > 0)  # never beyond n_k: lower 0 there
        certify_at = [int(row.nonzero()[0]) if row.any() else n + 1 for row, n in zip(enough, self.looks, strict=True)]
        self.certify_at = tuple(certify_at)
        # count c at look k can still certify at look j > k iff c + (n_j - n_k) >= certify_at[j]
        self.continue_from = tuple(
            min(
                (certify_at[j] - self.looks[j] + self.looks[k] for j in range(k + 1, len(self.looks))),
                default=certify_at[k],
            )
            for k in range(len(self.looks))
        )
        self.reachable = any(t <= n for t, n in zip(certify_at, self.looks, strict=True))

    def decide(self, look: int, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(certified, stop) bool masks for vote counts for y (any shape) at look index `look`."""
        certified = counts >= self.certify_at[look]
        return certified, certified | (counts < self.continue_from[look])


@torch.no_grad()
def certify_sequential(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    plan: SequentialPlan,
    classes: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SequentialCertificate:
    """Certify the mixture at plan.required_radius around each input of x (N, ...), stopping early.

    y = `classes` (N,) when given, else the base model's prediction on the clean inputs (one clean
    forward per input, not counted in `samples`). At each look, the inputs still undecided draw
    their next n_k - n_{k-1} noise samples together (batched by settings.batch_size); each input
    stops on its own. Guarantee (module docstring): per input, with probability >= 1 - plan.delta,
    p_top_lower <= h_y(x) and the mixture predicts y within `radius`; certified => radius >= r_req.
    """
    settings = smoothed.settings
    if settings.mode != "votes":
        raise ValueError(
            f"sequential certification counts votes: the smoothed classifier's mode must be "
            f"'votes', got {settings.mode!r} (use SmoothedClassifier.certify for 'probs')"
        )
    if settings.sigma != plan.sigma:
        raise ValueError(f"the plan is for sigma {plan.sigma}, the smoothed classifier has {settings.sigma}")
    clean_logits = smoothed.base(x)
    prediction = clean_logits.argmax(dim=-1) if classes is None else torch.as_tensor(classes, device=x.device).long()
    generator = generator or smoothed.make_generator(x.device)
    total = torch.zeros(clean_logits.shape, dtype=clean_logits.dtype, device=x.device)
    counts = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    stopped_at = torch.zeros_like(counts)  # the look where sampling stopped
    active = torch.arange(x.shape[0], device=x.device)
    drawn = 0
    for look, n in enumerate(plan.looks):
        if active.numel() == 0:
            break
        total.index_add_(0, active, smoothed.sample(x[active], n - drawn, generator).total)
        drawn = n
        counts[active] = total[active].gather(-1, prediction[active, None]).squeeze(-1).round().long()
        _, stop = plan.decide(look, counts[active])
        stopped_at[active[stop]] = look
        active = active[~stop]
    look, count = stopped_at.cpu(), counts.cpu()
    lower = plan.lower[look, count].to(x.device)
    radius = plan.radius[look, count].to(x.device)
    certify_at = torch.tensor(plan.certify_at, device=x.device)[stopped_at]
    samples = torch.tensor(plan.looks, device=x.device)[stopped_at]
    estimate = total / samples.unsqueeze(-1)
    return SequentialCertificate(prediction, counts >= certify_at, radius, lower, samples, estimate)
