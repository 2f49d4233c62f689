"""core.fingerprint names a pipeline by what decides its outputs, and by nothing else."""

import copy

import torch

from mix_perception.core.architectures import build
from mix_perception.core.fingerprint import PipelineFingerprint


def models():
    torch.manual_seed(0)
    return build("fmnist_cnn").eval(), build("lipschitz_cnn").eval()


def name(standard, robust, key="lipschitz 12.0", shape=(1, 28, 28), alpha=0.65):
    return PipelineFingerprint(standard, robust, shape, key).for_alpha(alpha)


def test_the_same_pipeline_gets_the_same_name_whatever_the_memory_format():
    g, h = models()
    assert name(g, h) == name(copy.deepcopy(g).to(memory_format=torch.channels_last), copy.deepcopy(h))
    assert len(name(g, h)) == 16 and int(name(g, h), 16) >= 0


def test_buffers_of_any_strides_are_named():
    """A buffer may carry any stride on its size-1 dimensions (a transposed row: contiguous, stride 3 on the last)."""
    g, h = models()
    odd = torch.arange(3.0).view(1, 3).t()  # (3, 1), strides (1, 3)
    g.register_buffer("std", odd)
    assert name(g, h) == name(g, h)


def test_alpha_weights_logit_scale_and_input_change_the_name():
    g, h = models()
    changed = copy.deepcopy(h)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-6
    names = {
        name(g, h),
        name(g, h, alpha=0.66),
        name(g, changed),
        name(h, g),
        name(g, h, key="lipschitz 11.0"),
        name(g, h, shape=(1, 32, 32)),
    }
    assert len(names) == 6
