"""Model cards and plain sequential checkpoints: a deel-torchlip model after vanilla_export() saved with its
card, loaded back with torch.load(weights_only=True) and without deel-torchlip, the same logits and the same
proven constant; what a card fills in; bad cards and layers refused with one line."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from mix_perception.core import cards, layer_specs, lipschitz, models
from mix_perception.core.architectures import GroupSort2

torchlip = pytest.importorskip("deel.torchlip")
CLASSES = ["red", "green", "blue", "yellow"]


def deel_model() -> nn.Module:
    """An untrained deel-torchlip CNN for 3 x 16 x 16 inputs, exported with vanilla_export()."""
    torch.manual_seed(0)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(3, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(8, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.InvertibleDownSampling(2),
        nn.Flatten(),
        torchlip.SpectralLinear(32 * 4 * 4, 16),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(16, len(CLASSES)),
    ).eval().vanilla_export()


def test_a_deel_model_saved_with_its_card_loads_safely_with_the_same_logits_and_constant(tmp_path):
    exported = deel_model()
    card = cards.save_model(exported, tmp_path / "h.pt", (3, 16, 16), CLASSES, card={"note": "test"})
    assert card == tmp_path / "h.json" and json.loads(card.read_text())["note"] == "test"
    torch.load(tmp_path / "h.pt", weights_only=True)  # plain data only
    loaded = models.load_model(tmp_path / "h.pt")
    assert not any(type(m).__module__.startswith("deel") for m in loaded.modules())
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), exported(x), rtol=1e-5, atol=1e-6)
    assert lipschitz.lipschitz_bound(loaded, (3, 16, 16)) == pytest.approx(
        lipschitz.lipschitz_bound(exported, (3, 16, 16)), rel=1e-9
    )
    assert cards.read_card(tmp_path / "h.pt") == cards.ModelCard(tmp_path / "h.json", (3, 16, 16), None, None, CLASSES)


def test_loading_a_saved_deel_model_needs_no_deel_torchlip(tmp_path):
    cards.save_model(deel_model(), tmp_path / "h.pt", (3, 16, 16), CLASSES)
    script = (
        "import sys; sys.modules['deel'] = None\n"  # importing deel now fails
        "from mix_perception.core import models, lipschitz\n"
        f"m = models.load_model({str(tmp_path / 'h.pt')!r})\n"
        "print(round(lipschitz.lipschitz_bound(m, (3, 16, 16)), 6))\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 0


def test_the_card_fills_in_normalization_and_the_class_count_and_the_checkpoint_wins(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    cards.save_model(net, tmp_path / "g.pt", (3, 4, 4), CLASSES, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    loaded = models.load_model(tmp_path / "g.pt")
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    expected = net((x - mean) / std)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    (tmp_path / "g.json").write_text(json.dumps({"input": {"shape": [3, 4, 4], "mean": [0.0], "std": [1.0]}}))
    with torch.no_grad():  # the checkpoint's own mean and std win over its card's
        torch.testing.assert_close(models.load_model(tmp_path / "g.pt")(x), expected)
    # a TorchScript file holds no normalization: the card's is applied, and its class names are checked
    scripted = tmp_path / "s.pt"
    torch.jit.save(torch.jit.trace(net, x), scripted)
    (tmp_path / "s.json").write_text(json.dumps({"input": {"shape": [3, 4, 4], "mean": [0.5], "std": [0.2]}}))
    with torch.no_grad():
        torch.testing.assert_close(models.load_model(scripted)(x), net((x - 0.5) / 0.2))
    (tmp_path / "s.json").write_text(json.dumps({"input": {"shape": [3, 4, 4]}, "class_names": ["a", "b"]}))
    with pytest.raises(models.ModelLoadError, match="outputs 4 classes, expected 2"):
        models.load_model(scripted)


@pytest.mark.parametrize(
    "content,problem",
    [
        ("{not json", "not a readable model card"),
        ('{"input": {"shape": [3, 4]}}', r"input.shape must be \[channels, height, width\]"),
        ('{"input": {"mean": "0.5"}}', "input.mean must be null or a non-empty list of numbers"),
        ('{"class_names": [1, 2]}', "class_names must be a non-empty list of strings"),
    ],
)
def test_a_bad_card_fails_loading_with_one_line_naming_it(tmp_path, content, problem):
    cards.save_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), tmp_path / "m.pt", (1, 2, 2), ["a", "b"])
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(models.ModelLoadError, match=problem) as error:
        models.load_model(tmp_path / "m.pt")
    assert "\n" not in str(error.value) and "m.json" in str(error.value)


def test_the_embedded_cards_give_the_embedded_input_and_classes():
    card = cards.read_card("default:lipschitz")
    assert card.input_shape == (1, 28, 28) and card.mean is None and len(card.class_names) == 10
    assert cards.read_card("default:standard").mean == [0.2863]
    assert cards.read_card("/nonexistent/model.pt") is None


def test_layers_that_cannot_be_described_or_built_are_refused_by_name():
    with pytest.raises(ValueError, match="cannot describe layer type Tanh"):
        layer_specs.describe(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    scaled = torchlip.GroupSort2(k_coef_lip=2.0)
    with pytest.raises(ValueError, match="cannot describe layer type GroupSort2"):
        layer_specs.describe(nn.Sequential(scaled))  # only coefficient 1 is our GroupSort2
    with pytest.raises(ValueError, match="unknown type 'Tanh'"):
        layer_specs.build([{"type": "Tanh"}])
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\)"):
        layer_specs.build([{"type": "Linear", "in_features": 2}])
    assert type(layer_specs.build(layer_specs.describe(nn.Sequential(torchlip.GroupSort2())))[0]) is GroupSort2
