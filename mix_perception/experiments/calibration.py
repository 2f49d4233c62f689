"""Calibration of the mixture: choose alpha, and a transform of h's logits, for a stated goal; one
function per goal (`calibrate_attack`, `calibrate_certified`).

Goal: the highest clean accuracy subject to a floor on robustness, measured on a calibration split
that is disjoint from the test split:

- "attack": accuracy under adaptive PGD end-to-end through the mixture (MIX), or under the worst
  of MIX, STD and ROB per image, >= floor;
- "certified": certified accuracy at an l2 radius r (smoothed h, confidence bounds) >= floor.

Going beyond the paper, h's logits may be sharpened before mixing (mix_perception.core.transforms:
a logit scale, or a MixedNUTS-style transform); `transform_grid` spans the grid searched. A logit
scale also applies to the certified goal with a Lipschitz h (its constant scales with it); the
certificates of the smoothed h (Theorems 4 and 5) need h's probabilities to be E[hbar] with hbar in
[0, 1], which a transform of them is not.

A candidate reaches the floor when a one-sided Clopper-Pearson lower bound on its robust accuracy,
at level 1 - floor_delta, does (k of n calibration images robust -> the floor_delta quantile of
Beta(k, n - k + 1)): the floor is meant to hold on new images, not just on the calibration images,
where the point estimate of the most accurate candidate at the floor is as likely to be above its
true value as below. The bound holds per candidate (the choice among candidates is not corrected
for); floor_delta = 0 compares the point estimate itself.

The default search is exact over the given grid: candidates are tried in order of decreasing clean
accuracy (ties: larger alpha first, then milder sharpening), and the first whose robustness reaches
the floor is the answer, so only the candidates more accurate than the answer are ever attacked.
A cheaper "bisect" search assumes robustness grows with alpha (see `calibrate_attack`). Every alpha
is in [0, 1] (validated by the caller).
"""

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mix_perception.core.bounds import clopper_pearson_lower
from mix_perception.core.mixing import MixedClassifier
from mix_perception.core.transforms import TRANSFORMS, Transform
from mix_perception.experiments.attacks import PGDConfig, adversarial_inputs
from mix_perception.experiments.batches import DEFAULT_RUN, RunSettings, accuracy, log_probs, logits
from mix_perception.experiments.sweeps import mixed_predictions

GOALS = ("attack", "certified")
FLOOR_ATTACKS = ("mix", "worst")
SEARCHES = ("ordered", "bisect")


def transform_grid(kind: str, scales: Sequence[float], powers=(1.0,), offsets=(0.0,)) -> list[Transform]:
    """All transforms of a grid: "logit_scale", h's logits x each of `scales` (1, i.e. none, always
    included); "mixednuts", every (scale, power, offset) and none."""
    if kind == "logit_scale":
        values = sorted({1.0, *map(float, scales)})
        return [Transform("logit_scale", s) for s in values]
    if kind == "mixednuts":
        grid = [
            Transform("mixednuts", float(s), float(p), float(c))
            for s, p, c in itertools.product(scales, powers, offsets)
        ]
        return [Transform()] + grid
    raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {kind!r}")


# --- search ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """The robustness floor `value` in [0, 1] a candidate must reach, and `delta` in [0, 1): it is reached
    when the one-sided Clopper-Pearson lower bound at level 1 - delta on the robust accuracy is >= value
    (delta 0: the measured accuracy itself)."""

    value: float
    delta: float = 0.05

    def __post_init__(self):
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.value!r}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"floor_delta must be in [0, 1), got {self.delta!r}")


@dataclass(frozen=True)
class AttackGoal:
    """How goal "attack" measures robustness: PGD `config`; floor_attack "mix" (accuracy under PGD
    end-to-end through the mixture) or "worst" (also clean, STD and ROB); search "ordered" | "bisect"."""

    config: PGDConfig
    floor_attack: str = "mix"
    search: str = "ordered"

    def __post_init__(self):
        if self.floor_attack not in FLOOR_ATTACKS:
            raise ValueError(f"floor attack must be one of {', '.join(FLOOR_ATTACKS)}, got {self.floor_attack!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")


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

    def judge(self, robust_accuracy: float, images: int, floor: Floor) -> bool:
        """Record robust_accuracy (a fraction of `images`), its lower bound and feasible; return feasible."""
        self.robust_accuracy = robust_accuracy
        self.robust_lower = robust_lower_bound(robust_accuracy, images, floor.delta)
        self.feasible = self.robust_lower >= floor.value - 1e-12
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
    with what was measured, the floor, and the reference numbers of h alone on the same images."""

    goal: str
    floor: Floor
    chosen: Candidate | None
    candidates: list
    reference: dict

    def to_json(self) -> dict:
        return {
            "goal": self.goal,
            "floor": float(self.floor.value),
            "floor_delta": self.floor.delta,
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "reference": self.reference,
            "candidates": [c.to_json() for c in self.candidates],
        }


def _order(candidates: list) -> list:
    """Decreasing clean accuracy; ties: larger alpha first (more robust), then the milder transform
    (the simplest setting among equally accurate ones; a sharper one is tried next if it falls short)."""
    return sorted(candidates, key=lambda c: (-c.clean_accuracy, -c.alpha, c.transform.strength()))


def robust_reference(robust: nn.Module, data, config: PGDConfig, run: RunSettings = DEFAULT_RUN) -> dict:
    """h alone on data.x, data.y: {"clean_accuracy", "pgd_accuracy"} (PGD aimed at h itself, `config`)."""
    robust = robust.to(run.device).eval()
    x, y = data.x, data.y.cpu()
    x_adv = adversarial_inputs(robust, x, y, config, run, desc="PGD on h")
    clean = log_probs(robust, x, run).argmax(-1) == y
    attacked = log_probs(robust, x_adv, run).argmax(-1) == y
    return {"clean_accuracy": accuracy(clean), "pgd_accuracy": accuracy(attacked)}


def calibrate_attack(
    standard: nn.Module,
    robust: nn.Module,
    data,
    candidates: Sequence[tuple[float, Transform]],
    floor: Floor,
    goal: AttackGoal,
    run: RunSettings = DEFAULT_RUN,
    reference: dict | None = None,
) -> Calibration:
    """Highest clean accuracy on data.x, data.y over the candidates (alpha, transform) whose robust
    accuracy reaches the floor (see `Floor` and the module docstring); `reference`: h alone's numbers.

    Robust accuracy (goal.floor_attack): "mix" = accuracy under PGD (goal.config) end-to-end through the
    mixture of g and the transformed h; "worst" = correct on the clean input and under MIX, STD (PGD
    aimed at g) and ROB (PGD aimed at the transformed h).

    goal.search "ordered" (exact over the grid): candidates are attacked in order of decreasing clean
    accuracy until one reaches the floor. "bisect" (cheaper, assumes that for a fixed transform robust
    accuracy does not decrease as alpha grows): per transform, a binary search over alpha for the
    smallest alpha that reaches the floor; then the candidates assumed feasible (alpha at or above it)
    are confirmed by attack in order of decreasing clean accuracy, and the first confirmed one is the
    answer. Every reported robust accuracy was measured.
    """
    standard, robust = standard.to(run.device).eval(), robust.to(run.device).eval()
    measured = _clean_candidates(standard, robust, data, candidates, run)
    cache = {"std": None, "rob": {}}

    def measure(candidate: Candidate) -> bool:
        if candidate.feasible is None:
            robust_accuracy = _robust_accuracy(standard, robust, candidate, data, goal, cache, run)
            candidate.judge(robust_accuracy, len(data.y), floor)
        return candidate.feasible

    allowed = measured if goal.search == "ordered" else _bisected(measured, measure)
    chosen = next((c for c in _order(allowed) if measure(c)), None)
    return Calibration("attack", floor, chosen, measured, dict(reference or {}))


def _clean_candidates(standard, robust, data, candidates, run: RunSettings) -> list[Candidate]:
    """A Candidate with its clean accuracy for each (alpha, transform): one forward of g and of h in all."""
    y = data.y.cpu()
    g_clean = torch.log_softmax(logits(standard, data.x, run), -1)
    h_logits = logits(robust, data.x, run)
    h_clean = {}
    measured = []
    for alpha, transform in candidates:
        if transform not in h_clean:
            with torch.no_grad():
                h_clean[transform] = torch.log_softmax(transform.apply(nn.Identity())(h_logits), -1)
        clean = mixed_predictions(g_clean, h_clean[transform], alpha) == y
        measured.append(Candidate(float(alpha), transform, accuracy(clean)))
    return measured


def _bisected(candidates: list, measure) -> list:
    """The candidates assumed feasible: per transform, those at or above the smallest alpha that a binary
    search over alpha (`measure`: attacks one candidate, returns whether it reaches the floor) finds."""
    allowed = []
    for transform in dict.fromkeys(c.transform for c in candidates):
        row = sorted((c for c in candidates if c.transform == transform), key=lambda c: c.alpha)
        low, high = 0, len(row)  # invariant: row[high:] assumed feasible, row[:low] infeasible
        while low < high:
            middle = (low + high) // 2
            if measure(row[middle]):
                high = middle
            else:
                low = middle + 1
        allowed += row[high:]
    return allowed


def _robust_accuracy(standard, robust, candidate, data, goal: AttackGoal, cache: dict, run: RunSettings) -> float:
    """MIX (or worst-of MIX/STD/ROB and clean) accuracy of one candidate; STD/ROB inputs cached."""
    x, y, config = data.x, data.y.cpu(), goal.config
    h_t = candidate.transform.apply(robust)
    mixed = MixedClassifier(standard, h_t, candidate.alpha)
    desc = f"MIX alpha={candidate.alpha:g} {candidate.transform.describe()}"
    x_adv = adversarial_inputs(mixed, x, y, config, run, desc=desc)
    correct = log_probs(mixed, x_adv, run).argmax(-1) == y
    if goal.floor_attack == "worst":
        if cache["std"] is None:
            cache["std"] = adversarial_inputs(standard, x, y, config, run, desc="STD")
        if candidate.transform not in cache["rob"]:
            cache["rob"][candidate.transform] = adversarial_inputs(h_t, x, y, config, run, desc="ROB")
        for x_other in (x, cache["std"], cache["rob"][candidate.transform]):
            correct &= log_probs(mixed, x_other, run).argmax(-1) == y
    return accuracy(correct)


def calibrate_certified(outcome, candidates: Sequence[tuple[float, Transform]], floor: Floor) -> Calibration:
    """Highest clean accuracy over the candidates (alpha, transform) whose certified accuracy reaches the
    floor (see `Floor` and the module docstring).

    outcome(alpha, transform) -> certified_curves.Outcome on the calibration images at the radius asked
    (certified_curves.smoothing_outcome for a smoothed h: transforms are the identity there;
    certified_curves.lipschitz_outcome for a Lipschitz h: a logit scale). The reference, h alone, is
    the outcome at alpha 1 with the identity.
    """
    measured = []
    for alpha, transform in candidates:
        result = outcome(float(alpha), transform)
        candidate = Candidate(float(alpha), transform, accuracy(result.clean))
        candidate.judge(accuracy(result.certified), len(result.clean), floor)
        measured.append(candidate)
    feasible = [c for c in _order(measured) if c.feasible]
    alone = outcome(1.0, Transform())
    reference = {"clean_accuracy": accuracy(alone.clean), "certified_accuracy": accuracy(alone.certified)}
    return Calibration("certified", floor, feasible[0] if feasible else None, measured, reference)
