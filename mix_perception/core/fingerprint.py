"""A short name for a mixed classifier's exact computation, so that a safety verdict calibrated on one
pipeline is not applied to the frames of another.

The acceptance threshold of the safety monitor (Learn-then-Test, core.risk_control) holds for frames
classified by the very pipeline it was calibrated on: other weights, another h's logit scale, another
certification or another alpha (`ros2 param set /mixer alpha ...`) make other mistakes, and the bound
on P(wrong | accepted) says nothing about them. `mix-perception calibrate --goal risk` writes the
fingerprint of the pipeline it calibrated; the mixer publishes its own with every frame; the monitor
applies the guarantee only where the two match.

The fingerprint is the first 16 hex digits of SHA-256 over: g's and h's parameters and buffers (name,
dtype, shape and the values' bytes in logical order, so the memory format does not matter), the input
shape (C, H, W), the certification's key (method and logit scale; for smoothing also its settings)
and alpha (its float64 bytes).
"""

import hashlib

import numpy as np
import torch
from torch import nn


def _update_with_module(digest, module: nn.Module) -> None:
    for name, tensor in module.state_dict().items():
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{values.dtype}|{tuple(values.shape)}|".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes() if values.numel() else b"")


class PipelineFingerprint:
    """The models' part is hashed once (milliseconds for a few MB of weights); `for_alpha` adds alpha."""

    def __init__(self, standard: nn.Module, robust: nn.Module, input_shape, certification_key: str):
        digest = hashlib.sha256()
        for role, module in (("standard", standard), ("robust", robust)):
            digest.update(role.encode())
            _update_with_module(digest, module)
        digest.update(f"input {tuple(int(d) for d in input_shape)}|certification {certification_key}".encode())
        self._models = digest.digest()

    def for_alpha(self, alpha: float) -> str:
        """16 hex digits naming the pipeline at mixing weight `alpha`."""
        return hashlib.sha256(self._models + np.float64(alpha).tobytes()).hexdigest()[:16]
