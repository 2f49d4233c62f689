"""Low-level statistics of a frame as the model sees it: the sensor-health signal of the stream-shift test.

Model scores miss some changes of the camera: JPEG artefacts at quality 58 hardly change what g or h
make of a 28 x 28 Fashion-MNIST frame (docs/results/safety), but they do change the pixels: ringing
lifts the background, which is exactly 0 in the training frames, to a few grey levels. Per frame
x (C, H, W), pixels in [0, 1] (the model input; the statistics assume no input normalization):

    dark       fraction of pixels < 0.5/255 (below half an 8-bit grey level: "exactly 0")
    near_dark  fraction in [0.5/255, 8.5/255) (1-8 grey levels: JPEG ringing, noise, blur on a black background)
    bright     fraction > 254.5/255 ("exactly 1": saturation)
    mean, std  of all pixels
    gradient   mean of the squared differences of horizontal and vertical neighbours (edge energy)
    laplacian  mean square of the 4-neighbour Laplacian over interior pixels (high-frequency energy)

core.ood.OODModel keeps a Gaussian model of these statistics (one mean, a shared precision: the
Mahalanobis distance of core.ood with one class) and the distances of in-distribution reference frames;
the conformal p-value of a frame's distance is the mixer's `input_shift_p_value`. Own code: seven
reductions of torch; no library computes exactly these.
"""

import torch

STATISTICS = ("dark", "near_dark", "bright", "mean", "std", "gradient", "laplacian")
LEVEL = 1.0 / 255.0  # one 8-bit grey level


def frame_statistics(x: torch.Tensor) -> torch.Tensor:
    """The STATISTICS of frames x (N, C, H, W) with H, W >= 3: (N, len(STATISTICS)) float64."""
    if x.ndim != 4 or min(x.shape[-2:]) < 3:
        raise ValueError(f"frame statistics need frames (N, C, H, W) with H, W >= 3, got {tuple(x.shape)}")
    x = x.float()
    flat = x.flatten(1)
    horizontal = x[..., :, 1:] - x[..., :, :-1]
    vertical = x[..., 1:, :] - x[..., :-1, :]
    centre = x[..., 1:-1, 1:-1]
    laplacian = 4 * centre - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    columns = (
        (flat < 0.5 * LEVEL).float().mean(1),
        ((flat >= 0.5 * LEVEL) & (flat < 8.5 * LEVEL)).float().mean(1),
        (flat > 1.0 - 0.5 * LEVEL).float().mean(1),
        flat.mean(1),
        flat.std(1, correction=0),
        horizontal.square().flatten(1).mean(1) + vertical.square().flatten(1).mean(1),
        laplacian.square().flatten(1).mean(1),
    )
    return torch.stack(columns, 1).double()
