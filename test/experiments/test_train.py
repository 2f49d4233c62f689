"""`mix-perception train` on data sets the tests make (experiments.shapes): reading image folders and .npz,
the held-out split, bad input, the scaled architectures, determinism, checkpoints and cards."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mix_perception import cli
from mix_perception.core import architectures, certify, lipschitz, models
from mix_perception.experiments import image_data, lipschitz_training, shapes
from mix_perception.experiments.attacks import PGDConfig, pgd
from mix_perception.experiments.data import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return shapes.write_folder(tmp_path_factory.mktemp("shapes") / "folder", per_class=12, size=16, seed=5)


def test_folder_and_npz_of_the_same_images_load_alike(folder, tmp_path):
    from_folder = image_data.load(folder)
    from_npz = image_data.load(shapes.write_npz(tmp_path / "shapes.npz", per_class=12, size=16, seed=5))
    assert from_folder.class_names == sorted(shapes.SHAPES) and from_npz.class_names == list(shapes.SHAPES)
    assert from_folder.images.shape == from_npz.images.shape == (48, 3, 16, 16)
    assert from_folder.images.dtype == torch.float32 and 0 <= from_folder.images.min() < from_folder.images.max() <= 1
    # The folder numbers classes by sorted name and lists each class's files in index order.
    for folder_label, name in enumerate(from_folder.class_names):
        npz_label = from_npz.class_names.index(name)
        assert torch.equal(
            from_folder.images[from_folder.labels == folder_label], from_npz.images[from_npz.labels == npz_label]
        )


def test_channels_and_size_flags_convert_and_resize(folder):
    grey = image_data.load(folder, size=(12, 20), channels=1)
    assert grey.images.shape == (48, 1, 12, 20)
    colour = image_data.load(folder)
    luma = (colour.images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert (image_data.load(folder, channels=1).images - luma).abs().max() < 0.01  # Pillow's "L" rounds to 8 bits


def test_held_out_split_is_stratified_disjoint_and_seeded(folder):
    data = image_data.load(folder)
    train, held = image_data.held_out_split(data, 0.25, seed=1)
    again, _ = image_data.held_out_split(data, 0.25, seed=1)
    other, _ = image_data.held_out_split(data, 0.25, seed=2)
    assert torch.bincount(held.labels).tolist() == [3, 3, 3, 3] and torch.bincount(train.labels).tolist() == [9] * 4
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    rows = {tuple(image.flatten().tolist()[:64]) for image in train.images}
    assert not rows & {tuple(image.flatten().tolist()[:64]) for image in held.images}


def _write_png(path, size=(16, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def _bad_inputs(tmp_path):
    """(name, data path) of each bad input the command must refuse with one line."""
    one_class = tmp_path / "one_class"
    for index in range(3):
        _write_png(one_class / "cat" / f"{index}.png")
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a" / "0.png")
    _write_png(mixed / "b" / "0.png", size=(20, 16))
    corrupt = tmp_path / "corrupt"
    _write_png(corrupt / "a" / "0.png")
    (corrupt / "b").mkdir(parents=True)
    (corrupt / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    no_keys = tmp_path / "no_keys.npz"
    np.savez(no_keys, pictures=np.zeros((4, 8, 8), np.uint8))
    no_keys.with_suffix(".txt").write_text("not data")
    return {
        "missing": (tmp_path / "absent", "no such file"),
        "not data": (no_keys.with_suffix(".txt"), "expected an image folder"),
        "one class": (one_class, "at least 2"),
        "mixed sizes": (mixed, "--size"),
        "corrupt": (corrupt, "cannot read the image"),
        "npz without keys": (no_keys, "'images'"),
    }


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for name, (path, reason) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / "model.pt"
        status = cli.main(["train", "--data", str(path), "--role", "standard", "--out", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert status == 2, name
        assert err.count("\n") == 1 and err.startswith("mix-perception train: error:") and reason in err, (name, err)
        assert not out.exists()


def _refusal(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_bad_options_are_refused_before_training(folder, tmp_path, capsys):
    base = ["train", "--data", str(folder), "--out", str(tmp_path / "m.pt"), "--device", "cpu"]
    other = shapes.write_npz(tmp_path / "other.npz", per_class=3, size=16)
    assert "differ from the training classes" in _refusal(capsys, [*base, "--role", "standard", "--val", str(other)])
    assert "not 'cnn' nor a torchvision" in _refusal(capsys, [*base, "--role", "standard", "--arch", "nonsense"])
    assert "--channels 3" in _refusal(capsys, [*base, "--role", "standard", "--arch", "resnet18", "--channels", "1"])
    assert "at least 8 x 8" in _refusal(capsys, [*base, "--role", "lipschitz", "--size", "6", "6"])
    assert "cuda:99" in _refusal(capsys, [*base, "--role", "standard", "--device", "cuda:99"])
    assert not (tmp_path / "m.pt").exists()


def test_mixed_sizes_are_resized_with_size(tmp_path):
    mixed = _bad_inputs(tmp_path)["mixed sizes"][0]
    assert image_data.load(mixed, size=(8, 8)).images.shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="give --size"):
        image_data.load(mixed)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 48, 80)])
def test_architectures_scale_with_the_input(shape):
    g = architectures.plain_cnn(5, *shape)
    recipe = lipschitz_training.recipe_for(shape)
    h = lipschitz_training.network(recipe, shape, 5).build()
    x = torch.rand(2, *shape)
    assert g(x).shape == h(x).shape == (2, 5)
    if shape[1] <= 32:  # (the proof's exact convolution norms take a minute at 64 x 64 on a loaded CPU)
        assert lipschitz.lipschitz_bound(h, shape) > 0  # every layer has a proof
    if shape == (1, 28, 28):  # the embedded models' networks, unchanged
        assert recipe == lipschitz_training.RECIPE and lipschitz_training.network(recipe, shape, 10).options is None
        reference = architectures.fmnist_cnn(10)
        assert [tuple(p.shape) for p in architectures.plain_cnn(10).parameters()] == [
            tuple(p.shape) for p in reference.parameters()
        ]
    else:
        assert len(recipe.blocks) == {32: 3, 64: 4, 48: 3}[shape[1]] and recipe.blocks[0] == (48, 48)


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_lipschitz_loss_is_tau_cross_entropy_of_the_offset_logits(offset):
    """loss(z, y) = CE(tau (z - offset onehot(y)), y) / tau, written out with log-softmax."""
    recipe = lipschitz_training.Recipe(tau=4.5, offset=offset)
    z, y = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 10
    shifted = 4.5 * (z - offset * torch.eye(10)[y])
    expected = -shifted.log_softmax(dim=1)[torch.arange(64), y].mean() / 4.5
    assert float(lipschitz_training._criterion(recipe)(z, y)) == pytest.approx(float(expected), rel=1e-6)
    assert ("- 0.3 onehot(y)" in recipe.describe()["objective"]) == bool(offset)


def _train(data, role, out, seed=0, *extra):
    argv = ["train", "--data", str(data), "--role", role, "--out", str(out), "--device", "cpu",
            "--seed", str(seed), "--epochs", "2", "--threads", "1", *extra]  # fmt: skip
    assert cli.main(argv) == 0
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("role", ["standard", "lipschitz", "smoothing"])
def test_train_is_deterministic_and_writes_a_loadable_checkpoint_and_card(folder, tmp_path, role):
    extra = ["--certify-samples", "20"] if role == "smoothing" else []
    card = _train(folder, role, tmp_path / "a" / "m.pt", 0, *extra)
    again = _train(folder, role, tmp_path / "b" / "m.pt", 0, *extra)
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    assert card["metrics"] == again["metrics"]
    _train(folder, role, tmp_path / "c" / "m.pt", 1, *extra)
    assert (tmp_path / "a" / "m.pt").read_bytes() != (tmp_path / "c" / "m.pt").read_bytes()

    assert card["role"] == role and card["class_names"] == sorted(shapes.SHAPES)
    assert card["input"]["shape"] == [3, 16, 16] and card["metrics"]["images"] == 8
    assert card["data"]["held_out_per_class"] == [2, 2, 2, 2] and len(card["history"]) == 2
    assert all(epoch["seconds"] >= 0 for epoch in card["history"])
    assert ("certified_accuracy" in card["metrics"]) == (role != "standard")
    model = models.load_model(tmp_path / "a" / "m.pt")
    held_out = image_data.held_out_split(image_data.load(folder), 0.2, seed=0)[1]
    with torch.no_grad():
        accuracy = float((model(held_out.images).argmax(1) == held_out.labels).double().mean())
    assert accuracy == card["metrics"]["clean_accuracy"]


@pytest.mark.slow
def test_lipschitz_card_matches_an_independent_proof_and_survives_pgd(tmp_path):
    """The card's constant is core.lipschitz's on the loaded file; no l2 PGD inside 0.99 r flips a
    certified held-out image (r: h's own radius from the pairwise margin constants)."""
    data = shapes.write_npz(tmp_path / "shapes.npz", per_class=40, size=16, seed=2)
    card = _train(data, "lipschitz", tmp_path / "h.pt", 0, "--val-fraction", "0.25")
    h = models.load_model(tmp_path / "h.pt")
    bound, margins = lipschitz.lipschitz_constants(h, (3, 16, 16))
    assert bound == pytest.approx(card["metrics"]["lipschitz_bound"], rel=1e-9)
    held_out = image_data.held_out_split(image_data.load(data), 0.25, seed=0)[1]
    with torch.no_grad():
        logits = h(held_out.images)
    radius = certify.lipschitz_logit_radius(logits, 1.0, bound, margins)
    certified = (radius > 0) & (logits.argmax(1) == held_out.labels)
    assert certified.any()
    for index in torch.nonzero(certified).flatten()[:10].tolist():
        x, y = held_out.images[index : index + 1], held_out.labels[index : index + 1]
        config = PGDConfig("l2", 0.99 * float(radius[index]), 20)
        attacked = pgd(h, x, y, config, torch.Generator().manual_seed(index))
        assert (attacked - x).norm() <= config.eps * (1 + 1e-5)
        with torch.no_grad():
            assert torch.equal(h(attacked).argmax(1), y)


@pytest.mark.slow
def test_a_torchvision_g_trains_by_name_and_loads_back(folder, tmp_path):
    """--arch resnet18: torchvision's network, sized to the classes; the checkpoint rebuilds it from its name alone
    (models.load_model) and computes the card's held-out accuracy."""
    card = _train(folder, "standard", tmp_path / "g.pt", 0, "--arch", "resnet18")
    assert "resnet18" in json.dumps(card) and card["input"]["shape"] == [3, 16, 16]
    model = models.load_model(tmp_path / "g.pt")
    assert type(model).__name__ == "ResNet" or any(type(m).__name__ == "ResNet" for m in model.modules())
    held_out = image_data.held_out_split(image_data.load(folder), 0.2, seed=0)[1]
    with torch.no_grad():
        logits = model(held_out.images)
    assert logits.shape == (len(held_out.labels), len(shapes.SHAPES))
    assert float((logits.argmax(1) == held_out.labels).double().mean()) == card["metrics"]["clean_accuracy"]
