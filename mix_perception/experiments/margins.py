"""h's confidence margins, the paper's Table 1: top-1 minus runner-up probability of h on clean and
attacked inputs, split by whether h classifies the input correctly (Bai, Anderson, Sojoudi)."""

import torch

from mix_perception.core.certify import top_two_margin


def _stats(values: torch.Tensor) -> dict:
    """{"count", "mean", "median"} of a 1-D tensor (mean/median None when empty)."""
    if values.numel() == 0:
        return {"count": 0, "mean": None, "median": None}
    values = values.double()
    return {"count": int(values.numel()), "mean": float(values.mean()), "median": float(values.quantile(0.5))}


def margin_table(robust, y: torch.Tensor) -> dict:
    """The paper's Table 1 for h: margin statistics on clean and attacked inputs, by h's correctness.

    "attacked" means PGD aimed at h itself (the ROB inputs). Returns
    {"clean" | "attacked": {"correct" | "incorrect" | "all": {"count", "mean", "median"}}}
    ("attacked" is None when no attack ran).
    """
    table = {"clean": None, "attacked": None}
    for name, probs in (("clean", robust.probs), ("attacked", robust.attacked_probs)):
        if probs is None:
            continue
        margin = top_two_margin(probs)
        correct = probs.argmax(-1) == y.cpu()
        table[name] = {"correct": _stats(margin[correct]), "incorrect": _stats(margin[~correct]), "all": _stats(margin)}
    return table
