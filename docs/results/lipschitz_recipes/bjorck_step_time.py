"""Is there a cheaper training step for the embedded h? Time of one step of the shipped recipe's network (batch 128
of random [0, 1] images, Adam, tau-CE) with deel-torchlip's SpectralLinear dense layer at Bjorck tolerances 1e-3
(the default), 1e-2, 3e-2 and without Bjorck (None: spectral normalization only), and the dense weight's smallest
and largest singular values after those steps (1 = orthogonal rows). Median of the last 12 of 14 steps.

    .venv/bin/python -P docs/results/lipschitz_recipes/bjorck_step_time.py [--threads 2]
"""

import argparse
import statistics
import time

import torch
from deel import torchlip

from mix_perception.experiments import lipschitz_training as lt


def network(eps_bjorck):
    """The shipped recipe's deel-torchlip network, its dense SpectralLinear built with `eps_bjorck`."""
    torch.manual_seed(0)
    model = lt.lipschitz_network(lt.RECIPE)
    for i, layer in enumerate(model):
        if isinstance(layer, torchlip.SpectralLinear):
            model[i] = torchlip.SpectralLinear(layer.in_features, layer.out_features, eps_bjorck=eps_bjorck)
    return model


def step_time(model, steps: int = 14) -> tuple[float, float, float]:
    """(median ms a step, smallest and largest singular value of the dense weight after the steps)."""
    optimizer, loss = torch.optim.Adam(model.parameters(), lt.RECIPE.lr), torchlip.TauCrossEntropyLoss(lt.RECIPE.tau)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    dense = next(layer for layer in model if isinstance(layer, torchlip.SpectralLinear))
    singular = torch.linalg.svdvals(dense.weight.detach())
    return statistics.median(times[2:]) * 1000.0, float(singular.min()), float(singular.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(parser.parse_args().threads)
    for eps in (1e-3, 1e-2, 3e-2, None):
        ms, low, high = step_time(network(eps))
        print(f"eps_bjorck {eps}: {ms:.0f} ms a step; dense singular values {low:.3f} .. {high:.3f}")


if __name__ == "__main__":
    main()
