"""Out-of-distribution score of a frame, from h's features, and its conformal p-value.

Score (higher = further from the training distribution): the Mahalanobis distance of h's penultimate
features f (the input of h's last nn.Linear; h is the 1-Lipschitz robust model, so feature distances
are bounded by input distances) to the nearest class mean with a shared covariance (Lee et al. 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks"):

    s(x) = min_c (f - mu_c)^T P (f - mu_c),   P = (Sigma + shrinkage * tr(Sigma)/D * I)^-1

mu_c (C, D) and P (D, D) are fitted once on in-distribution frames and stored as tensors (`save`,
`load` with weights_only=True); per frame one (D, D) product (f W, P = W W^T) and C distances, no extra forward.
Chosen over energy, max-softmax and k-NN distance on the shipped models by
docs/results/safety/explore.py (README there).

The stream-shift test (core.stream_shift) watches two other conformal p-values per frame: of g's `energy`
(common corruptions such as noise, blur or contrast barely move the robust h's features, by design, but
they do move the standard g's confidence) and of the Mahalanobis distance of the frame's low-level
statistics (core.frame_statistics: one Gaussian, no classes) to those of training frames, which sees
what no model score sees (JPEG artefacts; measured in docs/results/safety).

Conformal p-value (Vovk et al. 2005; Bates et al. 2023 "Testing for outliers with conformal
p-values"): with the scores s_1..s_n of n in-distribution calibration frames not used to fit mu, P,

    p(x) = (1 + #{i : s_i >= s(x)}) / (n + 1)

If x and the calibration frames are exchangeable, P(p(x) <= u) <= u for every u in [0, 1]: flagging
p <= a has a false-alarm rate <= a (marginally over the calibration draw). Own code: pytorch-ood 0.4.0
has these scores, but importing it loads torchvision, PIL and tqdm (the node must not load tqdm) and its
detectors fit from a DataLoader; the score is a product and a distance.

The node's OOD model file (`OODModel`, parameter `ood_model` of the mixer): torch.save of a dict of
float64 tensors {"means": (C, D), "precision": (D, D), "calibration_scores": (n,), "energy_calibration_scores":
(m,), "input_means": (1, K), "input_precision": (K, K), "input_calibration_scores": (k,)}: the Mahalanobis
statistics of h's features and of the K frame statistics, and the reference values of in-distribution
frames not used to fit them (Mahalanobis scores, g's energies, frame-statistics distances: the references
of the OOD p-value and of the shift test's two p-values). `OODModel.load` refuses a file that is not that
(ValueError, one line; a file written before the frame statistics names the missing keys); `check` refuses
one that does not fit h (C classes, D features).
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from mix_perception.core.errors import first_line
from mix_perception.core.frame_statistics import FROM_RAW, OFFSET, STATISTICS, raw_statistics


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear (in module order); IndexError when it has none."""
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1]


def penultimate_features(
    model: nn.Module, x: torch.Tensor, last: nn.Linear | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), logits (N, C)) of one forward: D = the input width of the model's last nn.Linear
    (`last`: last_linear(model), looked up here when None)."""
    last = last_linear(model) if last is None else last
    captured = []
    handle = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


@dataclass(frozen=True)
class Mahalanobis:
    """Class means `means` (C, D) and shared precision `precision` (D, D), float64."""

    means: torch.Tensor
    precision: torch.Tensor
    @cached_property
    def whitened(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (D, D), means @ W (C, D)) with P = W W^T (Cholesky), computed at the first score: then
        (f - mu_c)^T P (f - mu_c) = ||f W - mu_c W||^2, a product and a distance (few torch calls: the mixer
        scores one frame at a time)."""
        factor = torch.linalg.cholesky(self.precision)
        return factor, self.means @ factor

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """s = min_c (f - mu_c)^T P (f - mu_c) = min_c ||f W - mu_c W||^2 for features (N, D): (N,) float64, >= 0."""
        factor, means = self.whitened
        return torch.cdist(features.to(factor.dtype) @ factor, means).amin(1).square()

    def save(self, path) -> None:
        torch.save({"means": self.means, "precision": self.precision}, path)

    @classmethod
    def load(cls, path) -> "Mahalanobis":
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["means"].double(), state["precision"].double())


# A set of n calibration scores gives p-values >= 1/(n + 1): with fewer than 19 none can reach 0.05.
MIN_CALIBRATION_SCORES = 19
OOD_KEYS = (
    "means",
    "precision",
    "calibration_scores",
    "energy_calibration_scores",
    "input_means",
    "input_precision",
    "input_calibration_scores",
)
REBUILD = "rebuild it with mix-perception calibrate --goal risk"


def _checked(statistics: Mahalanobis, what: str, classes: int | None = None) -> Mahalanobis:
    """statistics in float64; ValueError (one line) unless means is (C, D) (C == classes when given),
    precision (D, D), both finite."""
    means, precision = statistics.means.double(), statistics.precision.double()
    rows = means.shape[0] if means.ndim == 2 and classes is None else classes
    if means.ndim != 2 or means.shape[0] != rows or precision.shape != (means.shape[1], means.shape[1]):
        expected = "(C, D) and (D, D)" if classes is None else f"({classes}, D) and (D, D)"
        shapes = f"{tuple(means.shape)}, {tuple(precision.shape)}"
        raise ValueError(f"{what}: means and precision must be {expected}, got {shapes}")
    if not (torch.isfinite(means).all() and torch.isfinite(precision).all()):
        raise ValueError(f"{what}: means and precision must be finite")
    if not torch.equal(precision, precision.T) or torch.linalg.cholesky_ex(precision).info != 0:
        raise ValueError(f"{what}: precision must be symmetric positive definite")
    return Mahalanobis(means, precision)


@dataclass(frozen=True)
class OODModel:
    """What the mixer needs per frame: the Mahalanobis statistics of h's features (`mahalanobis`) and of the
    frame statistics (`input_statistics`, one class, K = len(STATISTICS)), and the conformal references,
    sorted float64: `calibration_scores` (n,) of the OOD score, `energy_scores` (m,) of g's energy and
    `input_scores` (k,) of the frame-statistics distance (the stream-shift test's two p-values). Build one
    with `OODModel.create`."""

    mahalanobis: Mahalanobis
    calibration_scores: torch.Tensor
    energy_scores: torch.Tensor
    input_statistics: Mahalanobis
    input_scores: torch.Tensor

    @classmethod
    def create(
        cls,
        mahalanobis: Mahalanobis,
        calibration_scores,
        energy_calibration_scores,
        input_statistics: Mahalanobis,
        input_calibration_scores,
    ) -> "OODModel":
        """Validated: ValueError (one line) for wrong shapes, non-finite values or too few reference scores."""
        features = _checked(mahalanobis, "h's features")
        frames = _checked(input_statistics, f"frame statistics ({', '.join(STATISTICS)})", 1)
        if frames.means.shape[1] != len(STATISTICS):
            raise ValueError(f"input_means must be (1, {len(STATISTICS)}), got {tuple(frames.means.shape)}")
        scores = (calibration_scores, energy_calibration_scores, input_calibration_scores)
        references = [torch.as_tensor(s).double().flatten() for s in scores]
        for name, reference in zip(OOD_KEYS[2:4] + OOD_KEYS[6:], references, strict=True):
            if not torch.isfinite(reference).all():
                raise ValueError(f"{name} must be finite")
            if reference.numel() < MIN_CALIBRATION_SCORES:
                raise ValueError(f"needs >= {MIN_CALIBRATION_SCORES} {name}, got {reference.numel()}")
        ordered = [torch.sort(reference).values for reference in references]
        return cls(features, ordered[0], ordered[1], frames, ordered[2])

    @property
    def classes(self) -> int:
        return self.mahalanobis.means.shape[0]

    @property
    def feature_width(self) -> int:
        return self.mahalanobis.means.shape[1]

    def check(self, classes: int, feature_width: int) -> None:
        """ValueError unless this model is about h's `classes` logits and `feature_width` features."""
        if (self.classes, self.feature_width) != (classes, feature_width):
            raise ValueError(
                f"OOD model is for {self.classes} classes and {self.feature_width} features, "
                f"h has {classes} classes and {feature_width} features (the input width of its last nn.Linear)"
            )

    def score(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, p-values) of features (N, D): Mahalanobis scores (N,) >= 0 and conformal p-values (N,) in (0, 1]."""
        scores = self.mahalanobis.score(features)
        return scores, _p_values(self.calibration_scores.to(scores.device), scores)

    def shift_p_values(self, standard_logits: torch.Tensor) -> torch.Tensor:
        """Conformal p-values (N,) of g's energy for g's logits (N, C): one of the stream-shift test's inputs."""
        return _p_values(self.energy_scores.to(standard_logits.device), energy(standard_logits))

    @cached_property
    def references(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The three references (calibration, energy, input scores) as the rows of one (3, n_max) tensor, each
        padded with +inf after its own scores (no finite score is above the padding, so it moves no p-value),
        and their sizes plus one (3, 1) float64."""
        rows = (self.calibration_scores, self.energy_scores, self.input_scores)
        padded = torch.full((3, max(r.numel() for r in rows)), torch.inf, dtype=torch.float64, device=rows[0].device)
        for padded_row, row in zip(padded, rows, strict=True):
            padded_row[: row.numel()] = row
        return padded, torch.tensor([[r.numel() + 1.0] for r in rows], dtype=torch.float64, device=padded.device)

    @cached_property
    def raw_input_whitening(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(FROM_RAW W (8, K), (mu - OFFSET) W (1, K)) for the frame statistics' Gaussian (mean mu, P = W W^T): the
        distance of statistics raw @ FROM_RAW + OFFSET is ||raw FROM_RAW W - (mu - OFFSET) W||^2, one product."""
        factor, means = self.input_statistics.whitened
        return FROM_RAW.to(factor.device) @ factor, means - OFFSET.to(factor.device) @ factor

    def per_frame(self, features: torch.Tensor, standard_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Everything the mixer publishes per frame, (4, N) float64: the OOD score of h's features (N, D) and the
        conformal p-values of that score, of g's energy (g's logits (N, C)) and of the distance of the frame
        statistics (core.frame_statistics) of the model inputs x (N, C, H, W) in [0, 1] (the stream-shift test's
        two inputs). Few torch calls (at batch 1 each is a noticeable share): the frame statistics' linear map is
        folded into their whitening, and the three p-values are one search."""
        whitening, whitened_mean = self.raw_input_whitening
        distances = (raw_statistics(x).to(whitening.dtype) @ whitening - whitened_mean).square().sum(1)
        scores = torch.stack((self.mahalanobis.score(features), energy(standard_logits), distances))
        padded, plus_one = self.references
        return torch.cat((scores[:1], _p_values(padded, scores, plus_one)))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors of the file format, in OOD_KEYS order."""
        m, i = self.mahalanobis, self.input_statistics
        references = self.calibration_scores, self.energy_scores
        return m.means, m.precision, *references, i.means, i.precision, self.input_scores

    def to(self, device) -> "OODModel":
        t = [tensor.to(device) for tensor in self.tensors()]
        return OODModel(Mahalanobis(t[0], t[1]), t[2], t[3], Mahalanobis(t[4], t[5]), t[6])

    def save(self, path) -> None:
        torch.save(dict(zip(OOD_KEYS, (t.double().cpu() for t in self.tensors()), strict=True)), path)

    @classmethod
    def load(cls, path) -> "OODModel":
        """Read with torch.load(weights_only=True); ValueError "OOD model <path>: <reason>" for anything else
        than the format of the module docstring."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"expected a dict of tensors {', '.join(OOD_KEYS)}")
            missing = [key for key in OOD_KEYS if not isinstance(state.get(key), torch.Tensor)]
            if missing:
                raise ValueError(f"lacks the tensors {', '.join(missing)}: {REBUILD}")
            t = [state[key] for key in OOD_KEYS]
            return cls.create(Mahalanobis(t[0], t[1]), t[2], t[3], Mahalanobis(t[4], t[5]), t[6])
        except Exception as error:  # noqa: BLE001 - unreadable, not a dict, wrong shapes: one line naming the file
            raise ValueError(f"OOD model {path}: {first_line(error)}") from error


def fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 1e-3) -> Mahalanobis:
    """Class means and the shrunk inverse of the pooled within-class covariance of features (N, D), labels (N,)."""
    f = features.double()
    classes = int(labels.max()) + 1
    means = torch.stack([f[labels == c].mean(0) for c in range(classes)])
    centred = f - means[labels]
    covariance = centred.T @ centred / max(len(f) - classes, 1)
    ridge = shrinkage * covariance.trace() / covariance.shape[0]
    precision = torch.linalg.inv(covariance + ridge * torch.eye(covariance.shape[0], dtype=f.dtype))
    return Mahalanobis(means, (precision + precision.T) / 2)


def fit_input_statistics(statistics: torch.Tensor) -> Mahalanobis:
    """One Gaussian (means (1, K), precision (K, K)) of frame statistics (N, K) (core.frame_statistics)."""
    return fit_mahalanobis(statistics, torch.zeros(len(statistics), dtype=torch.long, device=statistics.device))


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Energy score -logsumexp(z) of logits z (N, C): (N,), higher = less confident (Liu et al. 2020). On g's
    logits it is the score the per-camera shift test watches (g, not robust, reacts to corruptions)."""
    return -torch.logsumexp(logits.double(), dim=-1)


def conformal_p_values(calibration_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """p = (1 + #{calibration >= s}) / (n + 1) for each score s (higher score = more unusual); float64, (0, 1]."""
    return _p_values(torch.sort(calibration_scores.double().flatten()).values, scores.double().contiguous())


def _p_values(ordered: torch.Tensor, scores: torch.Tensor, plus_one: torch.Tensor | None = None) -> torch.Tensor:
    """conformal_p_values (n + 1 - #{calibration < s}) / (n + 1) of float64 scores (N,) against `ordered` (n,) sorted
    ascending, or of scores (R, N) against R references (R, n_max) sorted and padded with +inf after their first n
    scores, `plus_one` (R, 1) float64 their n + 1 (OODModel keeps them so). A NaN score sorts after the padding:
    clamped, its p-value is 1/(n + 1) as without padding."""
    if plus_one is None:  # on ordered's device: a (1,) CPU tensor does not broadcast with CUDA ones
        plus_one = torch.full((1,), ordered.shape[-1] + 1.0, dtype=torch.float64, device=ordered.device)
    return (plus_one - torch.searchsorted(ordered, scores, right=False)).clamp_min(1.0) / plus_one
