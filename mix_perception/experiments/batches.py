"""Batched passes over a data set: how they run (RunSettings), index slices, progress bars,
log-probabilities, accuracy.

Data are images x (N, C, H, W) in [0, 1] and labels y (N,) int64 on the CPU; models are nn.Modules
on [0, 1] pixels returning logits (N, C). Results come back on the CPU.
"""

import sys
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class RunSettings:
    """How the toolkit's passes over a data set run: images per forward / attack batch, the torch
    device, the seed of every random start and noise draw, and whether progress bars show."""

    batch_size: int = 500
    device: torch.device | str = "cpu"
    seed: int = 0
    progress: bool = False


DEFAULT_RUN = RunSettings()


def slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most `batch_size` covering range(n); ValueError for batch_size < 1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [slice(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over `total` images on stderr (a silent one when not `enabled`)."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, run: RunSettings = DEFAULT_RUN) -> torch.Tensor:
    """model(x) (N, C) float32 on the CPU, computed in batches of run.batch_size on run.device."""
    return torch.cat([model(x[part].to(run.device)).float().cpu() for part in slices(len(x), run.batch_size)])


@torch.no_grad()
def log_probs(model: nn.Module, x: torch.Tensor, run: RunSettings = DEFAULT_RUN, desc="forward"):
    """log_softmax(model(x)) (N, C) float32 on the CPU, computed in batches of run.batch_size on run.device."""
    outputs = []
    with progress_bar(len(x), desc, run.progress) as bar:
        for part in slices(len(x), run.batch_size):
            outputs.append(torch.log_softmax(model(x[part].to(run.device)).float(), dim=-1).cpu())
            bar.update(part.stop - part.start)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def accuracy(correct: torch.Tensor) -> float:
    """Fraction of True in a bool tensor, count / total exactly (0.0 for an empty one)."""
    return int(correct.sum()) / correct.numel() if correct.numel() else 0.0
