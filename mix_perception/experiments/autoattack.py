"""AutoAttack on a classifier (Croce & Hein, ICML 2020), through the `pyautoattack` package.

pyautoattack 0.2.0 has no dependencies of its own, so it leaves torch as it is. It is an optional
requirement: `autoattack_correct` raises ImportError with the install command when it is missing.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mix_perception.experiments.batches import DEFAULT_RUN, RunSettings, log_probs


@dataclass(frozen=True)
class AutoAttackPlan:
    """Where AutoAttack runs in an alpha sweep (`alphas`; none: not run) and how: `version` "standard",
    "plus" or "custom" (then only `attacks`)."""

    alphas: Sequence[float] = ()
    version: str = "standard"
    attacks: Sequence[str] | None = None


NO_AUTOATTACK = AutoAttackPlan()


def autoattack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    run: RunSettings = DEFAULT_RUN,
) -> torch.Tensor:
    """Per-image correctness (N,) bool of `model` under AutoAttack (Croce & Hein, ICML 2020).

    version "standard": APGD-CE, APGD-T (DLR, 9 targets), FAB-T, Square (5000 queries), each 100
    iterations, 1 restart; "custom" runs only `attacks` (e.g. ["apgd-ce", "apgd-t"]) with those same
    settings; "plus": AutoAttack+ (more restarts, untargeted versions too). An image counts as correct
    only if the model classifies it correctly clean and under every attack, and every returned point
    is checked to lie in the eps-ball and in [0, 1]. ImportError when pyautoattack is not installed.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise ImportError(f"AutoAttack needs the pyautoattack package (pip install pyautoattack): {error}") from None
    aa_norm = {"linf": "Linf", "l2": "L2"}[norm]
    device = torch.device(run.device)
    if version == "custom":
        if not attacks:
            raise ValueError("AutoAttack version 'custom' needs a list of attacks")
        adversary = AutoAttack(
            model, attacks=list(attacks), device=device, eps=eps, norm=aa_norm, seed=run.seed, version="custom"
        )
        _standard_settings(adversary, model, x[:1].to(device))
    else:
        adversary = AutoAttack(model, device=device, eps=eps, norm=aa_norm, seed=run.seed, version=version)
    x_adv = _run(adversary, x.to(device), y.to(device), run)
    _check_inside(x_adv, x, norm, eps)
    clean_ok = log_probs(model, x, run).argmax(-1) == y.cpu()
    adv_ok = log_probs(model, x_adv, run).argmax(-1) == y.cpu()
    return clean_ok & adv_ok


def _standard_settings(adversary, model: nn.Module, example: torch.Tensor) -> None:
    """The settings of the standard version for the attacks "custom" shares with it (pyautoattack's
    "custom" would otherwise run APGD with 5 restarts); at most C - 1 target classes."""
    with torch.no_grad():
        targets = min(9, int(model(example).shape[-1]) - 1)
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_restarts = 1
    adversary.fab.n_target_classes = targets
    adversary.square.n_queries = 5000


def _run(adversary, x: torch.Tensor, y: torch.Tensor, run: RunSettings) -> torch.Tensor:
    """The adversarial points (N, ...) on the CPU; progress on stderr (pyautoattack's DEBUG log) when asked."""
    adversary.verbose = run.progress
    logger, handler = logging.getLogger("auto-attack"), None
    if run.progress:
        handler = logging.StreamHandler(sys.stderr)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=run.batch_size)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
    return x_adv.detach().cpu()


def _check_inside(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    """RuntimeError unless every point of x_adv lies in the eps-ball around x and in [0, 1]."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    inside = (
        (size <= eps * (1 + 1e-5) + 1e-6)
        & (x_adv.flatten(1).min(1).values >= 0)
        & (x_adv.flatten(1).max(1).values <= 1)
    )
    if not bool(inside.all()):
        raise RuntimeError("AutoAttack returned points outside the eps-ball or [0, 1]")
