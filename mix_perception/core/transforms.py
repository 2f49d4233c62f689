"""Transforms of h's logits z before mixing (beyond the paper, which mixes h's probabilities as they are):

    logit_scale:  z -> s * z                              (s, the logit scale; s > 1 sharpens)
    MixedNUTS:    z -> s * relu(LN(z) + c) ** p           (LN: layer norm over classes, no affine)

the second in the spirit of the authors' follow-up (Bai et al., "MixedNUTS: Training-Free
Accuracy-Robustness Balance via Nonlinearly Mixed Classifiers"; they clamp with GELU, here ReLU).
A sharper h keeps its prediction (argmax unchanged by a logit scale) but puts more weight on it
where h is confident, so a smaller alpha gives the same robustness and g decides more of the rest.
The mixer node multiplies h's logits by its parameter `robust_logit_scale` itself (ros/inference.py);
`mix-perception calibrate` chooses that scale with these transforms.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

TRANSFORMS = ("logit_scale", "mixednuts")


class ScaledLogits(nn.Module):
    """h's logits times its logit scale: forward(x) = logit_scale * model(x), logit_scale > 0 (N, C)."""

    def __init__(self, model: nn.Module, logit_scale: float):
        super().__init__()
        if not (logit_scale > 0 and math.isfinite(logit_scale)):
            raise ValueError(f"logit_scale must be positive and finite, got {logit_scale!r}")
        self.model = model
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.logit_scale

    def extra_repr(self) -> str:
        return f"logit_scale={self.logit_scale}"


class MixedNUTSLogits(nn.Module):
    """forward(x) = scale * relu(layer_norm(model(x)) + offset) ** power, over the class dimension (N, C).

    layer_norm: (z - mean(z)) / sqrt(var(z) + 1e-5) per row (no learned affine), which makes the
    transform invariant to the logits' shift and scale; relu(.) ** power (power >= 1) then widens the
    gap between the top logits and the rest.
    """

    def __init__(self, model: nn.Module, scale: float, power: float, offset: float):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)) or not (power >= 1 and math.isfinite(power)):
            raise ValueError(f"need scale > 0 and power >= 1, got scale={scale!r} power={power!r}")
        if not math.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset!r}")
        self.model = model
        self.scale, self.power, self.offset = float(scale), float(power), float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        z = nn.functional.layer_norm(z, z.shape[-1:])
        return self.scale * torch.relu(z + self.offset).pow(self.power)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, power={self.power}, offset={self.offset}"


@dataclass(frozen=True)
class Transform:
    """A transform of h's logits: kind "logit_scale" (z -> scale * z) or "mixednuts" (scale, power, offset)."""

    kind: str = "logit_scale"
    scale: float = 1.0
    power: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.kind == "logit_scale" and self.scale == 1.0

    def apply(self, robust: nn.Module) -> nn.Module:
        """h itself for the identity, else the wrapped module."""
        if self.identity:
            return robust
        if self.kind == "logit_scale":
            return ScaledLogits(robust, self.scale)
        if self.kind == "mixednuts":
            return MixedNUTSLogits(robust, self.scale, self.power, self.offset)
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {self.kind!r}")

    def strength(self) -> tuple:
        """Sort key: larger = sharper (used to break ties in clean accuracy)."""
        return (self.kind == "mixednuts", self.scale, self.power, self.offset)

    def describe(self) -> str:
        if self.identity:
            return "none"
        if self.kind == "logit_scale":
            return f"logit scale: logits x {self.scale:g}"
        return f"mixednuts: {self.scale:g} * relu(LN(z) + {self.offset:g}) ** {self.power:g}"
