"""Low-level statistics of a frame as the model sees it: the sensor-health signal of the stream-shift test.

Model scores miss some changes of the camera: JPEG artefacts at quality 58 hardly change what g or h
make of a 28 x 28 Fashion-MNIST frame (docs/results/safety), but they do change the pixels: ringing
lifts the background, which is exactly 0 in the training frames, to a few grey levels. Per frame
x (C, H, W), pixels in [0, 1] (the model input; the statistics assume no input normalization):

    dark       fraction of pixels < 0.5/255 (below half an 8-bit grey level: "exactly 0")
    near_dark  fraction in [0.5/255, 8.5/255) (1-8 grey levels: JPEG ringing, noise, blur on a black background)
    bright     fraction >= 254.5/255 ("exactly 1": saturation)
    mean, std  of all pixels
    gradient   mean over interior pixels of the squared differences to the right and lower neighbours (edges)
    laplacian  mean over interior pixels of the squared 4-neighbour Laplacian (high-frequency energy)

(interior: not on the border; the three energies are one 3 x 3 convolution per channel, averaged over
channels.) core.ood.OODModel keeps a Gaussian model of these statistics (one mean, a shared precision:
the Mahalanobis distance of core.ood with one class) and the distances of in-distribution reference
frames; the conformal p-value of a frame's distance is the mixer's `input_shift_p_value`. Own code: a few
batched torch operations; no library computes exactly these.
"""

import functools

import torch

STATISTICS = ("dark", "near_dark", "bright", "mean", "std", "gradient", "laplacian")
LEVEL = 1.0 / 255.0  # one 8-bit grey level
EDGES = torch.tensor([0.5 * LEVEL, 8.5 * LEVEL, 1.0 - 0.5 * LEVEL])  # dark | near_dark | ... | bright
KERNELS = torch.tensor(  # to the right, downwards, the 4-neighbour Laplacian
    [
        [[0.0, 0.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0]],
        [[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]],
    ]
).unsqueeze(1)
# STATISTICS = raw @ FROM_RAW + OFFSET for raw = (fractions below the three EDGES, mean, std, the three energies):
# dark = below_0, near_dark = below_1 - below_0, bright = 1 - below_2, gradient = right + down energy.
FROM_RAW = torch.tensor(  # rows: below_0, below_1, below_2, mean, std, right, down, laplacian energy
    [
        [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ],
    dtype=torch.float64,
)
OFFSET = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)


def frame_statistics(x: torch.Tensor) -> torch.Tensor:
    """The STATISTICS of frames x (N, C, H, W) with H, W >= 3: (N, len(STATISTICS)) float64."""
    raw = raw_statistics(x).double()
    return torch.addmm(OFFSET.to(x.device), raw, FROM_RAW.to(x.device))


def raw_statistics(x: torch.Tensor) -> torch.Tensor:
    """The raw moments of frames x (N, C, H, W) with H, W >= 3, in x's dtype: (N, 8), STATISTICS = raw @ FROM_RAW +
    OFFSET. Few batched torch operations (the mixer calls it on every batch: per-call overhead is most of its cost
    at batch 1; core.ood folds FROM_RAW and OFFSET into its Mahalanobis statistics)."""
    if x.ndim != 4 or min(x.shape[-2:]) < 3:
        raise ValueError(f"frame statistics need frames (N, C, H, W) with H, W >= 3, got {tuple(x.shape)}")
    n, channels, height, width = x.shape
    edges, kernels = _constants(x.device, x.dtype)
    flat = x.reshape(n, -1)
    below = (flat.unsqueeze(2) < edges).mean(1, dtype=x.dtype)  # (N, 3): fractions below each edge
    std, mean = torch.std_mean(flat, 1, keepdim=True, correction=0)
    planes = torch.conv2d(x.reshape(n * channels, 1, height, width), kernels)
    energy = planes.square().reshape(n, channels, 3, -1).mean((1, 3))  # (N, 3), averaged over pixels and channels
    return torch.cat((below, mean, std, energy), 1)


@functools.cache
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """EDGES and KERNELS on `device` in `dtype`, made once (a copy per call is a noticeable share at batch 1)."""
    return EDGES.to(device, dtype), KERNELS.to(device, dtype)
