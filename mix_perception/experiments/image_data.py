"""A user's labelled images for `mix-perception train`: an image folder or an .npz, and its held-out split.

Two layouts are read:
- an image folder as torchvision's ImageFolder has it: one subfolder per class (class names = the
  subfolder names, sorted; class id = index), PNG or JPEG files inside (read with Pillow; other files
  are skipped and counted);
- an .npz with "images" (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3}, uint8 in [0, 255] or
  float in [0, 1], and "labels" (N,) integers 0..K-1; optional "class_names" (K,) strings. Read
  with allow_pickle=False.
The result is float32 pixels in [0, 1] of shape (N, C, H, W) and int64 labels. `size` (H, W) resizes
every image (bilinear); without it all images must have one size. `channels` converts grey <-> RGB
(Pillow's "L" is ITU-R 601 luma); without it the data decide (1 when every image is grey). Written
here rather than with torchvision's ImageFolder because it needs no torchvision (an optional
dependency), reads .npz as well, and must turn every bad input into one DataError line.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from mix_perception.experiments.data import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageSet(NamedTuple):
    """images (N, C, H, W) float32 in [0, 1]; labels (N,) int64 class ids; class_names (K,) strings;
    source: where the images came from (for the model card)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list
    source: dict


def load(path, size=None, channels: int | None = None) -> ImageSet:
    """The image folder or .npz at `path`, resized to `size` (H, W) and converted to `channels` when given.

    Raises DataError (one line) for a missing path, fewer than two classes, an empty class, mixed
    image sizes without `size`, an unreadable image, or an .npz without "images" and "labels".
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        result = _load_folder(path, size, channels)
    elif path.suffix.lower() == ".npz":
        result = _load_npz(path, size, channels)
    else:
        raise DataError(f"{path}: expected an image folder (one subfolder per class) or an .npz file")
    counts = torch.bincount(result.labels, minlength=len(result.class_names))
    if len(result.class_names) < 2:
        raise DataError(f"{path}: found {len(result.class_names)} class, a classifier needs at least 2")
    if (counts == 0).any():
        empty = [result.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        raise DataError(f"{path}: class {empty[0]!r} has no images")
    return result


def _read_image(file: Path, channels: int | None):
    """A Pillow image of `file`, fully decoded, in mode "L" or "RGB" (`channels` 1 / 3, else as stored)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{file}: cannot read the image ({' '.join(str(error).split())})") from None


def _load_folder(root: Path, size, channels: int | None) -> ImageSet:
    """ImageSet of an ImageFolder layout (see the module docstring)."""
    from PIL import Image

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    pictures, labels, skipped = [], [], 0
    for label, folder in enumerate(class_dirs):
        for file in sorted(folder.rglob("*")):
            if not file.is_file():
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            pictures.append((file, _read_image(file, channels)))
            labels.append(label)
    if not pictures:
        raise DataError(f"{root}: no PNG or JPEG images in one subfolder per class")
    if channels is None:
        channels = 1 if all(picture.mode == "L" for _, picture in pictures) else 3
    arrays = []
    for file, picture in pictures:
        picture = picture.convert("L" if channels == 1 else "RGB")
        if size is not None:
            picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif picture.size != pictures[0][1].size:
            first, (w, h), (w0, h0) = pictures[0][0], picture.size, pictures[0][1].size
            raise DataError(f"{file} is {w}x{h} but {first} is {w0}x{h0}: give --size H W to resize them all")
        arrays.append(np.asarray(picture, dtype=np.uint8).reshape(picture.size[1], picture.size[0], channels))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    source = {"path": str(root), "kind": "image folder", "files": len(pictures), "skipped_files": skipped}
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), [d.name for d in class_dirs], source)


def _npz_images(path: Path, images: np.ndarray) -> torch.Tensor:
    """images (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}, uint8 or float in [0, 1] ->
    float32 (N, C, H, W) in [0, 1]; DataError otherwise."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 or float in [0, 1]")
    if not (np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0):
        raise DataError(f"{path}: float 'images' must lie in [0, 1]")
    return torch.from_numpy(images.astype(np.float32))


def _npz_labels(path: Path, labels: np.ndarray, count: int) -> torch.Tensor:
    """labels (N,) non-negative integers -> int64 tensor; DataError otherwise."""
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {count} integers (one per image), got {labels.dtype} {labels.shape}")
    if count and labels.min() < 0:
        raise DataError(f"{path}: 'labels' must be class ids >= 0, found {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def _load_npz(path: Path, size, channels: int | None) -> ImageSet:
    """ImageSet of an .npz (see the module docstring)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("images", "labels") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: no {' and no '.join(repr(k) for k in missing)} array (has {archive.files})")
            arrays = {key: archive[key] for key in archive.files if key in ("images", "labels", "class_names")}
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the .npz ({' '.join(str(error).split())})") from None
    images = _npz_images(path, arrays["images"])
    labels = _npz_labels(path, arrays["labels"], images.shape[0])
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    names = [str(name) for name in arrays.get("class_names", range(num_classes))]
    if len(names) < num_classes:
        raise DataError(f"{path}: 'class_names' has {len(names)} names but the labels go up to {num_classes - 1}")
    if channels is not None and channels != images.shape[1]:
        images = _convert_channels(images, channels)
    if size is not None and tuple(size) != tuple(images.shape[2:]):
        images = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True).clamp(0.0, 1.0)
    return ImageSet(images.contiguous(), labels, names, {"path": str(path), "kind": "npz", "files": 1})


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey (N, 1, H, W) -> RGB by repetition, RGB (N, 3, H, W) -> grey by ITU-R 601 luma (as Pillow's "L")."""
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def held_out_split(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(train, held-out): per class, round(fraction * n) images (at least 1, at most n - 1) drawn with a
    torch.Generator seeded with `seed` go to held-out. DataError when a class has fewer than 2 images."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(data.labels), dtype=torch.bool)
    for label, name in enumerate(data.class_names):
        members = torch.nonzero(data.labels == label).flatten()
        if len(members) < 2:
            raise DataError(f"class {name!r} has {len(members)} image: a held-out split needs >= 2 (or give --val)")
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return _subset(data, ~held, "train"), _subset(data, held, f"held-out ({fraction:g} per class, seed {seed})")


def _subset(data: ImageSet, mask: torch.Tensor, part: str) -> ImageSet:
    source = {**data.source, "part": part, "images": int(mask.sum())}
    return ImageSet(data.images[mask], data.labels[mask], data.class_names, source)


def check_compatible(train: ImageSet, held_out: ImageSet) -> None:
    """DataError unless the held-out set has the training set's class names and image shape."""
    if held_out.class_names != train.class_names:
        raise DataError(f"--val classes {held_out.class_names} differ from the training classes {train.class_names}")
    if held_out.images.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f"--val images are {tuple(held_out.images.shape[1:])}, training images {tuple(train.images.shape[1:])}"
        )
