"""Tests of mix_perception.experiments.attacks: PGD (l_inf, l_2) and the STD / ROB / MIX attack targets."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mix_perception.core.mixing import MixedClassifier
from mix_perception.experiments.attacks import PGDConfig, pgd

NORMS = ["linf", "l2"]
TOL = 1e-5


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample distance (N,) in the given norm."""
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def tiny_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes)
    ).eval()


def separable_data(n: int, seed: int):
    """Two classes of 1x8x8 images: pixels uniform in [0.2, 0.45] (class 0) or [0.55, 0.8] (class 1).

    The classes differ by mean brightness, a margin of 0.175 per pixel from the midpoint 0.5: an
    l_inf perturbation of 0.2 on every pixel (or l_2 of 0.175 * 8 = 1.4 along the all-ones direction)
    crosses it, while random noise of that size averages out over the 64 pixels.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    low = 0.2 + 0.35 * y.float()
    x = low.view(-1, 1, 1, 1) + 0.25 * torch.rand(n, 1, 8, 8, generator=g)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained to ~100% accuracy on the separable data, plus held-out test data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    x, y = separable_data(400, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    x_test, y_test = separable_data(300, seed=2)
    return model, x_test, y_test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def random_perturbation(x: torch.Tensor, eps: float, norm: str, seed: int) -> torch.Tensor:
    """Random noise of the full size eps: uniform sign * eps (l_inf) or a random direction of norm eps (l_2)."""
    g = torch.Generator().manual_seed(seed)
    if norm == "linf":
        noise = eps * torch.randint(0, 2, x.shape, generator=g).float().mul(2).sub(1)
    else:
        noise = torch.randn(x.shape, generator=g)
        noise = eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (x + noise).clamp(0, 1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("eps", [0.0, 0.03, 0.5, 2.0])
def test_result_in_ball_and_in_box(norm, eps):
    model = tiny_cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x[0] = 0.0  # boundary pixels: the box constraint binds
    x[1] = 1.0
    y = torch.randint(0, 3, (16,), generator=g)
    x_adv = pgd(model, x, y, PGDConfig(norm, eps, 5), g)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert torch.all(distance(x_adv, x, norm) <= eps + TOL)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if eps == 0.0:
        assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", NORMS)
def test_seeded_generator_makes_it_deterministic(norm):
    model = tiny_cnn()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 3
    runs = [pgd(model, x, y, PGDConfig(norm, 0.1, 3), torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("norm", NORMS)
def test_attack_increases_the_loss(norm, trained):
    model, x, y = trained
    eps = 0.1 if norm == "linf" else 0.8
    x_adv = pgd(model, x, y, PGDConfig(norm, eps, 10), torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(x_adv), y, reduction="none")
    assert attacked.mean() > clean.mean()
    assert (attacked >= clean - 1e-6).float().mean() > 0.95


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 2.0)])
def test_attack_breaks_a_trained_model_where_random_noise_does_not(norm, eps, trained):
    model, x, y = trained
    assert accuracy(model, x, y) > 0.97
    noisy = random_perturbation(x, eps, norm, seed=5)
    assert torch.all(distance(noisy, x, norm) <= eps + TOL)
    assert accuracy(model, noisy, y) > 0.9
    x_adv = pgd(model, x, y, PGDConfig(norm, eps, 20), torch.Generator().manual_seed(0))
    assert accuracy(model, x_adv, y) < 0.1


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_exact_when_the_box_does_not_bind(norm):
    # x = 0.5 everywhere and eps <= 0.5 per pixel: one huge step ends exactly on the sphere of radius eps.
    model = tiny_cnn()
    x = torch.full((6, 1, 8, 8), 0.5, dtype=torch.float64)
    y = torch.arange(6) % 3
    eps = 0.05 if norm == "linf" else 0.3
    x_adv = pgd(model.double(), x, y, PGDConfig(norm, eps, 1, 100.0, random_start=False))
    assert torch.allclose(distance(x_adv, x, norm), torch.full((6,), eps, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_alone_stays_in_ball(norm):
    model = tiny_cnn()
    x = torch.full((50, 1, 8, 8), 0.5)
    y = torch.zeros(50, dtype=torch.long)
    eps = 0.1 if norm == "linf" else 0.4
    x0 = pgd(model, x, y, PGDConfig(norm, eps, 0), torch.Generator().manual_seed(0))
    d = distance(x0, x, norm)
    assert torch.all(d <= eps + TOL)
    assert d.min() > 0  # the start is random, not the clean point


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_is_safe(norm, constant_logits):
    x = torch.rand(4, 1, 8, 8)
    model = constant_logits([0.0, 0.0, 0.0])
    x_adv = pgd(model, x, torch.zeros(4, dtype=torch.long), PGDConfig(norm, 0.1, 3, random_start=False))
    assert torch.isfinite(x_adv).all()
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", NORMS)
def test_no_gradients_left_on_parameters_and_mode_kept(norm):
    model = tiny_cnn().train()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():  # works even when the caller disabled gradients
        pgd(model, x, torch.zeros(4, dtype=torch.long), PGDConfig(norm, 0.1, 2))
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_invalid_arguments_are_rejected():
    model = tiny_cnn()
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, PGDConfig("l1", 0.1))
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, PGDConfig(eps=-0.1))
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, PGDConfig(eps=0.1, steps=-1))
    with pytest.raises(ValueError, match="shape"):
        pgd(model, x, torch.zeros(3, dtype=torch.long), PGDConfig(eps=0.1))


def test_adaptive_attack_through_the_mixture_stays_valid():
    mixed = MixedClassifier(tiny_cnn(0), tiny_cnn(1), alpha=0.6).eval()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = mixed(x).argmax(dim=1)
    for target in (mixed.standard, mixed.robust, mixed):  # STD, ROB, MIX
        x_adv = pgd(target, x, y, PGDConfig(eps=0.1, steps=5), torch.Generator().manual_seed(0))
        assert torch.all(distance(x_adv, x, "linf") <= 0.1 + TOL)
        assert torch.isfinite(mixed(x_adv)).all()
    x_mix = pgd(mixed, x, y, PGDConfig(eps=0.1, steps=5), torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert F.cross_entropy(mixed(x_mix), y) > F.cross_entropy(mixed(x), y)
