"""Outputs of `mix-perception calibrate` for the mixer node: its parameter file, and a TorchScript file
of a model the node cannot rebuild from its parameters alone."""

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mix_perception.core.smoothing import SmoothingSettings


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Trace `model` on `example` (1, C, H, W) and save it as TorchScript at `path`, which
    mix_perception.core.models.load_model (and so the mixer node) loads. Checks the saved file
    reproduces the model's logits on the example. Returns the path."""
    model = copy.deepcopy(model).cpu().eval()
    example = example.cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still supported
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        expected, got = model(example), loaded(example)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{path}: the traced model does not reproduce the model's output")
    return path


def node_parameters(
    alpha: float,
    standard_model: str,
    robust_model: str,
    certification: str = "none",
    standard_arch: str = "",
    robust_arch: str = "",
    smoothing: SmoothingSettings | None = None,
    extra: dict | None = None,
) -> dict:
    """The mixer node's parameter file content: {"/**/mixer": {"ros__parameters": {...}}} (the key matches
    a mixer in any namespace).

    Keys are the node's parameter names (mix_perception/ros/parameters.py, config/mixer.yaml):
    alpha, standard_model, standard_arch, robust_model, robust_arch, certification and, when
    certifying, smoothing.{sequential: false, sigma, samples, select_samples, delta, mode} (nested as in
    the YAML) from `smoothing`'s sigma, n_estimate, n_select, delta and mode: the fixed-n certificates
    that calibrate measured.
    `extra` adds keys as they are (e.g. robust_logit_scale). alpha in [0, 1] (validated by the caller).
    """
    params = {
        "alpha": float(alpha),
        "standard_model": str(standard_model),
        "standard_arch": str(standard_arch),
        "robust_model": str(robust_model),
        "robust_arch": str(robust_arch),
        "certification": str(certification),
    }
    if smoothing is not None:
        params["smoothing"] = {
            "sequential": False,  # the fixed-n certificates that were calibrated
            "sigma": smoothing.sigma,
            "samples": smoothing.n_estimate,
            "select_samples": smoothing.n_select,
            "delta": smoothing.delta,
            "mode": smoothing.mode,
        }
    params.update(extra or {})
    return {"/**/mixer": {"ros__parameters": params}}


def monitor_parameters(required_radius: float, acceptance: dict, ood_level: float, shift: dict) -> dict:
    """The safety monitor's section: {"/**/safety_monitor": {"ros__parameters": {...}}} with required_radius,
    acceptance.{score, threshold, epsilon, delta, calibration_size, coverage}, ood.level and
    shift.{alarms_per_hour, rate_hz, lam} (nested as in the YAML; `acceptance` and `shift` hold those keys)."""
    params = {
        "required_radius": float(required_radius),
        "acceptance": dict(acceptance),
        "ood": {"level": float(ood_level)},
        "shift": dict(shift),
    }
    return {"/**/safety_monitor": {"ros__parameters": params}}


def write_parameter_file(path: Path, parameters: dict, comment_lines: Sequence[str] = ()) -> Path:
    """Write a ROS 2 parameter YAML with a '#' comment header; returns the path."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment_lines)
    path.write_text(header + yaml.safe_dump(parameters, sort_keys=False, default_flow_style=False))
    return path
