"""Projected gradient descent (PGD) attacks, run over a data set, and the attack targets of the mixing paper.

PGD: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (ICLR 2018). Untargeted: gradient ascent on the cross-entropy of the model's
logits, with a random start, projected after every step onto the eps-ball around the clean input
(l_inf or l_2) and onto the pixel box [0, 1].

Attack targets: Bai, Anderson, Sojoudi, "Mixing Classifiers to Alleviate the Accuracy-Robustness
Trade-Off", section 4.1: STD and ROB are transfer attacks computed on the standard model g or the
robust model h alone and then evaluated on the mixture; MIX is the adaptive attack, end-to-end
through the mixed classifier.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mix_perception.experiments.batches import DEFAULT_RUN, RunSettings, progress_bar, slices

NORMS = ("linf", "l2")
ATTACK_TARGETS = ("std", "rob", "mix")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values (N,) to (N, 1, ..., 1) so they broadcast against `like` (N, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _l2_norms(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample l_2 norms (N,) of delta (N, ...)."""
    return delta.flatten(1).norm(p=2, dim=1)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """A perturbation (same shape as x) drawn uniformly from the eps-ball of the given norm.

    linf: each coordinate uniform in [-eps, eps]. l2: uniform in the ball, i.e. a Gaussian direction
    normalized to unit length times a radius eps * U^(1/d), U uniform in [0, 1], d = numel per sample.
    Random numbers come from `generator` (on the generator's own device) or the global RNG.
    """
    device = generator.device if generator is not None else x.device
    shape, dtype = x.shape, x.dtype
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return ((2.0 * u - 1.0) * eps).to(x.device)
    direction = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    u = torch.rand(shape[0], generator=generator, device=device, dtype=dtype)
    d = x[0].numel()
    radius = eps * u.pow(1.0 / d)
    unit = direction / _per_sample(_l2_norms(direction).clamp_min(torch.finfo(dtype).tiny), direction)
    return (unit * _per_sample(radius, unit)).to(x.device)


def _project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project x_adv onto the eps-ball around x, then onto [0, 1].

    Clipping to [0, 1] after the ball keeps the point in the ball: for x in [0, 1] it only moves each
    coordinate of x_adv - x towards 0, which lowers both the l_inf and the l_2 norm.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = _l2_norms(delta)
        scale = torch.where(norms > eps, eps / norms.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(norms))
        delta = delta * _per_sample(scale, delta)
    return (x + delta).clamp(0.0, 1.0)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(grad) for l_inf; grad / ||grad||_2 per sample for l_2
    (zero where the gradient is zero)."""
    if norm == "linf":
        return grad.sign()
    norms = _per_sample(_l2_norms(grad), grad)
    return torch.where(norms > 0, grad / norms.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))


@dataclass(frozen=True)
class PGDConfig:
    """Settings of `pgd`: norm "linf" | "l2", radius eps (pixels in [0, 1]), steps,
    step size (None: 2.5 eps / steps), random start."""

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps!r}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step size must be positive, got {self.step_size!r}")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: PGDConfig, generator=None) -> torch.Tensor:
    """Untargeted PGD attack (Madry et al., ICLR 2018) in the l_inf or l_2 norm of `config`.

    Maximizes the cross-entropy of model(x_adv) w.r.t. the labels y by config.steps steps of
    x_adv <- Proj(x_adv + step_size * d), with d = sign(grad) for "linf" and d = grad / ||grad||_2
    (per sample) for "l2", where Proj projects onto {||x_adv - x|| <= eps} and then onto [0, 1];
    with config.random_start, from a point drawn uniformly in the eps-ball (clipped to [0, 1]).

    model returns logits (N, K) for inputs (N, C, H, W); its mode (eval/train) is left as the caller
    set it, and gradients are taken w.r.t. the input only. x: clean inputs (N, ...) in [0, 1], any
    float dtype/device; y: labels (N,) int64; generator: torch.Generator of the random start
    (default: the global RNG).

    Returns x_adv (shape, dtype and device of x), detached, with ||x_adv - x|| <= eps in the chosen
    norm (up to float rounding) and every value in [0, 1]. With eps = 0 or steps = 0 and no random
    start, x_adv equals x clipped to [0, 1].
    """
    if x.dim() < 2 or y.shape != x.shape[:1]:
        raise ValueError(f"expected x of shape (N, ...) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    eps, norm, steps = float(config.eps), config.norm, config.steps
    step_size = config.step_size
    if step_size is None:
        step_size = 2.5 * eps / steps if steps > 0 else 0.0

    x = x.detach()
    y = y.detach().to(x.device)
    x_adv = x.clamp(0.0, 1.0)
    if config.random_start and eps > 0:
        x_adv = _project(x, x + _random_start(x, eps, norm, generator), eps, norm)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _project(x, x_adv.detach() + step_size * _ascent_direction(grad, norm), eps, norm)
    return x_adv.detach()


def adversarial_inputs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: PGDConfig, run: RunSettings = DEFAULT_RUN, desc="PGD"
) -> torch.Tensor:
    """PGD adversarial inputs (N, C, H, W) on the CPU against `model`, in batches on run.device.

    Batch number k draws its random start from a generator seeded with run.seed + k, so two attacks
    with the same seed and batch size start from the same points (e.g. MIX at alpha 0 equals STD).
    """
    device = torch.device(run.device)
    results = []
    with progress_bar(len(x), desc, run.progress) as bar:
        for k, part in enumerate(slices(len(x), run.batch_size)):
            generator = torch.Generator(device=device).manual_seed(int(run.seed) + k)
            results.append(pgd(model, x[part].to(device), y[part].to(device), config, generator).cpu())
            bar.update(part.stop - part.start)
    return torch.cat(results) if results else x.clone()
