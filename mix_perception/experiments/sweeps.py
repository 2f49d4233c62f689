"""Alpha sweeps of the mixed classifier: clean and attacked accuracy for every alpha, and of g and h alone.

Bai, Anderson, Sojoudi, "Mixing Classifiers to Alleviate the Accuracy-Robustness Trade-Off",
section 4.1: STD (PGD aimed at g, transferred to the mixture), ROB (PGD aimed at h, transferred) and
MIX (adaptive PGD end-to-end through the mixture); Figure 2, accuracy against alpha. Results are
per-image tensors on the CPU; `sweep_summary` turns them into plain floats for JSON.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mix_perception.core.mixing import MixedClassifier, check_alpha, mix_log_probs
from mix_perception.experiments.attacks import ATTACK_TARGETS, PGDConfig, adversarial_inputs
from mix_perception.experiments.autoattack import autoattack_correct
from mix_perception.experiments.batches import accuracy, log_probs


def mixed_predictions(standard_log_probs: torch.Tensor, robust_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmax of the mixture log((1 - alpha) softmax(g) + alpha softmax(h)) from both log-probabilities (N, C)."""
    return mix_log_probs(standard_log_probs, robust_log_probs, check_alpha(alpha)).argmax(dim=-1)


# --- alpha sweep -----------------------------------------------------------------------------------


class BaseResult(NamedTuple):
    """One base model alone: clean_correct (N,) bool, attacked_correct (N,) bool under PGD aimed at itself,
    probs (N, C) clean probabilities, attacked_probs (N, C) probabilities at its own adversarial inputs
    (the attacked fields are None when no attack ran)."""

    clean_correct: torch.Tensor
    attacked_correct: torch.Tensor
    probs: torch.Tensor
    attacked_probs: torch.Tensor


class Sweep(NamedTuple):
    """Per-image results of an alpha sweep.

    alphas: the alphas, in order. clean (A, N) bool: mixture correct on clean x. attacks:
    {"std" | "rob" | "mix": (A, N) bool} mixture correct on that attack's inputs (only the attacks
    asked for). worst (A, N) bool: correct on the clean input and under every attack run.
    autoattack: {index into alphas: (N,) bool} for the alphas AutoAttack ran at (empty: not run).
    standard, robust: the base models alone (BaseResult).
    """

    alphas: list
    clean: torch.Tensor
    attacks: dict
    worst: torch.Tensor
    autoattack: dict
    standard: BaseResult
    robust: BaseResult


def sweep_alphas(
    standard: nn.Module,
    robust: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    config: PGDConfig,
    attacks: Sequence[str] = ATTACK_TARGETS,
    autoattack_alphas: Sequence[float] = (),
    autoattack_options: dict | None = None,
    batch_size: int = 500,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> Sweep:
    """Clean and PGD accuracy of the mixture for every alpha, and of g and h alone.

    Cost: two PGD runs on the single models (their inputs serve STD and ROB for every alpha, and
    give g's and h's own robust accuracy and h's attacked margins), plus one PGD through the
    mixture per alpha when "mix" is asked for (the adaptive attack depends on alpha), plus
    AutoAttack on the mixture for each alpha in `autoattack_alphas`. All attacks share `seed`.
    With `attacks` empty no PGD runs at all (the base models' attacked fields are then None).
    """
    alphas = [check_alpha(a) for a in alphas]
    unknown = [a for a in attacks if a not in ATTACK_TARGETS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {', '.join(ATTACK_TARGETS)}")
    standard, robust = standard.to(device).eval(), robust.to(device).eval()
    y = y.cpu()
    args = dict(batch_size=batch_size, device=device, progress=progress)

    g_clean = log_probs(standard, x, desc="g clean", **args)
    h_clean = log_probs(robust, x, desc="h clean", **args)
    parts = {}
    if attacks:  # the single-model attacks serve STD, ROB, the base models' own numbers and the margins
        inputs = {
            "std": adversarial_inputs(standard, x, y, config, seed=seed, desc="PGD on g (STD)", **args),
            "rob": adversarial_inputs(robust, x, y, config, seed=seed, desc="PGD on h (ROB)", **args),
        }
        parts = {name: (log_probs(standard, xa, **args), log_probs(robust, xa, **args)) for name, xa in inputs.items()}

    clean = torch.stack([mixed_predictions(g_clean, h_clean, a) == y for a in alphas])
    results = {}
    for name in attacks:
        rows = []
        for a in alphas:
            if name == "mix":
                mixed = MixedClassifier(standard, robust, a)
                desc = f"PGD on mixture (MIX) alpha={a:g}"
                x_adv = adversarial_inputs(mixed, x, y, config, seed=seed, desc=desc, **args)
                g_adv, h_adv = log_probs(standard, x_adv, **args), log_probs(robust, x_adv, **args)
            else:
                g_adv, h_adv = parts[name]
            rows.append(mixed_predictions(g_adv, h_adv, a) == y)
        results[name] = torch.stack(rows)
    worst = clean.clone()
    for rows in results.values():
        worst &= rows

    auto = {}
    for index, a in enumerate(alphas):
        if any(abs(a - b) < 1e-12 for b in autoattack_alphas):
            mixed = MixedClassifier(standard, robust, a)
            auto[index] = autoattack_correct(
                mixed, x, y, config.norm, config.eps, seed=seed, **(autoattack_options or {}), **args
            )
    g_adv = parts["std"][0] if parts else None
    h_adv = parts["rob"][1] if parts else None
    standard_result = BaseResult(
        g_clean.argmax(-1) == y,
        None if g_adv is None else g_adv.argmax(-1) == y,
        g_clean.exp(),
        None if g_adv is None else g_adv.exp(),
    )
    robust_result = BaseResult(
        h_clean.argmax(-1) == y,
        None if h_adv is None else h_adv.argmax(-1) == y,
        h_clean.exp(),
        None if h_adv is None else h_adv.exp(),
    )
    return Sweep(alphas, clean, results, worst, auto, standard_result, robust_result)


def sweep_summary(sweep: Sweep) -> dict:
    """JSON-ready summary of a sweep: {"models": {...}, "per_alpha": [...], "margins": {...}} (floats only)."""
    per_alpha = []
    for index, a in enumerate(sweep.alphas):
        row = {"alpha": a, "clean_accuracy": accuracy(sweep.clean[index]), "attacks": {}}
        for name, rows in sweep.attacks.items():
            row["attacks"][name] = {"accuracy": accuracy(rows[index])}
        if sweep.attacks:
            row["attacks"]["worst"] = {"accuracy": accuracy(sweep.worst[index]), "over": ["clean", *sweep.attacks]}
        if index in sweep.autoattack:
            row["autoattack_accuracy"] = accuracy(sweep.autoattack[index])
        per_alpha.append(row)
    models = {
        name: {
            "clean_accuracy": accuracy(base.clean_correct),
            "pgd_accuracy": None if base.attacked_correct is None else accuracy(base.attacked_correct),
        }
        for name, base in (("standard", sweep.standard), ("robust", sweep.robust))
    }
    return {"models": models, "per_alpha": per_alpha}


def paper_claim(summary: dict, attack: str = "mix") -> dict:
    """Does some alpha halve h's clean error while keeping >= 80% of h's attacked accuracy (under `attack`)?

    h's clean error and attacked accuracy are h alone (PGD aimed at h). Lists every alpha that
    satisfies both, with its numbers. Uses `attack`'s accuracy per alpha (absent attack: no alpha).
    """
    robust = summary["models"]["robust"]
    error_target = (1.0 - robust["clean_accuracy"]) / 2.0
    attacked_target = 0.8 * robust["pgd_accuracy"]
    passing = []
    for row in summary["per_alpha"]:
        attacked = row["attacks"].get(attack, {}).get("accuracy")
        if attacked is None:
            continue
        if 1.0 - row["clean_accuracy"] <= error_target + 1e-12 and attacked >= attacked_target - 1e-12:
            passing.append(
                {"alpha": row["alpha"], "clean_accuracy": row["clean_accuracy"], "attacked_accuracy": attacked}
            )
    return {
        "attack": attack,
        "robust_clean_error": 1.0 - robust["clean_accuracy"],
        "required_clean_error": error_target,
        "robust_attacked_accuracy": robust["pgd_accuracy"],
        "required_attacked_accuracy": attacked_target,
        "holds": bool(passing),
        "alphas": passing,
    }
