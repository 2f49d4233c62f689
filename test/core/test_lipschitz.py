"""Proven Lipschitz bounds: each layer's bound against the exact norm of its unrolled (Jacobian) matrix,
whole networks against power iteration at many inputs, a mutation that the soundness check catches,
and refusal of layers it cannot bound."""

import copy
import math

import pytest
import torch
from torch import nn

from mix_perception.core import architectures, lipschitz, models
from mix_perception.core.architectures import GroupSort2, L2NormPool2d
from mix_perception.core.models import Normalized, RepeatChannels
from mix_perception.experiments import data


def jacobian_matrix(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (out numel, in numel) Jacobian of layer at one float64 input x (shape without batch)."""
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0)), x, vectorize=True)
    return jacobian.reshape(-1, x.numel())


def exact_norm(layer: nn.Module, x: torch.Tensor) -> float:
    """Largest singular value of the unrolled Jacobian of layer at x."""
    return float(torch.linalg.matrix_norm(jacobian_matrix(layer, x), ord=2))


def jacobians(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per-input Jacobians (N, outputs, input numel) of model at each of inputs (N, ...), from one batched
    reverse pass per output (the samples do not interact, so d sum_n model(x_n) / d x_n = J(x_n))."""
    jacobian = torch.autograd.functional.jacobian(lambda x: model(x).sum(0), inputs, vectorize=True)
    return jacobian.reshape(-1, inputs.shape[0], inputs[0].numel()).transpose(0, 1)


def assert_bound_is_sound(model: nn.Module, inputs: torch.Tensor) -> float:
    """The soundness check: proven bound >= the l2 norm of the Jacobian at every one of inputs (N, C, H, W),
    each found exactly by SVD (a local Lipschitz constant, hence a lower bound of the global one; stronger
    than power iteration). Returns bound / the largest norm found (>= 1)."""
    bound = lipschitz.lipschitz_bound(model, inputs.shape[1:])
    found = float(torch.linalg.matrix_norm(jacobians(model, inputs), ord=2).max())
    assert bound >= found * (1 - 1e-9), f"bound {bound} below a Jacobian norm {found}"
    return bound / found


def double(module: nn.Module) -> nn.Module:
    return module.double().eval()


# ---------------------------------------------------------------- one layer against its unrolled matrix

CONVOLUTIONS = [
    # kernel, padding, stride, input (H, W)
    (3, 1, 1, (7, 6)),
    (3, 0, 1, (7, 6)),
    (3, 1, 2, (7, 6)),
    (5, 2, 1, (6, 6)),
    (2, 0, 2, (6, 7)),
    (4, 1, 3, (8, 7)),
    (1, 0, 1, (5, 5)),
    (3, 2, 1, (4, 5)),
    (3, "same", 1, (6, 5)),
    (3, "valid", 2, (7, 7)),
    (5, 0, 1, (5, 5)),
]


@pytest.mark.parametrize("kernel,padding,stride,size", CONVOLUTIONS)
def test_conv_bound_covers_the_exact_norm(kernel, padding, stride, size):
    torch.manual_seed(0)
    for trial in range(3):
        conv = double(nn.Conv2d(2, 3, kernel, stride=stride, padding=padding))
        x = torch.randn(2, *size, dtype=torch.float64)
        exact = exact_norm(conv, x)
        bound = lipschitz.conv2d_bound(conv, (2, *size))
        assert bound >= exact * (1 - 1e-9), (trial, bound, exact)
        if padding == "same" or padding == (kernel - 1) // 2 and stride == 1:
            # output as large as the input: the circular operator is not much larger than the real one
            assert bound <= 1.5 * exact, (trial, bound, exact)


def test_conv_bound_is_exact_for_a_1x1_kernel_and_carries_only_the_slack():
    torch.manual_seed(1)
    conv = double(nn.Conv2d(4, 3, 1))
    exact = exact_norm(conv, torch.randn(4, 5, 5, dtype=torch.float64))
    assert lipschitz.conv2d_bound(conv, (4, 5, 5)) == pytest.approx(exact * (1 + lipschitz.RELATIVE_SLACK), rel=1e-12)


def test_linear_bound_is_the_largest_singular_value():
    torch.manual_seed(2)
    linear = double(nn.Linear(7, 5))
    exact = exact_norm(linear, torch.randn(7, dtype=torch.float64))
    assert lipschitz.linear_bound(linear) == pytest.approx(exact * (1 + lipschitz.RELATIVE_SLACK), rel=1e-12)


POOLS = [
    nn.MaxPool2d(2),
    nn.MaxPool2d(3, stride=2),
    nn.MaxPool2d(3, stride=1, padding=1),
    nn.MaxPool2d(2, ceil_mode=True),
    L2NormPool2d(2),
    nn.LPPool2d(2, 3, stride=2),
]


@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_pool_bound_covers_its_jacobian_and_a_spike_attains_it(pool):
    torch.manual_seed(3)
    bound = lipschitz.pool_bound(pool)
    for _ in range(5):
        x = torch.randn(2, 7, 7, dtype=torch.float64)
        assert exact_norm(pool, x) <= bound * (1 + 1e-12)
    # one large pixel is the max (and nearly all the mass) of every window that holds it: its column of
    # the Jacobian has about one unit entry per window, so the norm is about sqrt(windows) = the bound
    spike = 1e-4 * torch.randn(1, 7, 7, dtype=torch.float64)
    spike[0, 2, 2] = 10.0
    assert exact_norm(pool, spike) == pytest.approx(bound, rel=1e-3)


def test_groupsort_relu_flatten_identity_are_one_lipschitz():
    torch.manual_seed(4)
    for layer in (GroupSort2(), nn.ReLU(), nn.Flatten(), nn.Identity()):
        for _ in range(5):
            x = torch.randn(4, 3, 3, dtype=torch.float64)
            assert exact_norm(layer, x) <= 1.0 + 1e-12
    assert all(bound == 1.0 for _, bound in lipschitz.layer_bounds(nn.Sequential(GroupSort2(), nn.ReLU()), (4, 3, 3)))


def test_normalization_and_channel_repeat_are_bounded_exactly():
    torch.manual_seed(5)
    normalize = Normalized(nn.Identity(), mean=[0.3, 0.1], std=[0.5, 0.25]).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    assert lipschitz.lipschitz_bound(normalize, (2, 3, 3)) == pytest.approx(exact_norm(normalize, x), rel=1e-6)
    repeat = RepeatChannels(3)
    grey = torch.randn(1, 3, 3, dtype=torch.float64)
    assert lipschitz.lipschitz_bound(repeat, (1, 3, 3)) == pytest.approx(exact_norm(repeat, grey), rel=1e-12)


def test_l2_norm_pool_and_groupsort_compute_what_the_training_layers_compute():
    torch.manual_seed(6)
    x = torch.randn(3, 4, 7, 6)
    torch.testing.assert_close(L2NormPool2d(2)(x), nn.LPPool2d(2, 2)(x))
    windows = x[..., :6, :6].unflatten(-2, (3, 2)).unflatten(-1, (3, 2))
    torch.testing.assert_close(L2NormPool2d(2)(x), torch.linalg.vector_norm(windows, dim=(-3, -1)))
    zeros = torch.zeros(1, 2, 4, 4, requires_grad=True)
    (gradient,) = torch.autograd.grad(L2NormPool2d(2)(zeros).sum(), zeros)
    assert torch.equal(gradient, torch.zeros_like(zeros))  # nn.LPPool2d gives NaN here
    torchlip = pytest.importorskip("deel.torchlip")
    torch.testing.assert_close(GroupSort2()(x), torchlip.GroupSort2()(x), rtol=0, atol=0)
    torch.testing.assert_close(L2NormPool2d(2)(x), torchlip.ScaledL2NormPool2d(2)(x))


# ---------------------------------------------------------------- networks


def small_network() -> nn.Module:
    torch.manual_seed(7)
    return double(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            GroupSort2(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            L2NormPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 8),
            GroupSort2(),
            nn.Linear(8, 3),
        )
    )


def test_network_bound_is_the_product_and_covers_the_jacobian_at_many_inputs():
    model = small_network()
    bounds = [bound for _, bound in lipschitz.layer_bounds(model, (1, 8, 8))]
    assert len(bounds) == 9
    assert lipschitz.lipschitz_bound(model, (1, 8, 8)) == pytest.approx(math.prod(bounds), rel=1e-12)
    inputs = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratio = assert_bound_is_sound(model, inputs)
    assert ratio < 10, "the bound should not be vacuous"


def test_margin_constants_cover_every_logit_difference():
    model = small_network()
    margins = lipschitz.margin_lipschitz(model, (1, 8, 8))
    bound = lipschitz.lipschitz_bound(model, (1, 8, 8))
    assert torch.equal(margins, margins.T) and torch.all(margins.diagonal() == 0)
    assert torch.all(margins <= math.sqrt(2) * bound * (1 + 1e-6))
    inputs = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = jacobians(model, inputs)  # (N, 3, 64): gradients of each logit
    differences = (rows.unsqueeze(2) - rows.unsqueeze(1)).norm(dim=-1).amax(dim=0)  # (3, 3)
    assert torch.all(differences <= margins)


def test_margin_constants_need_a_final_linear_layer():
    with pytest.raises(ValueError, match="not nn.Linear"):
        lipschitz.margin_lipschitz(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()), (1, 2, 2))


# a one-layer model per bound function, on which the soundness check is tight enough to notice a halved bound
MUTATIONS = [
    ("conv2d_bound", lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1))),
    ("linear_bound", lambda: nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 4))),
    ("pool_bound", lambda: nn.Sequential(L2NormPool2d(2))),
]


@pytest.mark.parametrize("name,build", MUTATIONS, ids=[name for name, _ in MUTATIONS])
def test_soundness_check_catches_a_halved_layer_bound(monkeypatch, name, build):
    torch.manual_seed(8)
    model = double(build())
    inputs = torch.rand(10, 2, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_bound_is_sound(model, inputs)  # the real bound passes
    original = getattr(lipschitz, name)
    monkeypatch.setattr(lipschitz, name, lambda *args: original(*args) / 2)
    with pytest.raises(AssertionError, match="below a Jacobian norm"):
        assert_bound_is_sound(model, inputs)


@pytest.mark.parametrize(
    "layer,named",
    [
        (nn.Tanh(), "Tanh"),
        (nn.BatchNorm2d(2), "BatchNorm2d"),
        (nn.Conv2d(2, 2, 3, padding=1, groups=2), "groups"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
        (nn.LPPool2d(3, 2), "L2-norm pool"),
        (nn.LPPool2d(2, 2, ceil_mode=True), "L2-norm pool"),
        (type("PaddedConv2d", (nn.Conv2d,), {})(2, 2, 3), "PaddedConv2d"),
    ],
    ids=str,
)
def test_a_layer_it_cannot_bound_is_refused_by_name(layer, named):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), layer, nn.Flatten())
    with pytest.raises(ValueError, match=named):
        lipschitz.lipschitz_bound(model, (1, 6, 6))


def test_the_standard_default_model_is_bounded_too():
    """fmnist_cnn (Normalized, Conv2d, ReLU, MaxPool2d, Linear): a valid bound, if a loose one."""
    model = models.load_default("standard").double()
    images = data.load_split("test").images[:3].double()
    assert math.isfinite(assert_bound_is_sound(model, images))


# ---------------------------------------------------------------- the shipped Lipschitz model


@pytest.fixture(scope="module")
def shipped():
    return models.load_default("lipschitz")


def test_shipped_lipschitz_model_is_plain_torch_and_has_a_sound_tight_bound(shipped):
    assert all(not type(m).__module__.startswith("deel") for m in shipped.modules())
    images = data.load_split("test").images[:10]
    ratio = assert_bound_is_sound(copy.deepcopy(shipped).double(), images.double())
    assert ratio < 4, f"proven bound / largest Jacobian norm found = {ratio:.2f}"
    margins = lipschitz.margin_lipschitz(shipped, (1, 28, 28))
    assert margins.shape == (10, 10)
    assert torch.all(margins <= math.sqrt(2) * lipschitz.lipschitz_bound(shipped, (1, 28, 28)) * (1 + 1e-6))


def test_architecture_is_registered_and_loads_by_name(shipped):
    content = torch.load(models.default_model_path("lipschitz"), map_location="cpu", weights_only=True)
    assert content["arch"] == "mix_perception:lipschitz_cnn" and "mean" not in content and "std" not in content
    net = architectures.build(content["arch"])
    net.load_state_dict(content["state_dict"])
    x = data.load_split("test").images[:4]
    with torch.no_grad():
        torch.testing.assert_close(net(x), shipped(x))


def test_lipschitz_constants_are_the_bound_and_the_margin_constants_in_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    constant, margins = lipschitz.lipschitz_constants(model, (1, 8, 8))
    assert constant == lipschitz.lipschitz_bound(model, (1, 8, 8))
    assert torch.equal(margins, lipschitz.margin_lipschitz(model, (1, 8, 8)))
