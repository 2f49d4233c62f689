"""Out-of-distribution score of a frame, from h's features, and its conformal p-value.

Score (higher = further from the training distribution): the Mahalanobis distance of h's penultimate
features f (the input of h's last nn.Linear; h is the 1-Lipschitz robust model, so feature distances
are bounded by input distances) to the nearest class mean with a shared covariance (Lee et al. 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks"):

    s(x) = min_c (f - mu_c)^T P (f - mu_c),   P = (Sigma + shrinkage * tr(Sigma)/D * I)^-1

mu_c (C, D) and P (D, D) are fitted once on in-distribution frames and stored as tensors (`save`,
`load` with weights_only=True); per frame it costs one (C, D) x (D, D) product, no extra forward.
Chosen over energy, max-softmax and k-NN distance on the shipped models by
docs/results/safety/explore.py (README there).

The stream-shift test (core.stream_shift) watches the conformal p-values of g's `energy` instead:
common corruptions (noise, blur, contrast, ...) barely move the robust h's features, by design, but
they do move the standard g's confidence (measured in docs/results/safety).

Conformal p-value (Vovk et al. 2005; Bates et al. 2023 "Testing for outliers with conformal
p-values"): with the scores s_1..s_n of n in-distribution calibration frames not used to fit mu, P,

    p(x) = (1 + #{i : s_i >= s(x)}) / (n + 1)

If x and the calibration frames are exchangeable, P(p(x) <= u) <= u for every u in [0, 1]: flagging
p <= a has a false-alarm rate <= a (marginally over the calibration draw). Own code: pytorch-ood 0.4.0
has these scores, but importing it loads torchvision, PIL and tqdm (the node must not load tqdm) and its
detectors fit from a DataLoader; the score is three matrix products.

The node's OOD model file (`OODModel`, parameter `ood_model` of the mixer): torch.save of a dict of
tensors {"means": (C, D), "precision": (D, D), "calibration_scores": (n,), "energy_calibration_scores":
(m,)}, float64: the Mahalanobis scores and g's energies of in-distribution frames not used to fit means
and precision (the references of the OOD p-value and of the shift test's p-value). `OODModel.load` refuses a
file that is not that (ValueError, one line); `check` refuses one that does not fit h (C classes, D
features).
"""

from dataclasses import dataclass

import torch
from torch import nn

from mix_perception.core.errors import first_line


def penultimate_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), logits (N, C)) of one forward: D = the input width of the model's last nn.Linear."""
    last = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
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

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """s = min_c (f - mu_c)^T P (f - mu_c) for features (N, D): (N,) float64, >= 0."""
        f = features.to(self.means.dtype)
        projected_means = self.means @ self.precision  # (C, D)
        own = ((f @ self.precision) * f).sum(1, keepdim=True)  # (N, 1)
        cross = f @ projected_means.T  # (N, C)
        constant = (projected_means * self.means).sum(1)  # (C,)
        return (own - 2.0 * cross + constant).min(dim=1).values.clamp_min(0.0)

    def save(self, path) -> None:
        torch.save({"means": self.means, "precision": self.precision}, path)

    @classmethod
    def load(cls, path) -> "Mahalanobis":
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["means"].double(), state["precision"].double())


# A set of n calibration scores gives p-values >= 1/(n + 1): with fewer than 19 none can reach 0.05.
MIN_CALIBRATION_SCORES = 19
OOD_KEYS = ("means", "precision", "calibration_scores", "energy_calibration_scores")


@dataclass(frozen=True)
class OODModel:
    """What the mixer needs per frame: the Mahalanobis statistics of h's features and the conformal
    references, sorted float64: `calibration_scores` (n,) of the OOD score, `energy_scores` (m,) of g's
    energy (the stream-shift test's p-value). Build one with `OODModel.create`."""

    mahalanobis: Mahalanobis
    calibration_scores: torch.Tensor
    energy_scores: torch.Tensor

    @classmethod
    def create(cls, mahalanobis: Mahalanobis, calibration_scores, energy_calibration_scores) -> "OODModel":
        """Validated: ValueError (one line) for wrong shapes, non-finite values or too few reference scores."""
        means, precision = mahalanobis.means.double(), mahalanobis.precision.double()
        references = [torch.as_tensor(s).double().flatten() for s in (calibration_scores, energy_calibration_scores)]
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            shapes = f"{tuple(means.shape)}, {tuple(precision.shape)}"
            raise ValueError(f"means must be (C, D) and precision (D, D), got {shapes}")
        if not all(bool(torch.isfinite(t).all()) for t in (means, precision, *references)):
            raise ValueError("means, precision and the calibration scores must be finite")
        for name, scores in zip(OOD_KEYS[2:], references, strict=True):
            if scores.numel() < MIN_CALIBRATION_SCORES:
                raise ValueError(f"needs >= {MIN_CALIBRATION_SCORES} {name}, got {scores.numel()}")
        return cls(Mahalanobis(means, precision), *(torch.sort(s).values for s in references))

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
        return scores, conformal_p_values(self.calibration_scores.to(scores.device), scores)

    def shift_p_values(self, standard_logits: torch.Tensor) -> torch.Tensor:
        """Conformal p-values (N,) of g's energy for g's logits (N, C): what the stream-shift test watches."""
        return conformal_p_values(self.energy_scores.to(standard_logits.device), energy(standard_logits))

    def to(self, device) -> "OODModel":
        m = self.mahalanobis
        means, precision = m.means.to(device), m.precision.to(device)
        return OODModel(
            Mahalanobis(means, precision), self.calibration_scores.to(device), self.energy_scores.to(device)
        )

    def save(self, path) -> None:
        tensors = (self.mahalanobis.means, self.mahalanobis.precision, self.calibration_scores, self.energy_scores)
        torch.save(dict(zip(OOD_KEYS, (t.double().cpu() for t in tensors), strict=True)), path)

    @classmethod
    def load(cls, path) -> "OODModel":
        """Read with torch.load(weights_only=True); ValueError "OOD model <path>: <reason>" for anything else
        than the format of the module docstring."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(state.get(key), torch.Tensor) for key in OOD_KEYS):
                raise ValueError(f"expected a dict of tensors {', '.join(OOD_KEYS)}")
            references = state["calibration_scores"], state["energy_calibration_scores"]
            return cls.create(Mahalanobis(state["means"], state["precision"]), *references)
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


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Energy score -logsumexp(z) of logits z (N, C): (N,), higher = less confident (Liu et al. 2020). On g's
    logits it is the score the per-camera shift test watches (g, not robust, reacts to corruptions)."""
    return -torch.logsumexp(logits.double(), dim=-1)


def conformal_p_values(calibration_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """p = (1 + #{calibration >= s}) / (n + 1) for each score s (higher score = more unusual); float64, (0, 1]."""
    ordered = torch.sort(calibration_scores.double().flatten()).values
    at_least = ordered.numel() - torch.searchsorted(ordered, scores.double().contiguous(), right=False)
    return (1.0 + at_least.double()) / (ordered.numel() + 1.0)
