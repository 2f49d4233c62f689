"""The embedded default models: files, checkpoints, model cards, measured accuracy, and train-default."""

import json

import pytest
import torch

from mix_perception import cli
from mix_perception.core import architectures, models
from mix_perception.experiments import data, training
from mix_perception.experiments.attacks import PGDConfig, pgd

NAMES = ("standard", "robust", "smoothing", "lipschitz")
CHECKPOINT_KEYS = {"arch", "num_classes", "state_dict", "input_shape"}
SLICE = 500  # images of the shipped test split the accuracy checks use


@pytest.fixture(scope="module")
def test_slice():
    split = data.load_split("test")
    return split.images[:SLICE], split.labels[:SLICE]


def _card(name):
    return json.loads(models.default_model_path(name).with_suffix(".json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_file_is_small_and_plain(name):
    path = models.default_model_path(name)
    mebibytes = 4 if name == "lipschitz" else 2  # its orthogonal layers need wider channels for the same accuracy
    assert path.stat().st_size < mebibytes * 1024 * 1024
    content = torch.load(path, map_location="cpu", weights_only=True)
    assert CHECKPOINT_KEYS <= set(content) and content["num_classes"] == 10
    if name == "lipschitz":  # sees [0, 1] pixels: no normalization, whose 1 / std would scale its constant
        assert content["arch"] == "mix_perception:lipschitz_cnn" and "mean" not in content
    else:
        assert content["arch"] == "mix_perception:fmnist_cnn" and {"mean", "std"} <= set(content)
    assert ("sigma" in content) == (name == "smoothing")
    if name == "smoothing":
        assert content["sigma"] == 0.25


@pytest.mark.parametrize("name", NAMES)
def test_model_card_records_data_recipe_and_numbers(name):
    card = _card(name)
    for key in ("data", "recipe", "seed", "command", "train_wall_time_s", "torch_version", "metrics"):
        assert key in card, key
    assert card["command"].startswith("mix-perception train-default")
    assert card["data"]["split_sizes"] == data.shipped_info()["split_sizes"]
    assert card["metrics"]["split"] == "test" and card["metrics"]["images"] == 5000
    assert card["class_names"] == list(data.CLASS_NAMES)


def test_default_models_meet_the_issue_targets():
    standard, robust = _card("standard")["metrics"], _card("robust")["metrics"]
    assert standard["clean_accuracy"] >= 0.91
    assert robust["clean_accuracy"] >= 0.83 and robust["pgd"]["accuracy"] >= 0.70
    assert robust["pgd"]["eps"] == 0.1 and robust["pgd"]["steps"] == 20 and robust["pgd"]["norm"] == "linf"
    lipschitz = _card("lipschitz")["metrics"]
    certified = lipschitz["certified_accuracy"]
    assert lipschitz["clean_accuracy"] >= 0.905 and certified["0.25"] >= 0.72 and certified["0.5"] >= 0.50  # issue 19
    assert certified["0.1"] >= 0.80  # issue 11's; issue 19's 85% is not reached (docs/results/lipschitz_recipes)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_model_reaches_its_card_accuracy(name, test_slice):
    images, labels = test_slice
    model = models.load_default(name)
    with torch.no_grad():
        accuracy = float((model(images).argmax(dim=1) == labels).double().mean())
    # 500 images: the standard error of an accuracy near 0.9 is about 0.013.
    assert accuracy == pytest.approx(_card(name)["metrics"]["clean_accuracy"], abs=0.04)


@pytest.mark.slow
def test_robust_model_resists_pgd_as_its_card_says(test_slice):
    images, labels = test_slice
    model = models.load_default("robust")
    x_adv = pgd(model, images, labels, PGDConfig(eps=0.1, steps=20), torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = float((model(x_adv).argmax(dim=1) == labels).double().mean())
    assert accuracy == pytest.approx(_card("robust")["metrics"]["pgd"]["accuracy"], abs=0.06)


def test_smoothing_model_tolerates_its_noise_as_its_card_says(test_slice):
    images, labels = test_slice
    model = models.load_default("smoothing")
    accuracy = training.noisy_accuracy(model, images, labels, sigma=0.25, seed=1)
    assert accuracy == pytest.approx(_card("smoothing")["metrics"]["noisy_accuracy"], abs=0.05)


def _tiny_run(out_dir, seed, names=NAMES):
    """train-default on 192 calibration images (no npm needed), 1 epoch, measured on 32 test images."""
    argv = ["train-default", "--out-dir", str(out_dir), "--seed", str(seed), "--epochs", "1",
            "--limit-train", "192", "--limit-eval", "32", "--train-split", "calibration",
            "--smoothing-samples", "8", "--only", *names]  # fmt: skip
    assert cli.main(argv) == 0
    return {name: torch.load(out_dir / f"{name}.pt", weights_only=True) for name in names}


@pytest.mark.slow
def test_train_default_is_deterministic_given_the_seed(tmp_path):
    first = _tiny_run(tmp_path / "a", seed=3)
    second = _tiny_run(tmp_path / "b", seed=3)
    other = _tiny_run(tmp_path / "c", seed=4, names=["standard"])
    for name in NAMES:
        assert first[name].keys() == second[name].keys()
        for key, value in first[name]["state_dict"].items():
            assert torch.equal(value, second[name]["state_dict"][key]), (name, key)
        card_a = json.loads((tmp_path / "a" / f"{name}.json").read_text())
        card_b = json.loads((tmp_path / "b" / f"{name}.json").read_text())
        assert card_a["metrics"] == card_b["metrics"]
        assert card_a["data"]["trained_on"] == {"split": "calibration", "images": 192}
        assert [epoch["epoch"] for epoch in card_a["history"]] == [1]
        assert "--seed 3" in card_a["command"]
    assert not torch.equal(first["standard"]["state_dict"]["0.weight"], other["standard"]["state_dict"]["0.weight"])
    loaded = models.load_model(tmp_path / "a" / "robust.pt")
    assert loaded(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_train_default_rejects_an_absent_device(tmp_path, capsys):
    status = cli.main(["train-default", "--out-dir", str(tmp_path), "--device", "cuda:99"])
    assert status == 2
    assert "cuda:99" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_robust_recipe_weighs_clean_and_adversarial_cross_entropy():
    """loss = w CE(g(x)) + (1 - w) CE(g(PGD(x))), w = clean_weight, on the flipped batch x."""
    recipe = training.RECIPES["robust"]
    assert recipe.clean_weight == 0.7 and recipe.attack["eps"] == 0.1 and recipe.attack["steps"] == 7
    split = data.load_split("calibration")
    x, y = split.images[:16], split.labels[:16]
    torch.manual_seed(0)
    model = models.Normalized(architectures.build(training.ARCH), [0.3], [0.35])
    loss, logits = training._loss(recipe, model, x, y, torch.Generator().manual_seed(1))

    generator = torch.Generator().manual_seed(1)  # replays the flips and the attack's random start
    flipped = training.flipped(x, generator)  # the recipe flips
    attacked = pgd(model, flipped, y, PGDConfig(**recipe.attack), generator)
    clean_loss = torch.nn.functional.cross_entropy(model(flipped), y)
    attacked_loss = torch.nn.functional.cross_entropy(model(attacked), y)
    assert torch.allclose(logits, model(attacked))
    assert torch.allclose(loss, 0.7 * clean_loss + 0.3 * attacked_loss)
    assert attacked_loss > clean_loss  # the attack found harder inputs
    assert (flipped != x).any() and (attacked - flipped).abs().max() <= 0.1 + 1e-6
