"""Transforms of h's logits before mixing (mix_perception.core.transforms)."""

import pytest
import torch
from torch import nn

from mix_perception.core.transforms import MixedNUTSLogits, ScaledLogits, Transform


def test_sharpening_modules(constant_logits):
    base = constant_logits([0.0, 1.0, -1.0])
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(ScaledLogits(base, 3.0)(x), 3.0 * base(x))
    nuts = MixedNUTSLogits(base, 2.0, 2.0, 0.5)
    z = nn.functional.layer_norm(base(x), (3,))
    assert torch.allclose(nuts(x), 2.0 * torch.relu(z + 0.5) ** 2)
    assert Transform().apply(base) is base
    with pytest.raises(ValueError):
        ScaledLogits(base, 0.0)
