"""Evaluation of mixed classifiers: alpha sweeps, confidence margins, certified-accuracy curves.

Everything here is a plain function of models (nn.Modules on [0, 1] pixels returning logits
(N, C)) and data (x (N, C, H, W) in [0, 1], y (N,) int64); batched, with optional tqdm progress
bars on stderr. Results are per-image tensors on the CPU; `accuracy` and the summaries turn them
into plain floats for JSON.

Bai, Anderson, Sojoudi, "Mixing Classifiers to Alleviate the Accuracy-Robustness Trade-Off":

- section 4.1, attacks on the mixture: STD (PGD aimed at g, transferred to the mixture), ROB (PGD
  aimed at h, transferred) and MIX (adaptive PGD end-to-end through the mixture);
- Table 1, h's confidence margin: top-1 minus runner-up probability of h, on clean and attacked
  inputs, split by whether h classifies the input correctly;
- Figure 2, accuracy against alpha; Figure 3, certified accuracy against radius of the mixture and
  of h alone at equal clean accuracy (`certified_curves`).
"""

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mix_perception.core.attacks import ATTACK_TARGETS, NORMS, pgd
from mix_perception.core.certify import gaussian_lipschitz, lipschitz_radius_from_bounds, smoothing_radius
from mix_perception.core.mixing import MixedClassifier, check_alpha, mix_log_probs
from mix_perception.core.smoothing import METHODS as CERTIFY_METHODS
from mix_perception.core.smoothing import SmoothedClassifier

SPLIT_NAMES = ("test", "calibration")


# --- data --------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    """Images x (N, C, H, W) float32 in [0, 1], labels y (N,) int64, class names (may be empty), source name."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple
    name: str


def load_data(spec: str, limit: int | None = None) -> Dataset:
    """A data set by name ("test", "calibration": the shipped Fashion-MNIST splits) or .npz path.

    An .npz file holds `images` (or `x`) and `labels` (or `y`), optionally `class_names`. Images may
    be (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; uint8 is divided by 255, float
    must already lie in [0, 1]. `limit` keeps the first N images (the shipped splits are ordered by
    image hash, so a prefix mixes all classes). Raises ValueError with a one-line reason.
    """
    if spec in SPLIT_NAMES:
        from mix_perception.core.data import load_split

        split = load_split(spec)
        x, y, names = split.images, split.labels, tuple(split.class_names)
    else:
        x, y, names = _load_npz(Path(spec))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    return Dataset(x.contiguous(), y.contiguous(), names, spec)


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    if not path.is_file():
        raise ValueError(f"{path}: no such data file (expected 'test', 'calibration' or an .npz path)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    with archive:
        keys = set(archive.files)
        image_key = next((k for k in ("images", "x") if k in keys), None)
        label_key = next((k for k in ("labels", "y") if k in keys), None)
        if image_key is None or label_key is None:
            raise ValueError(f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'); has {sorted(keys)}")
        images, labels = archive[image_key], archive[label_key]
        names = tuple(str(n) for n in archive["class_names"]) if "class_names" in keys else ()
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4:
        raise ValueError(f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be N integers matching {images.shape[0]} images, got {labels.shape}")
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    elif np.issubdtype(images.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(images)).float()
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise ValueError(f"{path}: float images must lie in [0, 1]")
    else:
        raise ValueError(f"{path}: images must be uint8 or float, got {images.dtype}")
    return x, torch.from_numpy(labels.astype(np.int64)), names


# --- basic batched passes ------------------------------------------------------------------------


@dataclass(frozen=True)
class PGDConfig:
    """PGD of mix_perception.core.attacks.pgd: norm "linf" | "l2", radius eps (pixels in [0, 1]), steps,
    step size (None: 2.5 eps / steps), random start."""

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps!r}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step size must be positive, got {self.step_size!r}")


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


def _slices(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [slice(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


@torch.no_grad()
def log_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 500, device="cpu", progress=False, desc="forward"):
    """log_softmax(model(x)) (N, C) float32 on the CPU, computed in batches on `device`."""
    outputs = []
    with _progress(len(x), desc, progress) as bar:
        for part in _slices(len(x), batch_size):
            outputs.append(torch.log_softmax(model(x[part].to(device)).float(), dim=-1).cpu())
            bar.update(part.stop - part.start)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    batch_size: int = 500,
    device="cpu",
    seed: int = 0,
    progress=False,
    desc="PGD",
) -> torch.Tensor:
    """PGD adversarial inputs (N, C, H, W) on the CPU against `model`, in batches on `device`.

    Batch number k draws its random start from a generator seeded with seed + k, so two attacks with
    the same seed and batch size start from the same points (e.g. MIX at alpha 0 equals STD).
    """
    device = torch.device(device)
    results = []
    with _progress(len(x), desc, progress) as bar:
        for k, part in enumerate(_slices(len(x), batch_size)):
            generator = torch.Generator(device=device).manual_seed(int(seed) + k)
            x_adv = pgd(
                model,
                x[part].to(device),
                y[part].to(device),
                config.eps,
                norm=config.norm,
                steps=config.steps,
                step_size=config.step_size,
                random_start=config.random_start,
                generator=generator,
            )
            results.append(x_adv.cpu())
            bar.update(part.stop - part.start)
    return torch.cat(results) if results else x.clone()


def mixed_predictions(standard_log_probs: torch.Tensor, robust_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmax of the mixture log((1 - alpha) softmax(g) + alpha softmax(h)) from both log-probabilities (N, C)."""
    return mix_log_probs(standard_log_probs, robust_log_probs, check_alpha(alpha)).argmax(dim=-1)


def accuracy(correct: torch.Tensor) -> float:
    """Fraction of True in a bool tensor, count / total exactly (0.0 for an empty one)."""
    return int(correct.sum()) / correct.numel() if correct.numel() else 0.0


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
            "std": attack(standard, x, y, config, seed=seed, desc="PGD on g (STD)", **args),
            "rob": attack(robust, x, y, config, seed=seed, desc="PGD on h (ROB)", **args),
        }
        parts = {name: (log_probs(standard, xa, **args), log_probs(robust, xa, **args)) for name, xa in inputs.items()}

    clean = torch.stack([mixed_predictions(g_clean, h_clean, a) == y for a in alphas])
    results = {}
    for name in attacks:
        rows = []
        for a in alphas:
            if name == "mix":
                mixed = MixedClassifier(standard, robust, a)
                x_adv = attack(mixed, x, y, config, seed=seed, desc=f"PGD on mixture (MIX) alpha={a:g}", **args)
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


# --- confidence margins (Table 1) ---------------------------------------------------------------------


def top2_margin(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus runner-up probability per row of probs (N, C), C >= 2 -> (N,)."""
    top = probs.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def _stats(values: torch.Tensor) -> dict:
    """{"count", "mean", "median"} of a 1-D tensor (mean/median None when empty)."""
    if values.numel() == 0:
        return {"count": 0, "mean": None, "median": None}
    values = values.double()
    return {"count": int(values.numel()), "mean": float(values.mean()), "median": float(values.quantile(0.5))}


def margin_table(robust: BaseResult, y: torch.Tensor) -> dict:
    """The paper's Table 1 for h: margin statistics on clean and attacked inputs, by h's correctness.

    "attacked" means PGD aimed at h itself (the ROB inputs). Returns
    {"clean" | "attacked": {"correct" | "incorrect" | "all": {"count", "mean", "median"}}}
    ("attacked" is None when no attack ran).
    """
    table = {"clean": None, "attacked": None}
    for name, probs in (("clean", robust.probs), ("attacked", robust.attacked_probs)):
        if probs is None:
            continue
        margin = top2_margin(probs)
        correct = probs.argmax(-1) == y.cpu()
        table[name] = {"correct": _stats(margin[correct]), "incorrect": _stats(margin[~correct]), "all": _stats(margin)}
    return table


# --- certified accuracy (Figure 3) ------------------------------------------------------------------------


class Bounds(NamedTuple):
    """Confidence bounds on the smoothed h of `smoothing_bounds`, per image.

    prediction (N,) int64 h's class y (selection samples); p_top_lower (N,) and p_runner_upper (N,)
    float64, jointly valid with probability >= 1 - delta (SmoothedClassifier.certify); robust_probs
    (N, C) the estimate of h(x); sigma the noise level.
    """

    prediction: torch.Tensor
    p_top_lower: torch.Tensor
    p_runner_upper: torch.Tensor
    robust_probs: torch.Tensor
    sigma: float


def smoothing_bounds(
    base: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n_select: int = 64,
    n_estimate: int = 512,
    delta: float = 0.001,
    mode: str = "votes",
    noise_batch_size: int = 1000,
    chunk: int = 100,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> Bounds:
    """Bounds of `SmoothedClassifier(base, sigma).certify` for every image of x, `chunk` images at a time.

    The bounds do not depend on alpha or on the radius formula, so one pass serves every alpha and
    both certificates (`certified_radius`). Chunk k uses a generator seeded with seed + k.
    """
    device = torch.device(device)
    smoothed = SmoothedClassifier(base.to(device).eval(), sigma, n_estimate, noise_batch_size, mode, seed)
    fields = [[], [], [], []]
    with _progress(len(x), f"smoothing sigma={sigma:g}", progress) as bar:
        for k, part in enumerate(_slices(len(x), chunk)):
            generator = torch.Generator(device=device).manual_seed(int(seed) + k)
            cert = smoothed.certify(
                x[part].to(device), 1.0, n_select=n_select, n_estimate=n_estimate, delta=delta, generator=generator
            )
            for store, value in zip(
                fields, (cert.prediction, cert.p_top_lower, cert.p_runner_upper, cert.robust_probs), strict=True
            ):
                store.append(value.cpu())
            bar.update(part.stop - part.start)
    return Bounds(*(torch.cat(f) for f in fields), float(sigma))


def certified_radius(bounds: Bounds, alpha: float, method: str = "smoothing") -> torch.Tensor:
    """Certified l2 radius (N,) float64 of the mixture at `alpha` from the bounds (0 = not certified).

    "smoothing": Theorem 5, smoothing_radius(L_y, U, alpha, sigma). "lipschitz": Theorem 4 with
    Lip = sqrt(2/pi)/sigma for every class, which depends on the other classes' upper bounds only
    through their maximum U: lipschitz_radius_from_bounds with every U_i = U. Both equal what
    SmoothedClassifier.certify(x, alpha, method=...) returns with the same noise.
    """
    alpha = check_alpha(alpha)
    if method == "smoothing":
        return smoothing_radius(bounds.p_top_lower, bounds.p_runner_upper, alpha, bounds.sigma)
    if method == "lipschitz":
        n, c = bounds.robust_probs.shape
        upper = bounds.p_runner_upper.double().unsqueeze(-1).expand(n, c)
        return lipschitz_radius_from_bounds(
            bounds.prediction, bounds.p_top_lower, upper, alpha, gaussian_lipschitz(bounds.sigma)
        )
    raise ValueError(f"certification method must be one of {', '.join(CERTIFY_METHODS)}, got {method!r}")


def certified_curve(correct: torch.Tensor, radius: torch.Tensor, radii: Sequence[float]) -> list[float]:
    """Certified accuracy at each r of `radii`: fraction of images with correct & radius > 0 & radius >= r.

    Non-increasing in r by construction (the set shrinks as r grows).
    """
    certified = correct.cpu() & (radius.cpu() > 0)
    return [accuracy(certified & (radius.cpu() >= r)) for r in radii]


def smoothed_mixture_predictions(standard_probs: torch.Tensor, bounds: Bounds, alpha: float) -> torch.Tensor:
    """Clean prediction (N,) of the mixture with the Monte Carlo estimate of h: argmax((1-a) g + a h_hat)."""
    alpha = check_alpha(alpha)
    return ((1.0 - alpha) * standard_probs.double() + alpha * bounds.robust_probs.double()).argmax(-1)


def mixture_certified_correct(standard_probs, bounds: Bounds, y, alpha) -> torch.Tensor:
    """Images (N,) bool that count as correct for the mixture's certificate: h's certified class is the
    label AND the mixture (with the estimate of h) predicts the label, as the mixer node publishes."""
    y = y.cpu()
    return (bounds.prediction == y) & (smoothed_mixture_predictions(standard_probs, bounds, alpha) == y)


def match_clean_accuracy(target: float, candidates: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(sigma, clean accuracy) of h alone to compare with a mixture of clean accuracy `target`.

    candidates: (sigma', clean accuracy of the smoothed h at sigma'). Picks the LARGEST sigma' whose
    clean accuracy reaches the target (the most robust h alone that is at least as accurate as the
    mixture); when none reaches it, the most accurate one (the comparison then favours the mixture
    less than equal accuracy would; the clean accuracies are reported next to the curves).
    """
    if not candidates:
        raise ValueError("no candidate sigmas to match")
    reaching = [c for c in candidates if c[1] >= target - 1e-12]
    if reaching:
        return max(reaching, key=lambda c: c[0])
    return max(candidates, key=lambda c: (c[1], c[0]))


def certified_curves(
    standard: nn.Module,
    smoothing_base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float],
    methods: Sequence[str],
    sigma: float,
    radii: Sequence[float],
    match_sigmas: Sequence[float] = (),
    n_select: int = 64,
    n_estimate: int = 512,
    delta: float = 0.001,
    mode: str = "votes",
    batch_size: int = 500,
    noise_batch_size: int = 1000,
    device="cpu",
    seed: int = 0,
    progress=False,
) -> dict:
    """Certified accuracy against l2 radius of the mixture of g and the smoothed h (Figure 3).

    h is the Gaussian smoothing (noise sigma) of `smoothing_base`, certified with confidence bounds
    (SmoothedClassifier.certify: Clopper-Pearson or empirical Bernstein, Bonferroni over classes,
    selection samples apart from estimation samples); each of `methods` is Theorem 5
    ("smoothing") or Theorem 4 with Lip = sqrt(2/pi)/sigma ("lipschitz"), both from the same
    bounds. Every certificate holds with probability >= 1 - delta per image. Mixture curves only
    exist for alpha > 1/2 (zero otherwise).

    h alone at equal clean accuracy: mixing raises clean accuracy above the smoothed h's, so h
    alone is compared at the same clean accuracy by smoothing the same base model with a smaller
    test-time noise level sigma' (less noise: more accurate, smaller radii; no retraining): h alone
    is certified at every sigma' of `match_sigmas` (plus sigma), and for each alpha the curve of the
    largest sigma' whose clean accuracy reaches the mixture's is reported (`match_clean_accuracy`).
    Clean accuracy = the argmax of the Monte Carlo estimate (no abstention), for both.

    Returns {method: JSON-ready dict} (see the README's results.json schema).
    """
    unknown = [m for m in methods if m not in CERTIFY_METHODS]
    if unknown or not methods:
        raise ValueError(f"certification methods must be among {', '.join(CERTIFY_METHODS)}, got {list(methods)}")
    radii = [float(r) for r in radii]
    standard = standard.to(device).eval()
    standard_probs = log_probs(standard, x, batch_size, device).exp()
    y = y.cpu()
    sigmas = [float(sigma)] + [float(s) for s in match_sigmas if abs(float(s) - float(sigma)) > 1e-12]
    all_bounds = [
        smoothing_bounds(
            smoothing_base,
            x,
            s,
            n_select,
            n_estimate,
            delta,
            mode,
            noise_batch_size,
            device=device,
            seed=seed + 1_000_003 * index,
            progress=progress,
        )  # fmt: skip
        for index, s in enumerate(sigmas)
    ]
    results = {}
    for method in methods:
        robust_alone = [
            {
                "sigma": s,
                "clean_accuracy": accuracy(bounds.robust_probs.argmax(-1) == y),
                "curve": certified_curve(bounds.prediction == y, certified_radius(bounds, 1.0, method), radii),
            }
            for s, bounds in zip(sigmas, all_bounds, strict=True)
        ]
        own = all_bounds[0]
        mixtures = []
        for a in alphas:
            a = check_alpha(a)
            correct = mixture_certified_correct(standard_probs, own, y, a)
            clean = accuracy(smoothed_mixture_predictions(standard_probs, own, a) == y)
            match_sigma, _ = match_clean_accuracy(clean, [(r["sigma"], r["clean_accuracy"]) for r in robust_alone])
            matched = next(r for r in robust_alone if r["sigma"] == match_sigma)
            mixtures.append(
                {
                    "alpha": a,
                    "clean_accuracy": clean,
                    "curve": certified_curve(correct, certified_radius(own, a, method), radii),
                    "matched_robust": dict(matched),
                }
            )
        results[method] = {
            "method": method,
            "norm": "l2",
            "sigma": float(sigma),
            "n_select": int(n_select),
            "n_estimate": int(n_estimate),
            "delta": float(delta),
            "mode": mode,
            "images": int(len(x)),
            "radii": radii,
            "robust_alone": robust_alone,
            "mixture": mixtures,
        }
    return results


# --- summaries ------------------------------------------------------------------------------------------


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
