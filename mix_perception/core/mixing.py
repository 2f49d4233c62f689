"""The mixed classifier of Bai, Anderson, Sojoudi (L4DC), "Mixing Classifiers to Alleviate the
Accuracy-Robustness Trade-Off":

    logits_mix(x) = log( (1 - alpha) * softmax(g(x)) + alpha * softmax(h(x)) ),   alpha in [0, 1]

g is an accurate standard classifier, h a robust one; both return logits of shape (N, C).
"""

import math
import numbers

import torch
from torch import nn


def check_alpha(alpha) -> float:
    """Return alpha as a float; TypeError unless it is a real number, ValueError unless in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return alpha


def mix_log_probs(standard_log_probs: torch.Tensor, robust_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """log((1 - alpha) exp(a) + alpha exp(b)) elementwise, for log-probabilities a, b of shape (N, C).

    Computed as logaddexp(log(1 - alpha) + a, log(alpha) + b); at alpha = 0 or 1 the result is
    exactly a or b (no log(0) term enters, so no NaN and no gradient through the unused side).
    """
    if alpha == 0.0:
        return standard_log_probs
    if alpha == 1.0:
        return robust_log_probs
    return torch.logaddexp(standard_log_probs + math.log1p(-alpha), robust_log_probs + math.log(alpha))


def mix_logits(standard_logits: torch.Tensor, robust_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mixed logits (N, C) from the logits (N, C) of g and h: log((1-alpha) softmax(g) + alpha softmax(h)).

    Finite for finite logits of any magnitude (log_softmax and logsumexp never exponentiate a
    large positive number); exact at alpha 0 and 1.
    """
    alpha = check_alpha(alpha)
    return mix_log_probs(torch.log_softmax(standard_logits, dim=-1), torch.log_softmax(robust_logits, dim=-1), alpha)


class MixedClassifier(nn.Module):
    """Drop-in classifier returning mixed logits (N, C) for inputs x accepted by both g and h.

    `alpha` may be changed between calls (`model.alpha = 0.7`); it is validated to lie in [0, 1].
    """

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.standard = standard
        self.robust = robust
        self.alpha = alpha

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        self._alpha = check_alpha(value)

    def base_log_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log softmax of g(x) and of h(x), each (N, C): one forward of each model."""
        return torch.log_softmax(self.standard(x), dim=-1), torch.log_softmax(self.robust(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix_log_probs(*self.base_log_probs(x), self._alpha)

    def extra_repr(self) -> str:
        return f"alpha={self._alpha}"
