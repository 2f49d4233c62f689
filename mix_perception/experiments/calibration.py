"""Calibration of the mixture: choose alpha, and a sharpening of h, for a stated goal.

Goal: the highest clean accuracy subject to a floor on robustness, measured on a calibration split
that is disjoint from the test split:

- "attack": accuracy under adaptive PGD end-to-end through the mixture (MIX), or under the worst
  of MIX, STD and ROB per image, >= floor;
- "certified": certified accuracy at an l2 radius r (smoothed h, confidence bounds) >= floor.

Going beyond the paper, h's logits may be sharpened before mixing (mix_perception.core.transforms:
a temperature, or a MixedNUTS-style transform); `transform_grid` spans the grid searched. Sharpening
applies to the attack goal only: the certificates of the smoothed h (Theorems 4 and 5) need h's
probabilities to be E[hbar] with hbar in [0, 1], which a transform of them is not.

A candidate reaches the floor when a one-sided Clopper-Pearson lower bound on its robust accuracy,
at level 1 - floor_delta, does (k of n calibration images robust -> the floor_delta quantile of
Beta(k, n - k + 1)): the floor is meant to hold on new images, not just on the calibration images,
where the point estimate of the most accurate candidate at the floor is as likely to be above its
true value as below. The bound holds per candidate (the choice among candidates is not corrected
for); floor_delta = 0 compares the point estimate itself.

The default search is exact over the given grid: candidates are tried in order of decreasing clean
accuracy (ties: larger alpha first, then milder sharpening), and the first whose robustness reaches
the floor is the answer, so only the candidates more accurate than the answer are ever attacked.
A cheaper "bisect" search assumes robustness grows with alpha (see `calibrate_attack`).
"""

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mix_perception.core.bounds import clopper_pearson_lower
from mix_perception.core.mixing import MixedClassifier, check_alpha
from mix_perception.core.transforms import TRANSFORMS, Transform
from mix_perception.experiments.attacks import PGDConfig, adversarial_inputs
from mix_perception.experiments.batches import accuracy, log_probs, logits
from mix_perception.experiments.sweeps import mixed_predictions

GOALS = ("attack", "certified")
FLOOR_ATTACKS = ("mix", "worst")
SEARCHES = ("ordered", "bisect")


def transform_grid(kind: str, scales: Sequence[float], powers=(1.0,), offsets=(0.0,)) -> list[Transform]:
    """All transforms of a grid; "temperature" uses only the scales (and always includes s = 1, i.e. none)."""
    if kind == "temperature":
        values = sorted({1.0, *map(float, scales)})
        return [Transform("temperature", s) for s in values]
    if kind == "mixednuts":
        grid = [
            Transform("mixednuts", float(s), float(p), float(c))
            for s, p, c in itertools.product(scales, powers, offsets)
        ]
        return [Transform()] + grid
    raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {kind!r}")


# --- search ----------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One (alpha, transform) point: clean accuracy, and once it was evaluated (else None) its robust
    accuracy, the lower confidence bound on it (robust_lower) and whether that reaches the floor."""

    alpha: float
    transform: Transform
    clean_accuracy: float
    robust_accuracy: float | None = None
    robust_lower: float | None = None
    feasible: bool | None = None

    def judge(self, robust_accuracy: float, images: int, floor: float, floor_delta: float) -> bool:
        """Record robust_accuracy (a fraction of `images`), its lower bound and feasible; return feasible."""
        self.robust_accuracy = robust_accuracy
        self.robust_lower = robust_lower_bound(robust_accuracy, images, floor_delta)
        self.feasible = self.robust_lower >= floor - 1e-12
        return self.feasible

    def to_json(self) -> dict:
        data = asdict(self)
        data["transform"] = asdict(self.transform) | {"description": self.transform.describe()}
        return data


def robust_lower_bound(accuracy: float, images: int, floor_delta: float) -> float:
    """One-sided Clopper-Pearson lower bound at level 1 - floor_delta on an accuracy measured as the
    fraction `accuracy` of `images` images (k = round(accuracy * images) successes); the accuracy itself
    when floor_delta is 0. floor_delta in [0, 1)."""
    if not 0.0 <= floor_delta < 1.0:
        raise ValueError(f"floor_delta must be in [0, 1), got {floor_delta!r}")
    if floor_delta == 0.0:
        return float(accuracy)
    successes = torch.tensor([round(accuracy * images)])
    return float(clopper_pearson_lower(successes, images, floor_delta)[0])


@dataclass
class Calibration:
    """Result of a search: the chosen candidate (None when nothing reaches the floor), every candidate
    with what was measured, the floor and floor_delta, and the reference numbers of h alone on the same
    images."""

    goal: str
    floor: float
    floor_delta: float
    chosen: Candidate | None
    candidates: list
    reference: dict

    def to_json(self) -> dict:
        return {
            "goal": self.goal,
            "floor": self.floor,
            "floor_delta": self.floor_delta,
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "reference": self.reference,
            "candidates": [c.to_json() for c in self.candidates],
        }


def _order(candidates: list) -> list:
    """Decreasing clean accuracy; ties: larger alpha first (more robust), then the milder transform
    (the simplest setting among equally accurate ones; a sharper one is tried next if it falls short)."""
    return sorted(candidates, key=lambda c: (-c.clean_accuracy, -c.alpha, c.transform.strength()))


def robust_reference(
    robust: nn.Module, x, y, config: PGDConfig, batch_size=500, device="cpu", seed=0, progress=False
) -> dict:
    """h alone on (x, y): {"clean_accuracy", "pgd_accuracy"} (PGD aimed at h itself, `config`)."""
    robust = robust.to(device).eval()
    x_adv = adversarial_inputs(robust, x, y, config, batch_size, device, seed, progress, desc="PGD on h")
    clean = log_probs(robust, x, batch_size, device).argmax(-1) == y.cpu()
    attacked = log_probs(robust, x_adv, batch_size, device).argmax(-1) == y.cpu()
    return {"clean_accuracy": accuracy(clean), "pgd_accuracy": accuracy(attacked)}


def calibrate_attack(
    standard: nn.Module,
    robust: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    transforms: Sequence[Transform],
    floor: float,
    config: PGDConfig,
    floor_attack: str = "mix",
    reference: dict | None = None,
    batch_size: int = 500,
    device="cpu",
    seed: int = 0,
    progress=False,
    search: str = "ordered",
    floor_delta: float = 0.05,
) -> Calibration:
    """Highest clean accuracy over alphas x transforms whose robust accuracy reaches the floor (a fraction
    in [0, 1]): its lower confidence bound at level 1 - floor_delta is >= floor (see the module docstring).

    Robust accuracy: floor_attack "mix" = accuracy under PGD (`config`) end-to-end through the
    mixture of g and the transformed h; "worst" = correct on the clean input and under MIX, STD
    (PGD aimed at g) and ROB (PGD aimed at the transformed h).

    search "ordered" (exact over the grid): candidates are attacked in order of decreasing clean
    accuracy until one reaches the floor. search "bisect" (cheaper, assumes that for a fixed
    transform robust accuracy does not decrease as alpha grows): per transform, a binary search
    over alpha for the smallest alpha that reaches the floor; then the candidates assumed feasible
    (alpha at or above it) are confirmed by attack in order of decreasing clean accuracy, and the
    first confirmed one is the answer. Every reported robust accuracy was measured.
    """
    if floor_attack not in FLOOR_ATTACKS:
        raise ValueError(f"floor attack must be one of {', '.join(FLOOR_ATTACKS)}, got {floor_attack!r}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    standard, robust = standard.to(device).eval(), robust.to(device).eval()
    y = y.cpu()
    g_clean = torch.log_softmax(logits(standard, x, batch_size, device), -1)
    h_logits = logits(robust, x, batch_size, device)
    alphas = sorted({check_alpha(a) for a in alphas})
    candidates = []
    for transform in transforms:
        with torch.no_grad():
            h_clean = torch.log_softmax(transform.apply(nn.Identity())(h_logits), -1)
        for a in alphas:
            clean = mixed_predictions(g_clean, h_clean, a) == y
            candidates.append(Candidate(a, transform, accuracy(clean)))

    args = dict(batch_size=batch_size, device=device, progress=progress)
    cache = {"std": None, "rob": {}}

    def measure(candidate: Candidate) -> bool:
        if candidate.feasible is None:
            accuracy = _robust_accuracy(standard, robust, candidate, x, y, config, floor_attack, cache, seed, args)
            candidate.judge(accuracy, len(y), floor, floor_delta)
        return candidate.feasible

    allowed = candidates
    if search == "bisect":
        allowed = []
        for transform in transforms:
            row = [c for c in candidates if c.transform == transform]  # sorted by alpha
            low, high = 0, len(row)  # invariant: row[high:] assumed feasible, row[:low] infeasible
            while low < high:
                middle = (low + high) // 2
                if measure(row[middle]):
                    high = middle
                else:
                    low = middle + 1
            allowed += row[high:]
    chosen = next((c for c in _order(allowed) if measure(c)), None)
    return Calibration("attack", float(floor), floor_delta, chosen, candidates, dict(reference or {}))


def _robust_accuracy(standard, robust, candidate, x, y, config, floor_attack, cache, seed, args) -> float:
    """MIX (or worst-of MIX/STD/ROB and clean) accuracy of one candidate; STD/ROB inputs cached."""
    h_t = candidate.transform.apply(robust)
    mixed = MixedClassifier(standard, h_t, candidate.alpha)
    desc = f"MIX alpha={candidate.alpha:g} {candidate.transform.describe()}"
    x_adv = adversarial_inputs(mixed, x, y, config, seed=seed, desc=desc, **args)
    correct = log_probs(mixed, x_adv, **args).argmax(-1) == y
    if floor_attack == "worst":
        if cache["std"] is None:
            cache["std"] = adversarial_inputs(standard, x, y, config, seed=seed, desc="STD", **args)
        if candidate.transform not in cache["rob"]:
            cache["rob"][candidate.transform] = adversarial_inputs(h_t, x, y, config, seed=seed, desc="ROB", **args)
        for x_other in (x, cache["std"], cache["rob"][candidate.transform]):
            correct &= log_probs(mixed, x_other, **args).argmax(-1) == y
    return accuracy(correct)


def calibrate_certified(
    outcome, candidates: Sequence[tuple[float, Transform]], floor: float, floor_delta: float = 0.05
) -> Calibration:
    """Highest clean accuracy over the candidates (alpha, transform) whose certified accuracy reaches the
    floor (its lower confidence bound at level 1 - floor_delta is >= floor; see the module docstring).

    outcome(alpha, transform) -> certified_curves.Outcome on the calibration images at the radius asked
    (certified_curves.smoothing_outcome for a smoothed h: transforms are the identity there;
    certified_curves.lipschitz_outcome for a Lipschitz h: a temperature). The reference, h alone, is
    the outcome at alpha 1 with the identity.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    measured = []
    for alpha, transform in candidates:
        result = outcome(check_alpha(alpha), transform)
        candidate = Candidate(float(alpha), transform, accuracy(result.clean))
        candidate.judge(accuracy(result.certified), len(result.clean), floor, floor_delta)
        measured.append(candidate)
    feasible = [c for c in _order(measured) if c.feasible]
    alone = outcome(1.0, Transform())
    reference = {"clean_accuracy": accuracy(alone.clean), "certified_accuracy": accuracy(alone.certified)}
    return Calibration("certified", float(floor), floor_delta, feasible[0] if feasible else None, measured, reference)
