"""Exploration behind the standard model's recipe (README "Results"): train g by the standard recipe with
a given number of epochs, then measure g alone (clean, all 2000 calibration
images) and the mixture with the embedded h on the first 1000 calibration images, by the robust
exploration's `frontier` (h's logits x S, S = 1, 1.5, 2; alphas 0.5 ... 1 with clean accuracy in
[0.895, 0.93]: clean and MIX PGD-20 l_inf 0.1).

Not part of the package; uses its library. Run from the repository root after `make build`:
    .venv/bin/python -P docs/results/standard_recipes/explore_standard_recipes.py EPOCHS [THREADS]
The runs alongside were measured with the embedded h of commit 3665688 (clean_weight 0.5, 10 epochs;
the shipped h has since changed, so a rerun measures the mixture with the new one).
EPOCHS 0 measures the embedded g instead (the baseline; embedded.json). standard_30_shift_2.* are a run
of this script at commit 7696848 with its SHIFT argument 2: random translation by up to 2 px each
way (zero fill) on top of the flips, through a Recipe.shift option removed since because it did not
help (g 93.30% instead of 93.85% at 30 epochs, and no better mixture).
"""

import dataclasses
import importlib.util
import json
import pathlib
import sys

import torch

from mix_perception.core.models import load_model
from mix_perception.experiments import data, training
from mix_perception.experiments.batches import accuracy

ROBUST_SCRIPT = pathlib.Path(__file__).parents[1] / "robust_recipes" / "explore_robust_recipes.py"


def robust_exploration():
    """The robust exploration script as a module (for its `frontier`)."""
    spec = importlib.util.spec_from_file_location("explore_robust_recipes", ROBUST_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    epochs = int(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    recipe = dataclasses.replace(training.RECIPES["standard"], epochs=epochs or training.RECIPES["standard"].epochs)
    name, history, g = "embedded", [], load_model("default:standard")
    if epochs:
        train_split = data.load_split("train")
        mean, std = training.normalization(train_split.images)
        g, history = training.train(recipe, train_split.images, train_split.labels, mean, std, seed=0)
        name = f"standard_{epochs}"
        torch.save(training.checkpoint(g, training.FMNIST_NETWORK, mean, std, (1, 28, 28)), f"{name}.pt")
        g = load_model(f"{name}.pt")
    x, y = data.load_data("calibration", None)[:2]
    with torch.no_grad():
        g_clean = accuracy(g(x).argmax(-1) == y)
    print(f"{name}: g clean on 2000 calibration images {g_clean:.4f}", flush=True)
    frontier = robust_exploration().frontier(g, load_model("default:robust"), "calibration", 1000)
    with open(f"{name}.json", "w") as file:
        result = {"recipe": recipe.describe(), "history": history, "g_clean": g_clean, "calibration": frontier}
        json.dump(result, file, indent=1)
