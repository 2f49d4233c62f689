"""Calibration of the mixture: choose alpha, and a sharpening of h, for a stated goal.

Goal: the highest clean accuracy subject to a floor on robustness, measured on a calibration split
that is disjoint from the test split:

- "attack": accuracy under adaptive PGD end-to-end through the mixture (MIX), or under the worst
  of MIX, STD and ROB per image, >= floor;
- "certified": certified accuracy at an l2 radius r (smoothed h, confidence bounds) >= floor.

Going beyond the paper (Bai, Anderson, Sojoudi use h's probabilities as they are), h's logits z may
be sharpened before mixing:

    temperature:  z -> s * z                              (s = 1 / T, s > 1 sharpens)
    MixedNUTS:    z -> s * relu(LN(z) + c) ** p           (LN: layer norm over classes, no affine)

the second in the spirit of the authors' follow-up (Bai et al., "MixedNUTS: Training-Free
Accuracy-Robustness Balance via Nonlinearly Mixed Classifiers"; they clamp with GELU, here ReLU).
A sharper h keeps its prediction (argmax unchanged by the temperature) but puts more weight on it
where h is confident, so a smaller alpha gives the same robustness and g decides more of the rest.
Sharpening applies to the attack goal only: the certificates of the smoothed h (Theorems 4 and 5)
need h's probabilities to be E[hbar] with hbar in [0, 1], which a transform of them is not.

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

import copy
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mix_perception.core import evaluation
from mix_perception.core.bounds import clopper_pearson_lower
from mix_perception.core.mixing import MixedClassifier, check_alpha

GOALS = ("attack", "certified")
FLOOR_ATTACKS = ("mix", "worst")
SEARCHES = ("ordered", "bisect")
TRANSFORMS = ("temperature", "mixednuts")


# --- transforms of h ----------------------------------------------------------------------------------


class ScaledLogits(nn.Module):
    """h sharpened by a temperature: forward(x) = scale * model(x), scale = 1 / T > 0 (logits (N, C))."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive and finite, got {scale!r}")
        self.model = model
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class MixedNUTSLogits(nn.Module):
    """forward(x) = scale * relu(layer_norm(model(x)) + offset) ** power, over the class dimension (N, C).

    layer_norm: (z - mean(z)) / sqrt(var(z) + 1e-5) per row (no learned affine), which makes the
    transform invariant to the logits' shift and scale; relu(.) ** power (power >= 1) then widens the
    gap between the top logits and the rest.
    """

    def __init__(self, model: nn.Module, scale: float, power: float, offset: float):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)) or not (power >= 1 and math.isfinite(power)):
            raise ValueError(f"need scale > 0 and power >= 1, got scale={scale!r} power={power!r}")
        if not math.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset!r}")
        self.model = model
        self.scale, self.power, self.offset = float(scale), float(power), float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        z = nn.functional.layer_norm(z, z.shape[-1:])
        return self.scale * torch.relu(z + self.offset).pow(self.power)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, power={self.power}, offset={self.offset}"


@dataclass(frozen=True)
class Transform:
    """A transform of h's logits: kind "temperature" (scale s) or "mixednuts" (scale, power, offset)."""

    kind: str = "temperature"
    scale: float = 1.0
    power: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.kind == "temperature" and self.scale == 1.0

    def apply(self, robust: nn.Module) -> nn.Module:
        """h itself for the identity, else the wrapped module."""
        if self.identity:
            return robust
        if self.kind == "temperature":
            return ScaledLogits(robust, self.scale)
        if self.kind == "mixednuts":
            return MixedNUTSLogits(robust, self.scale, self.power, self.offset)
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {self.kind!r}")

    def strength(self) -> tuple:
        """Sort key: larger = sharper (used to break ties in clean accuracy)."""
        return (self.kind == "mixednuts", self.scale, self.power, self.offset)

    def describe(self) -> str:
        if self.identity:
            return "none"
        if self.kind == "temperature":
            return f"temperature: logits x {self.scale:g} (T = {1.0 / self.scale:g})"
        return f"mixednuts: {self.scale:g} * relu(LN(z) + {self.offset:g}) ** {self.power:g}"


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


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([model(x[p].to(device)).float().cpu() for p in evaluation._slices(len(x), batch_size)])


def robust_reference(
    robust: nn.Module, x, y, config: evaluation.PGDConfig, batch_size=500, device="cpu", seed=0, progress=False
) -> dict:
    """h alone on (x, y): {"clean_accuracy", "pgd_accuracy"} (PGD aimed at h itself, `config`)."""
    robust = robust.to(device).eval()
    x_adv = evaluation.attack(robust, x, y, config, batch_size, device, seed, progress, desc="PGD on h")
    clean = evaluation.log_probs(robust, x, batch_size, device).argmax(-1) == y.cpu()
    attacked = evaluation.log_probs(robust, x_adv, batch_size, device).argmax(-1) == y.cpu()
    return {"clean_accuracy": evaluation.accuracy(clean), "pgd_accuracy": evaluation.accuracy(attacked)}


def calibrate_attack(
    standard: nn.Module,
    robust: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    transforms: Sequence[Transform],
    floor: float,
    config: evaluation.PGDConfig,
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
    g_clean = torch.log_softmax(_logits(standard, x, batch_size, device), -1)
    h_logits = _logits(robust, x, batch_size, device)
    alphas = sorted({check_alpha(a) for a in alphas})
    candidates = []
    for transform in transforms:
        with torch.no_grad():
            h_clean = torch.log_softmax(transform.apply(nn.Identity())(h_logits), -1)
        for a in alphas:
            clean = evaluation.mixed_predictions(g_clean, h_clean, a) == y
            candidates.append(Candidate(a, transform, evaluation.accuracy(clean)))

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
    x_adv = evaluation.attack(mixed, x, y, config, seed=seed, desc=desc, **args)
    correct = evaluation.log_probs(mixed, x_adv, **args).argmax(-1) == y
    if floor_attack == "worst":
        if cache["std"] is None:
            cache["std"] = evaluation.attack(standard, x, y, config, seed=seed, desc="STD", **args)
        if candidate.transform not in cache["rob"]:
            cache["rob"][candidate.transform] = evaluation.attack(h_t, x, y, config, seed=seed, desc="ROB", **args)
        for x_other in (x, cache["std"], cache["rob"][candidate.transform]):
            correct &= evaluation.log_probs(mixed, x_other, **args).argmax(-1) == y
    return evaluation.accuracy(correct)


def calibrate_certified(
    standard: nn.Module,
    bounds: evaluation.Bounds,
    y: torch.Tensor,
    alphas: Sequence[float],
    radius: float,
    floor: float,
    method: str = "smoothing",
    batch_size: int = 500,
    device="cpu",
    x: torch.Tensor | None = None,
    standard_probs: torch.Tensor | None = None,
    floor_delta: float = 0.05,
) -> Calibration:
    """Highest clean accuracy over alphas whose certified accuracy at l2 `radius` reaches the floor (its
    lower confidence bound at level 1 - floor_delta is >= floor; see the module docstring).

    `bounds`: evaluation.smoothing_bounds of the smoothed h on the calibration images (one pass
    serves every alpha). Certified accuracy at r = fraction of images whose certified class is the
    label, that the mixture classifies correctly, and whose radius (Theorem 5 or 4) is >= r and > 0.
    Pass g's clean probabilities `standard_probs` (N, C), or `x` to compute them.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    y = y.cpu()
    if standard_probs is None:
        standard_probs = evaluation.log_probs(standard.to(device).eval(), x, batch_size, device).exp()
    candidates = []
    for a in alphas:
        a = check_alpha(a)
        clean = evaluation.smoothed_mixture_predictions(standard_probs, bounds, a) == y
        correct = evaluation.mixture_certified_correct(standard_probs, bounds, y, a)
        certified = evaluation.certified_curve(correct, evaluation.certified_radius(bounds, a, method), [radius])[0]
        candidate = Candidate(a, Transform(), evaluation.accuracy(clean))
        candidate.judge(certified, len(y), floor, floor_delta)
        candidates.append(candidate)
    feasible = [c for c in _order(candidates) if c.feasible]
    robust_radius = evaluation.certified_radius(bounds, 1.0, method)
    reference = {
        "clean_accuracy": evaluation.accuracy(bounds.robust_probs.argmax(-1) == y),
        "certified_accuracy": evaluation.certified_curve(bounds.prediction == y, robust_radius, [radius])[0],
        "radius": float(radius),
    }
    return Calibration("certified", float(floor), floor_delta, feasible[0] if feasible else None, candidates, reference)


# --- outputs for the node -------------------------------------------------------------------------------


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
    smoothing: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """The mixer node's parameter file content: {"mixer": {"ros__parameters": {...}}}.

    Keys are the node's parameter names (mix_perception/ros/parameters.py, config/mixer.yaml):
    alpha, standard_model, standard_arch, robust_model, robust_arch, certification and, when
    certifying, smoothing.{sigma, samples, select_samples, delta, mode} (nested as in the YAML).
    `extra` adds keys as they are (e.g. robust_sharpening).
    """
    params = {
        "alpha": float(check_alpha(alpha)),
        "standard_model": str(standard_model),
        "standard_arch": str(standard_arch),
        "robust_model": str(robust_model),
        "robust_arch": str(robust_arch),
        "certification": str(certification),
    }
    if smoothing:
        params["smoothing"] = dict(smoothing)
    params.update(extra or {})
    return {"mixer": {"ros__parameters": params}}


def write_parameter_file(path: Path, parameters: dict, comment_lines: Sequence[str] = ()) -> Path:
    """Write a ROS 2 parameter YAML with a '#' comment header; returns the path."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment_lines)
    path.write_text(header + yaml.safe_dump(parameters, sort_keys=False, default_flow_style=False))
    return path
