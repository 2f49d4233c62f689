"""Mixing variants for the ablation of Bai, Anderson, Sojoudi (Figure 1): what to mix, and how to scale h.

    mixed_i(x) = (1 - alpha) a_i(x) + alpha R_i(x) b_i(x)

with (a, b) = (g(x), h(x)) the logits (space "logits") or (softmax g, softmax h) (space "probs"),
and the scale R_i(x) of the paper's eq. (3) (as we read it):

    "one"        R_i = 1
    "grad_g"     R_i = ||grad_x g_i(x)||_2
    "grad_gmax"  R_i = ||grad_x max_j g_j(x)||_2
    "grad_ratio" R_i = ||grad_x g_i(x)||_2 / ||grad_x h_i(x)||_2

Space "probs" with R = 1 is `MixedClassifier`; the result there is returned as its log so every
variant returns scores (N, C) whose argmax is the prediction. Gradient scales cost one backward
pass per class: evaluation only, never the node's hot path. R is held constant under
differentiation (an attack on a variant sees R as a fixed per-input weight).
"""

import torch
from torch import nn

from mix_perception.core.mixing import check_alpha

SPACES = ("logits", "probs")
SCALES = ("one", "grad_g", "grad_gmax", "grad_ratio")


def output_gradient_norms(model: nn.Module, x: torch.Tensor, reduce_max: bool = False) -> torch.Tensor:
    """Per-sample l2 norms of input gradients of each logit, (N, C); or of the max logit, (N, 1).

    The model must treat samples independently (eval mode), so the gradient of the batch sum
    w.r.t. x gives each sample's own gradient.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if reduce_max:
            outputs = [logits.max(dim=-1).values]
        else:
            outputs = [logits[:, i] for i in range(logits.shape[-1])]
        norms = [torch.autograd.grad(out.sum(), x, retain_graph=True)[0].flatten(1).norm(dim=1) for out in outputs]
    return torch.stack(norms, dim=-1)


def mixing_scale(standard: nn.Module, robust: nn.Module, x: torch.Tensor, scale: str) -> torch.Tensor:
    """R(x): (N, C) or broadcastable (N, 1), per the table in the module docstring."""
    if scale == "one":
        return torch.ones(x.shape[0], 1, device=x.device)
    if scale == "grad_g":
        return output_gradient_norms(standard, x)
    if scale == "grad_gmax":
        return output_gradient_norms(standard, x, reduce_max=True)
    if scale == "grad_ratio":
        return output_gradient_norms(standard, x) / output_gradient_norms(robust, x).clamp_min(1e-12)
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


class MixingVariant(nn.Module):
    """Scores (N, C) of one ablation variant: (1 - alpha) a + alpha R b, as logits or log-probabilities."""

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float, space: str = "probs", scale: str = "one"):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.standard, self.robust = standard, robust
        self.alpha, self.space, self.scale = check_alpha(alpha), space, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = mixing_scale(self.standard, self.robust, x, self.scale).detach()
        a, b = self.standard(x), self.robust(x)
        if self.space == "logits":
            return (1.0 - self.alpha) * a + self.alpha * r * b
        mixed = (1.0 - self.alpha) * torch.softmax(a, dim=-1) + self.alpha * r * torch.softmax(b, dim=-1)
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()
