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

from mix_perception.core.mixing import MixedClassifier, mix_log_probs
from mix_perception.experiments.attacks import ATTACK_TARGETS, PGDConfig, adversarial_inputs
from mix_perception.experiments.autoattack import NO_AUTOATTACK, AutoAttackPlan, autoattack_correct
from mix_perception.experiments.batches import DEFAULT_RUN, RunSettings, accuracy, log_probs


def mixed_predictions(standard_log_probs: torch.Tensor, robust_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmax of the mixture log((1 - alpha) softmax(g) + alpha softmax(h)) from both log-probabilities (N, C);
    alpha in [0, 1]."""
    return mix_log_probs(standard_log_probs, robust_log_probs, alpha).argmax(dim=-1)


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
    data,
    alphas: Sequence[float],
    config: PGDConfig,
    attacks: Sequence[str] = ATTACK_TARGETS,
    autoattack: AutoAttackPlan = NO_AUTOATTACK,
    run: RunSettings = DEFAULT_RUN,
) -> Sweep:
    """Clean and PGD accuracy of the mixture for every alpha (each in [0, 1]), and of g and h alone,
    on data.x (N, C, H, W), data.y (N,).

    Cost: two PGD runs on the single models (their inputs serve STD and ROB for every alpha, and
    give g's and h's own robust accuracy and h's attacked margins), plus one PGD through the
    mixture per alpha when "mix" is asked for (the adaptive attack depends on alpha), plus
    AutoAttack on the mixture for each alpha of `autoattack`. All attacks share run.seed.
    With `attacks` empty no PGD runs at all (the base models' attacked fields are then None).
    """
    unknown = [a for a in attacks if a not in ATTACK_TARGETS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {', '.join(ATTACK_TARGETS)}")
    alphas = [float(a) for a in alphas]
    standard, robust = standard.to(run.device).eval(), robust.to(run.device).eval()
    x, y = data.x, data.y.cpu()
    g_clean = log_probs(standard, x, run, desc="g clean")
    h_clean = log_probs(robust, x, run, desc="h clean")
    parts = _transfer_log_probs(standard, robust, x, y, config, run) if attacks else {}
    clean = torch.stack([mixed_predictions(g_clean, h_clean, a) == y for a in alphas])
    results = {}
    for name in attacks:
        rows = []
        for a in alphas:
            if name == "mix":
                mixed = MixedClassifier(standard, robust, a)
                x_adv = adversarial_inputs(mixed, x, y, config, run, desc=f"PGD on mixture (MIX) alpha={a:g}")
                g_adv, h_adv = log_probs(standard, x_adv, run), log_probs(robust, x_adv, run)
            else:
                g_adv, h_adv = parts[name]
            rows.append(mixed_predictions(g_adv, h_adv, a) == y)
        results[name] = torch.stack(rows)
    worst = torch.stack([clean, *results.values()]).all(dim=0)  # clean and under every attack run
    auto = {
        index: autoattack_correct(
            MixedClassifier(standard, robust, a),
            x,
            y,
            config.norm,
            config.eps,
            autoattack.version,
            autoattack.attacks,
            run,
        )
        for index, a in enumerate(alphas)
        if any(abs(a - b) < 1e-12 for b in autoattack.alphas)
    }
    standard_result = _base_result(g_clean, parts["std"][0] if parts else None, y)
    robust_result = _base_result(h_clean, parts["rob"][1] if parts else None, y)
    return Sweep(alphas, clean, results, worst, auto, standard_result, robust_result)


def _transfer_log_probs(standard, robust, x, y, config: PGDConfig, run: RunSettings) -> dict:
    """{"std" | "rob": (log-probabilities of g, of h) at PGD inputs aimed at g | at h}: they serve STD,
    ROB, the base models' own numbers and the margins."""
    inputs = {
        "std": adversarial_inputs(standard, x, y, config, run, desc="PGD on g (STD)"),
        "rob": adversarial_inputs(robust, x, y, config, run, desc="PGD on h (ROB)"),
    }
    return {name: (log_probs(standard, xa, run), log_probs(robust, xa, run)) for name, xa in inputs.items()}


def _base_result(clean_log_probs: torch.Tensor, attacked_log_probs: torch.Tensor | None, y: torch.Tensor):
    """BaseResult of one model from its log-probabilities (N, C) on clean and on its own attacked inputs."""
    if attacked_log_probs is None:
        return BaseResult(clean_log_probs.argmax(-1) == y, None, clean_log_probs.exp(), None)
    attacked_correct = attacked_log_probs.argmax(-1) == y
    return BaseResult(
        clean_log_probs.argmax(-1) == y, attacked_correct, clean_log_probs.exp(), attacked_log_probs.exp()
    )


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
