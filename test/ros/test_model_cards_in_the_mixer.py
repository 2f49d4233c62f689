"""The mixer takes input shape, channels and class names from the models' cards (core.cards); explicit
parameters win; cards of g and h that disagree fail configure with one line naming both; input.mean/std
replace the models' own normalization inside them (so certified radii stay in [0, 1] pixel units)."""

import json
import warnings

import pytest
import rclpy
import torch
from rclpy.parameter import Parameter
from torch import nn

from mix_perception.core import cards, lipschitz
from mix_perception.core.architectures import GroupSort2
from mix_perception.ros import parameters
from mix_perception.ros.mixer_node import start_mixer
from mix_perception.ros.mixer_runtime import build_runtime

CLASSES = ["circle", "square", "triangle"]


def lipschitz_net(channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), GroupSort2(), nn.Flatten(), nn.Linear(4 * size * size, len(CLASSES))
    )


def saved(tmp_path, name: str, channels: int = 3, size: int = 8, classes=CLASSES, mean=None, std=None) -> str:
    path = tmp_path / f"{name}.pt"
    cards.save_model(lipschitz_net(channels, size), path, (channels, size, size), classes, mean=mean, std=std)
    return str(path)


def values(**given) -> dict:
    return parameters.defaults(parameters.MIXER) | {"device": "cpu", "ood_model": ""} | given


def test_input_and_labels_come_from_the_cards(tmp_path):
    runtime = build_runtime(values(standard_model=saved(tmp_path, "g"), robust_model=saved(tmp_path, "h")))
    assert runtime.converter.spec.channels == 3 and tuple(runtime.converter.spec.size) == (8, 8)
    assert runtime.labels == CLASSES
    assert runtime.classifier.lipschitz_constant > 0


def test_the_embedded_pair_reads_its_own_cards():
    runtime = build_runtime(values())
    assert runtime.converter.spec.channels == 1 and tuple(runtime.converter.spec.size) == (28, 28)
    assert runtime.labels[0] == "T-shirt/top" and len(runtime.labels) == 10


@pytest.mark.parametrize(
    "h_card, message",
    [
        ({"size": 16}, r"cards disagree on input.size: standard_model g.json says \[8, 8\], robust_model h.json says "
                       r"\[16, 16\] \(set input.size to choose\)"),  # fmt: skip
        ({"channels": 1}, r"disagree on input.channels: standard_model g.json says 3, robust_model h.json says 1"),
        ({"classes": ["a", "b", "c"]}, r"cards disagree on labels: standard_model g.json says \['circle'"),
    ],
)
def test_cards_that_disagree_fail_with_one_line_naming_both(tmp_path, h_card, message):
    given = values(standard_model=saved(tmp_path, "g"), robust_model=saved(tmp_path, "h", **h_card))
    with pytest.raises(ValueError, match=message) as error:
        build_runtime(given)
    assert "\n" not in str(error.value)


def any_size_model(path, classes: int):
    """A TorchScript model for any input size (no card of its own but the one written here)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return str(path)


def test_explicit_parameters_win_over_the_cards(tmp_path):
    g, h = any_size_model(tmp_path / "g.pt", 3), any_size_model(tmp_path / "h.pt", 3)
    (tmp_path / "g.json").write_text(json.dumps({"input": {"shape": [3, 8, 8]}, "class_names": CLASSES}))
    (tmp_path / "h.json").write_text(json.dumps({"input": {"shape": [3, 8, 8]}, "class_names": ["x", "y", "z"]}))
    given = values(standard_model=g, robust_model=h, certification="none", robust_logit_scale=1.0)
    with pytest.raises(ValueError, match="cards disagree on labels"):
        build_runtime(given)
    runtime = build_runtime(given | {"labels": ["a", "b", "c"], "input.size": [12, 10], "input.channels": 1})
    assert runtime.labels == ["a", "b", "c"]
    assert runtime.converter.spec.channels == 1 and tuple(runtime.converter.spec.size) == (12, 10)


def test_explicit_normalization_replaces_the_models_own_inside_them(tmp_path):
    g, h = saved(tmp_path, "g", mean=[0.5], std=[0.5]), saved(tmp_path, "h")
    plain = build_runtime(values(standard_model=g, robust_model=h))
    normalized = build_runtime(values(standard_model=g, robust_model=h, **{"input.mean": [0.2], "input.std": [0.25]}))
    assert not plain.converter.spec.mean and not normalized.converter.spec.mean  # never outside the models
    assert normalized.classifier.lipschitz_constant == pytest.approx(4 * plain.classifier.lipschitz_constant)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(normalized.classifier.robust(x), plain.classifier.robust((x - 0.2) / 0.25))
        torch.testing.assert_close(normalized.classifier.standard(x), plain.classifier.standard(2 * x + 0.1))
    assert lipschitz.lipschitz_bound(normalized.classifier.robust, (3, 8, 8)) == pytest.approx(
        normalized.classifier.lipschitz_constant
    )
    with pytest.raises(ValueError, match="input.mean and input.std need 1 or 3 values"):
        build_runtime(values(standard_model=g, robust_model=h, **{"input.mean": [0.1, 0.2]}))


@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def test_the_node_fails_configure_with_one_line_when_the_cards_disagree(context, tmp_path):
    overrides = [
        Parameter("standard_model", value=saved(tmp_path, "g")),
        Parameter("robust_model", value=saved(tmp_path, "h", size=16)),
    ]
    with pytest.raises(RuntimeError, match=r"^the models' cards disagree on input.size: .*g.json says \[8, 8\]"):
        start_mixer(context=context, parameter_overrides=overrides)
    agreeing = overrides[:1] + [Parameter("robust_model", value=saved(tmp_path, "h2"))]
    node = start_mixer(context=context, parameter_overrides=agreeing)
    try:
        assert node.runtime.labels == CLASSES and node.active
    finally:
        node.destroy_node()


def test_a_parameter_file_with_empty_lists_reads_them_from_the_cards(context, tmp_path):
    params = tmp_path / "mixer.yaml"
    params.write_text(
        "/**/mixer:\n  ros__parameters:\n"
        f"    standard_model: {saved(tmp_path, 'g')}\n    robust_model: {saved(tmp_path, 'h')}\n"
        "    input:\n      size: []\n      channels: 0\n      mean: []\n      std: []\n    labels: []\n"
    )
    node = start_mixer(context=context, cli_args=["--ros-args", "--params-file", str(params)])
    try:
        assert node.runtime.labels == CLASSES and node.runtime.converter.spec.channels == 3
    finally:
        node.destroy_node()
