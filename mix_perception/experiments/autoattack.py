"""AutoAttack on a classifier (Croce & Hein, ICML 2020), through the `pyautoattack` package.

pyautoattack 0.2.0 has no dependencies of its own, so it leaves torch as it is. It is an optional
requirement: `autoattack_correct` raises ImportError with the install command when it is missing.
"""

import logging
import sys
from collections.abc import Sequence

import torch
from torch import nn

from mix_perception.experiments.batches import log_probs


def autoattack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    batch_size: int = 500,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> torch.Tensor:
    """Per-image correctness (N,) bool of `model` under AutoAttack (Croce & Hein, ICML 2020).

    Uses the `pyautoattack` package (0.2.0: no dependencies of its own, so it leaves torch as it is).
    version "standard": APGD-CE, APGD-T (DLR, 9 targets), FAB-T, Square (5000 queries), each 100
    iterations, 1 restart; "custom" runs only `attacks` (e.g. ["apgd-ce", "apgd-t"]) with those same
    settings; "plus": AutoAttack+ (more restarts, untargeted versions too). An image counts as correct only if the model
    classifies it correctly clean and under every attack. Raises ImportError when pyautoattack is
    not installed.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise ImportError(f"AutoAttack needs the pyautoattack package (pip install pyautoattack): {error}") from None
    aa_norm = {"linf": "Linf", "l2": "L2"}[norm]
    if version == "custom":
        if not attacks:
            raise ValueError("AutoAttack version 'custom' needs a list of attacks")
        adversary = AutoAttack(
            model,
            attacks=list(attacks),
            device=torch.device(device),
            eps=eps,
            norm=aa_norm,
            seed=seed,
            version="custom",
        )
        # The settings of the standard version for the attacks it shares (pyautoattack's "custom"
        # would otherwise run APGD with 5 restarts); at most C - 1 target classes.
        with torch.no_grad():
            targets = min(9, int(model(x[:1].to(device)).shape[-1]) - 1)
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_restarts = 1
        adversary.fab.n_target_classes = targets
        adversary.square.n_queries = 5000
    else:
        adversary = AutoAttack(model, device=torch.device(device), eps=eps, norm=aa_norm, seed=seed, version=version)
    adversary.verbose = progress
    logger, handler = logging.getLogger("auto-attack"), None
    if progress:  # pyautoattack reports its progress on this logger at DEBUG level
        handler = logging.StreamHandler(sys.stderr)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        x_adv, _ = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
    # Re-check the returned points ourselves: correct only if inside the ball and still classified right.
    x_adv = x_adv.detach().cpu()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    inside = (
        (size <= eps * (1 + 1e-5) + 1e-6)
        & (x_adv.flatten(1).min(1).values >= 0)
        & (x_adv.flatten(1).max(1).values <= 1)
    )
    if not bool(inside.all()):
        raise RuntimeError("AutoAttack returned points outside the eps-ball or [0, 1]")
    clean_ok = log_probs(model, x, batch_size, device).argmax(-1) == y.cpu()
    adv_ok = log_probs(model, x_adv, batch_size, device).argmax(-1) == y.cpu()
    return clean_ok & adv_ok
