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


PADDED_CONVOLUTIONS = [
    # mode, kernel, padding, stride, input (H, W)
    ("circular", 3, 1, 1, (6, 5)),
    ("circular", 3, 2, 1, (6, 5)),
    ("circular", 3, 1, 2, (7, 6)),
    ("circular", 5, 2, 1, (4, 4)),  # grid smaller than the kernel: the copies bound
    ("reflect", 3, 1, 1, (6, 5)),
    ("reflect", 3, 2, 2, (7, 6)),
    ("replicate", 3, 1, 1, (6, 5)),
    ("replicate", 5, 3, 1, (5, 6)),
    ("replicate", 3, "same", 1, (6, 6)),
]


@pytest.mark.parametrize("mode,kernel,padding,stride,size", PADDED_CONVOLUTIONS)
def test_padded_conv_bound_covers_the_exact_norm(mode, kernel, padding, stride, size):
    torch.manual_seed(13)
    for _ in range(3):
        conv = double(nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, padding_mode=mode))
        x = torch.randn(2, *size, dtype=torch.float64)
        exact, bound = exact_norm(conv, x), lipschitz.conv2d_bound(conv, (2, *size))
        assert exact <= bound * (1 + 1e-9) and bound <= 3.5 * exact, (bound, exact)  # sound, not vacuous


def test_circular_padding_that_keeps_the_size_is_bounded_exactly():
    """A 'same' circular convolution is the circulant on the H x W grid itself: the bound is its norm."""
    torch.manual_seed(14)
    conv = double(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"))
    exact = exact_norm(conv, torch.randn(3, 6, 5, dtype=torch.float64))
    assert lipschitz.conv2d_bound(conv, (3, 6, 5)) == pytest.approx(exact * (1 + lipschitz.RELATIVE_SLACK), rel=1e-9)


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
        (nn.Conv2d(2, 2, 3, padding=6, padding_mode="reflect"), "Padding size"),
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


# ---------------------------------------------------------------- deel-torchlip models as vanilla_export() leaves them

torchlip = pytest.importorskip("deel.torchlip")


def exported(*layers, k_coef_lip: float = 1.0) -> nn.Module:
    """torchlip.Sequential(*layers).vanilla_export() in float64 eval mode (the user's path)."""
    torch.manual_seed(9)
    return double(torchlip.Sequential(*layers, k_coef_lip=k_coef_lip).eval().vanilla_export())


# deel layer -> the exact type vanilla_export() leaves, and the input it runs on (C, H, W)
DEEL_LAYERS = [
    (lambda: torchlip.SpectralConv2d(2, 4, 3, padding=1), nn.Conv2d, (2, 6, 6)),
    (lambda: torchlip.SpectralConv2d(2, 4, 3, padding=1, padding_mode="circular"), nn.Conv2d, (2, 6, 6)),
    (lambda: torchlip.SpectralConv2d(2, 4, 3, padding=1, padding_mode="symmetric"), nn.Conv2d, (2, 6, 6)),
    (lambda: torchlip.FrobeniusConv2d(2, 4, 3, padding=1), nn.Conv2d, (2, 6, 6)),
    (lambda: torchlip.GroupSort2(), torchlip.GroupSort2, (4, 3, 3)),
    (lambda: torchlip.GroupSort(4), torchlip.GroupSort, (8, 3, 3)),
    (lambda: torchlip.FullSort(), torchlip.FullSort, (6, 2, 2)),
    (lambda: torchlip.MaxMin(), torchlip.MaxMin, (3, 3, 3)),
    (lambda: torchlip.ScaledL2NormPool2d(2), nn.LPPool2d, (2, 6, 6)),
    (lambda: torchlip.ScaledAvgPool2d(2), torchlip.ScaledAvgPool2d, (2, 6, 6)),
    (lambda: torchlip.ScaledAvgPool2d((2, 3)), torchlip.ScaledAvgPool2d, (2, 6, 6)),
    (lambda: torchlip.ScaledAdaptiveAvgPool2d((1, 1)), torchlip.ScaledAdaptiveAvgPool2d, (2, 5, 4)),
    (lambda: torchlip.ScaledAdaptativeL2NormPool2d((1, 1)), torchlip.ScaledAdaptativeL2NormPool2d, (2, 5, 4)),
    (lambda: torchlip.InvertibleDownSampling(2), nn.PixelUnshuffle, (2, 4, 6)),
    (lambda: torchlip.InvertibleUpSampling(2), nn.PixelShuffle, (8, 2, 3)),
    (lambda: torchlip.LPReLU(3, init=-0.7), torchlip.LPReLU, (3, 3, 3)),
]
DEEL_LINEAR = [
    (lambda: torchlip.SpectralLinear(12, 5), nn.Linear),
    (lambda: torchlip.FrobeniusLinear(12, 5), nn.Linear),
]


@pytest.mark.parametrize("build,kind,shape", DEEL_LAYERS, ids=[kind.__name__ + str(s) for _, kind, s in DEEL_LAYERS])
def test_each_exported_deel_layer_has_its_exact_type_and_a_bound_above_its_unrolled_matrix(build, kind, shape):
    model = exported(build())
    (layer,) = list(model)
    assert type(model) is nn.Sequential and type(layer) is kind
    [(_, bound)] = lipschitz.layer_bounds(model, shape)
    torch.manual_seed(10)
    norms = [exact_norm(layer, torch.randn(*shape, dtype=torch.float64)) for _ in range(5)]
    assert max(norms) <= bound * (1 + 1e-9), (norms, bound)
    assert max(norms) >= bound * 0.5, (norms, bound)  # not vacuous: the bound is attained or nearly


@pytest.mark.parametrize("build,kind", DEEL_LINEAR, ids=["SpectralLinear", "FrobeniusLinear"])
def test_exported_deel_linear_layers_are_plain_linear_layers_bounded_by_their_singular_value(build, kind):
    model = exported(build())
    assert type(model[0]) is kind
    exact = exact_norm(model, torch.randn(12, dtype=torch.float64))
    assert lipschitz.lipschitz_bound(model, (12,)) == pytest.approx(exact * (1 + lipschitz.RELATIVE_SLACK), rel=1e-9)
    assert exact <= 1.0 + 1e-3  # deel's constraint, which the proof does not rely on


def test_the_k_coefficient_of_deel_layers_scales_their_bound():
    """torchlip.Sequential(k_coef_lip=k) gives each of its n Lipschitz layers k^(1/n): the bound follows it."""
    model = exported(torchlip.GroupSort2(), torchlip.ScaledAvgPool2d(2), torchlip.MaxMin(), k_coef_lip=8.0)
    bounds = [bound for _, bound in lipschitz.layer_bounds(model, (2, 4, 4))]
    assert bounds == pytest.approx([2.0, 2.0, 2.0], rel=1e-12)
    inputs = torch.randn(20, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_bound_is_sound(model, inputs)


def deel_cnn(channels: int = 3, classes: int = 4) -> nn.Module:
    """A deel-torchlip CNN of the kinds a user writes, for channels x 16 x 16 inputs, exported."""
    return exported(
        torchlip.SpectralConv2d(channels, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(8, 8, 3, padding=1),
        torchlip.MaxMin(),
        torchlip.InvertibleDownSampling(2),
        torchlip.SpectralConv2d(64, 16, 3, padding=1),
        torchlip.FullSort(),
        torchlip.ScaledAvgPool2d(2),
        nn.Flatten(),
        torchlip.SpectralLinear(16 * 2 * 2, 16),
        torchlip.GroupSort(4),
        torchlip.FrobeniusLinear(16, classes),
    )


def test_a_whole_exported_deel_cnn_is_bounded_soundly_and_tightly():
    model = deel_cnn()
    assert {type(m).__module__.split(".")[0] for m in model} == {"torch", "deel"}
    inputs = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ratio = assert_bound_is_sound(model, inputs)
    bound = lipschitz.lipschitz_bound(model, (3, 16, 16))
    assert bound < 1.5 and ratio < 10, (bound, ratio)  # deel built it ~1-Lipschitz; the proof confirms it
    assert lipschitz.margin_lipschitz(model, (3, 16, 16)).shape == (4, 4)


def test_deel_layers_it_cannot_bound_are_refused_by_name():
    householder = exported(torchlip.HouseHolder(4))
    with pytest.raises(ValueError, match="HouseHolder"):
        lipschitz.lipschitz_bound(householder, (4, 3, 3))
    subclass = nn.Sequential(type("MyGroupSort2", (torchlip.GroupSort2,), {})())
    with pytest.raises(ValueError, match="MyGroupSort2"):
        lipschitz.lipschitz_bound(subclass, (4, 3, 3))
    with pytest.raises(ValueError, match="output_size"):
        pool = torchlip.ScaledAdaptiveAvgPool2d((1, 1))
        pool.output_size = (2, 2)
        lipschitz.lipschitz_bound(nn.Sequential(pool), (2, 4, 4))


def test_vanilla_model_in_place_keeps_the_deel_sequential_and_is_bounded_the_same():
    torch.manual_seed(11)
    conv, linear = torchlip.SpectralConv2d(1, 4, 3, padding=1), torchlip.SpectralLinear(64, 3)
    model = torchlip.Sequential(conv, torchlip.GroupSort2(), nn.Flatten(), linear).eval()
    in_place = double(torchlip.vanilla_model(copy.deepcopy(model)))
    assert type(in_place) is torchlip.Sequential
    assert lipschitz.lipschitz_bound(in_place, (1, 4, 4)) == pytest.approx(
        lipschitz.lipschitz_bound(double(model.vanilla_export()), (1, 4, 4)), rel=1e-12
    )


def test_avg_pool_bound_covers_overlapping_windows_and_a_divisor_override():
    torch.manual_seed(12)
    for pool in (nn.AvgPool2d(3, stride=1), nn.AvgPool2d(2, divisor_override=1), nn.AvgPool2d(3, 2, padding=1)):
        bound = lipschitz.avg_pool_bound(pool)
        exact = exact_norm(pool, torch.randn(2, 7, 7, dtype=torch.float64))  # linear: the same at every input
        assert exact <= bound * (1 + 1e-12) and exact >= bound * 0.5, (pool, exact, bound)
    with pytest.raises(ValueError, match="ceil_mode"):
        lipschitz.avg_pool_bound(nn.AvgPool2d(2, ceil_mode=True))
