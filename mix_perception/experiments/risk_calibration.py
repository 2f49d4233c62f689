"""Calibrating the safety verdict (issue 18): the acceptance rule by Learn-then-Test, the OOD model, and
their measurement on held-out frames. The logic of docs/results/safety/explore.py, as a product.

Per frame, the mixer's outputs are computed by ros/inference.py FrameClassifier, the code the node runs
(plain torch, no ROS), so the numbers are the node's: mixed class and probabilities (float32), published
radius; h's penultimate features are hooked from the certifier's own forward of h, g's logits come from
one more forward of g.

Roles of the calibration frames (the shipped split is ordered by image hash, so a prefix is a
pseudo-random mix): the first `selection` frames choose the acceptance score (largest coverage with
empirical risk <= epsilon / 2), place the threshold grid (core.risk_control.quantile_grid from half
that coverage), and are the conformal reference of the OOD flag; the other frames are the Learn-then-Test
calibration (core.risk_control.learn_then_test). All of them are the reference of the shift detectors'
two p-values (any frames not used in a fit would do; more make the p-values closer to uniform given the
reference). Guarantee: with probability >= 1 - delta over the Learn-then-Test frames, P(wrong | certified
at the radius and score >= t) <= epsilon, for frames exchangeable with them.

OOD model (core.ood.OODModel, the file the mixer's `ood_model` parameter names): core.ood.fit_mahalanobis
on h's features and core.ood.fit_input_statistics on the frame statistics (core.frame_statistics) of
frames apart from the calibration split (the training split); its reference scores: the Mahalanobis
scores of the selection frames, g's energies -logsumexp(g logits) and the frame-statistics distances of
all calibration frames.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from mix_perception.core import ood, risk_control
from mix_perception.core.frame_statistics import frame_statistics
from mix_perception.ros.safety_guarantee import Shift, ShiftWatch


class FrameOutputs(NamedTuple):
    """Per frame, as the node computes it: pred (N,) mixed class; probs (N, C) float64 of the published
    float32; radius (N,) published l2 radius (0: not certified); g_logits (N, C), h_features (N, D) float64;
    input_statistics (N, K) float64: core.frame_statistics of the model input."""

    pred: np.ndarray
    probs: np.ndarray
    radius: np.ndarray
    g_logits: torch.Tensor
    h_features: torch.Tensor
    input_statistics: torch.Tensor


def frame_outputs(classifier, x: torch.Tensor, alpha: float, required_radius: float, batch: int = 500) -> FrameOutputs:
    """FrameOutputs of frames x (N, C, H, W) in [0, 1] through `classifier` (ros.inference.FrameClassifier)."""
    robust = classifier.certifier.robust
    last = ood.last_linear(robust)
    captured, frames, g_logits, statistics = [], [], [], []
    handle = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    try:
        for chunk in x.split(batch):
            chunk = chunk.to(classifier.device)
            frames += classifier.classify(chunk, alpha, required_radius)
            with torch.no_grad():
                g_logits.append(classifier.standard(chunk).double().cpu())
            statistics.append(frame_statistics(chunk).cpu())
    finally:
        handle.remove()
    return FrameOutputs(
        pred=np.array([f.class_id for f in frames], dtype=np.int64),
        probs=np.stack([f.probabilities for f in frames]).astype(np.float64),
        radius=np.array([f.certified_radius for f in frames], dtype=np.float64),
        g_logits=torch.cat(g_logits),
        h_features=torch.cat(captured).flatten(1).double().cpu(),
        input_statistics=torch.cat(statistics),
    )


def subset(outputs: FrameOutputs, index) -> FrameOutputs:
    """The frames `index` (a slice or an index array) of `outputs`."""
    return FrameOutputs(*(part[index] for part in outputs))


def acceptance_scores(outputs: FrameOutputs, required_radius: float) -> dict[str, np.ndarray]:
    """Candidate acceptance scores (N,) by name (ACCEPTANCE_SCORES, higher = more trusted), -inf for frames not
    certified at required_radius: the radius, the mixed top probability, the mixed top-two margin, and the
    margin / radius where g's class agrees with the mixed class (-inf where it does not)."""
    top2 = np.sort(outputs.probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    agrees = outputs.g_logits.argmax(1).numpy() == outputs.pred
    candidates = {
        "radius": outputs.radius,
        "top_probability": top2[:, 1],
        "margin": margin,
        "margin_if_g_agrees": np.where(agrees, margin, -np.inf),
        "radius_if_g_agrees": np.where(agrees, outputs.radius, -np.inf),
    }
    certified = outputs.radius >= required_radius
    return {name: np.where(certified, s, -np.inf) for name, s in candidates.items()}


def risk_coverage(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) of accepting the k highest-scored finite frames, k = 1..K: fraction of all frames
    accepted, and fraction wrong among them (the risk-coverage curve)."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    accepted = np.arange(1, order.size + 1)
    return accepted / scores.size, np.cumsum(wrong[order]) / accepted


def selection_coverage(scores: np.ndarray, wrong: np.ndarray, epsilon: float) -> float:
    """Largest coverage of a top-k acceptance whose empirical risk is <= epsilon / 2 (0 when none is)."""
    coverage, risk = risk_coverage(scores, wrong)
    ok = np.flatnonzero(risk <= epsilon / 2)
    return float(coverage[ok[-1]]) if ok.size else 0.0


@dataclass(frozen=True)
class AcceptanceCalibration:
    """The chosen score, the selection coverage of each candidate, the grid's start (selection coverage)
    and the Learn-then-Test outcome (core.risk_control.RiskGuarantee; refused when no threshold is valid)."""

    score: str
    selection_coverage: dict
    grid_start: float
    guarantee: risk_control.RiskGuarantee


def calibrate_acceptance(scores: dict, wrong: np.ndarray, selection: int, epsilon: float, delta: float):
    """Choose the score on the first `selection` frames, place the grid there, run Learn-then-Test on the
    rest (scores: {name: (n,)}, wrong: (n,) bool). Returns AcceptanceCalibration."""
    epsilon, delta = risk_control.check_level("epsilon", epsilon), risk_control.check_level("delta", delta)
    if not 0 < selection < len(wrong):
        raise ValueError(f"selection must be in 1..{len(wrong) - 1} (calibration frames {len(wrong)}), got {selection}")
    coverage = {name: selection_coverage(s[:selection], wrong[:selection], epsilon) for name, s in scores.items()}
    name = max(coverage, key=coverage.get)  # first of the best: ACCEPTANCE_SCORES order breaks ties
    start = max(0.05, coverage[name] / 2)
    if not np.isfinite(scores[name][:selection]).any():
        raise ValueError(f"no selection frame is certified: no {name} threshold can be placed")
    grid = risk_control.quantile_grid(scores[name][:selection], start)
    guarantee = risk_control.learn_then_test(scores[name][selection:], wrong[selection:], grid, epsilon, delta)
    return AcceptanceCalibration(name, coverage, start, guarantee)


def fit_ood_model(
    fit: FrameOutputs, fit_labels: torch.Tensor, reference: FrameOutputs, shift_reference: FrameOutputs
) -> ood.OODModel:
    """The OOD model (module docstring): the Mahalanobis statistics of h's features (with fit_labels (N,)) and
    of the frame statistics fitted on the `fit` frames; reference scores of the OOD flag from the `reference`
    frames, of the shift test from the `shift_reference` frames (neither used in the fit). ValueError when a
    class has no fit frame (its mean would be undefined)."""
    counts = torch.bincount(fit_labels, minlength=int(fit_labels.max()) + 1)
    if (counts == 0).any():
        raise ValueError(f"classes {(counts == 0).nonzero().flatten().tolist()} have no frame to fit the OOD model on")
    maha = ood.fit_mahalanobis(fit.h_features, fit_labels)
    frames = ood.fit_input_statistics(fit.input_statistics)
    energies, distances = ood.energy(shift_reference.g_logits), frames.score(shift_reference.input_statistics)
    return ood.OODModel.create(maha, maha.score(reference.h_features), energies, frames, distances)


def ood_p_values(model: ood.OODModel, outputs: FrameOutputs) -> np.ndarray:
    """Conformal p-values (N,) of the frames' Mahalanobis scores against the model's reference scores."""
    return model.score(outputs.h_features)[1].numpy()


def ood_scores(model: ood.OODModel, outputs: FrameOutputs) -> np.ndarray:
    """Mahalanobis scores (N,) of the frames' h features (higher = more unusual)."""
    return model.score(outputs.h_features)[0].numpy()


@dataclass(frozen=True)
class Verdict:
    """The calibrated verdict's rules: acceptance `score` >= `threshold` (frames certified at
    `required_radius`), the OOD flag p <= `ood_level` against `ood_model`, and the monitor's per-camera shift
    watch (`shift`, ros.safety_guarantee.Shift; None: not measured)."""

    score: str
    threshold: float
    required_radius: float
    ood_model: ood.OODModel
    ood_level: float
    shift: Shift | None = None


def shift_flags(verdict: Verdict, outputs: FrameOutputs) -> np.ndarray:
    """(N,) bool: the distribution_shift flag of a camera whose monitor starts fresh and receives these frames
    in order (ros.safety_guarantee.ShiftWatch on the p-values of g's energy and of the frame statistics)."""
    model = verdict.ood_model
    energy_p = model.shift_p_values(outputs.g_logits).tolist()
    distances = model.input_statistics.score(outputs.input_statistics)
    input_p = ood.conformal_p_values(model.input_scores, distances).tolist()
    watch = ShiftWatch(verdict.shift)
    return np.array([watch.update(pair) for pair in zip(energy_p, input_p, strict=True)], dtype=bool)


def measure(verdict: Verdict, outputs: FrameOutputs, labels: torch.Tensor | None = None) -> dict:
    """What the verdict does on frames: fractions certified, accepted, OOD-flagged and passed (accepted and
    not flagged); with labels (N,), also accuracy and the risk (fraction wrong) among accepted and passed
    frames (None when none is). Frames without labels are out of distribution: every pass is a miss. With
    verdict.shift: the fraction of frames a fresh camera fed them in order flags `distribution_shift`, and the
    first such frame (1-based; None when none is)."""
    score = acceptance_scores(outputs, verdict.required_radius)[verdict.score]
    accepted = score >= verdict.threshold
    flagged = ood_p_values(verdict.ood_model, outputs) <= verdict.ood_level
    passed = accepted & ~flagged
    out = {
        "frames": int(len(score)),
        "certified": float(np.mean(outputs.radius >= verdict.required_radius)),
        "accepted": float(accepted.mean()),
        "ood_flagged": float(flagged.mean()),
        "passed": float(passed.mean()),
    }
    if verdict.shift is not None:
        flags = shift_flags(verdict, outputs)
        out["shift_flagged"] = float(flags.mean())
        out["shift_first_flag"] = int(flags.argmax()) + 1 if flags.any() else None
    if labels is not None:
        wrong = outputs.pred != labels.numpy()
        out["accuracy"] = float(1.0 - wrong.mean())
        for name, mask in (("accepted", accepted), ("passed", passed)):
            out[f"risk_{name}"] = float(wrong[mask].mean()) if mask.any() else None
            out[f"wrong_{name}"] = int(wrong[mask].sum())
    return out


def verdict_table(classifier, verdict: Verdict, frame_sets: dict, alphas: dict, batch: int = 500) -> dict:
    """{set: {model: measure(...)}} of frame sets {name: (x (N, C, H, W), labels (N,) or None)} through the
    classifier at each alpha of {model: alpha} (g alone: 0, h alone: 1, the mixture: its alpha), with
    `scores`: {set: (N,) Mahalanobis scores} (the same for every alpha: h's features) and `curve`: the
    risk-coverage curve of the acceptance score of the first model on each labelled set."""
    table, scores, curves = {}, {}, {}
    for name, (x, labels) in frame_sets.items():
        table[name] = {}
        for model, alpha in alphas.items():
            outputs = frame_outputs(classifier, x, alpha, verdict.required_radius, batch)
            table[name][model] = measure(verdict, outputs, labels)
            if name not in scores:
                scores[name] = ood_scores(verdict.ood_model, outputs)
                if labels is not None:
                    s = acceptance_scores(outputs, verdict.required_radius)[verdict.score]
                    coverage, risk = risk_coverage(s, outputs.pred != labels.numpy())
                    curves[name] = {"model": model, "coverage": coverage.tolist(), "risk": risk.tolist()}
    return {"table": table, "scores": scores, "curves": curves}
