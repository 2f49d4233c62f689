"""Frame statistics: exact formulas; on made-up frames, uniform p-values while clean and a quick shift alarm
once the frames go through JPEG (the corruption no model score sees on Fashion-MNIST)."""

import numpy as np
import pytest
import torch

from mix_perception.core import ood, stream_shift
from mix_perception.core.frame_statistics import STATISTICS, frame_statistics
from mix_perception.experiments import ood_data


def garments(n: int, seed: int) -> torch.Tensor:
    """n made-up frames (n, 1, 28, 28) on 8-bit grey levels: a textured rectangle of random size, place and
    brightness, edges smoothed, on an exactly black background (as Fashion-MNIST's)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    size = torch.randint(8, 22, (n, 2), generator=generator)
    corner = torch.randint(0, 6, (n, 2), generator=generator)
    level = 0.3 + 0.6 * torch.rand(n, generator=generator)
    texture = 0.1 * torch.randn(n, 28, 28, generator=generator)
    for i in range(n):
        (height, width), (top, left) = size[i].tolist(), corner[i].tolist()
        x[i, 0, top : top + height, left : left + width] = level[i] + texture[i, :height, :width]
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    return (x.clamp(0, 1) * 255).round() / 255


def test_statistics_follow_their_formulas():
    pixels = np.array([[0, 0, 3, 255], [0, 9, 128, 255], [1, 8, 64, 200], [0, 0, 0, 7]]) / 255.0
    x = torch.tensor(np.stack([pixels, pixels.T])[:, None], dtype=torch.float32)
    stats = frame_statistics(x)
    assert stats.shape == (2, len(STATISTICS)) and stats.dtype == torch.float64
    inner = pixels[1:-1, 1:-1]  # the interior pixels, and their neighbours:
    right, down, left, up = pixels[1:-1, 2:], pixels[2:, 1:-1], pixels[1:-1, :-2], pixels[:-2, 1:-1]
    expected = [
        6 / 16,  # dark: the exact zeros
        4 / 16,  # near_dark: 3, 1, 8 and 7 grey levels (9 is above 8.5)
        2 / 16,  # bright: the 255s
        pixels.mean(),
        pixels.std(),
        ((right - inner) ** 2).mean() + ((down - inner) ** 2).mean(),
        ((4 * inner - right - down - left - up) ** 2).mean(),
    ]
    assert stats[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert stats[1].tolist() == pytest.approx(expected, rel=1e-5)  # all of them are symmetric in the axes


def test_statistics_refuse_frames_too_small_or_not_batched():
    for shape in ((1, 1, 2, 5), (1, 28, 28)):
        with pytest.raises(ValueError, match="frame statistics need frames"):
            frame_statistics(torch.zeros(shape))


@pytest.fixture(scope="module")
def fitted():
    """The Gaussian of the statistics of 2,000 made-up frames and the distances of 500 others (the reference)."""
    statistics = ood.fit_input_statistics(frame_statistics(garments(2000, 0)))
    return statistics, statistics.score(frame_statistics(garments(500, 1)))


def test_p_values_of_clean_frames_are_uniform(fitted):
    statistics, reference = fitted
    p = ood.conformal_p_values(reference, statistics.score(frame_statistics(garments(2000, 2))))
    for u in (0.01, 0.05, 0.2, 0.5):
        tolerance = 4 * np.sqrt(u * (1 - u) * (1 / 500 + 1 / 2000))  # the reference's and the frames' draws
        assert abs((p <= u).double().mean().item() - u) < tolerance


def test_a_camera_switched_to_jpeg_is_flagged_quickly_and_a_clean_one_is_not(fitted):
    statistics, reference = fitted
    threshold = stream_shift.threshold_for_rate(0.05, 30.0)  # half the monitor's 0.1 per hour
    clean = garments(2000, 3)
    jpeg = ood_data.corrupt(clean[:200], "jpeg", severity=3)
    p_clean, p_jpeg = (ood.conformal_p_values(reference, statistics.score(frame_statistics(x))) for x in (clean, jpeg))
    assert p_jpeg.median() < 0.01 < p_clean.median()
    alarms = stream_shift.run_detector(torch.cat([p_clean, p_jpeg]).numpy(), threshold, lam=0.9)
    assert len(alarms) > 0 and len(clean) <= alarms[0] < len(clean) + 100


def test_a_grey_frame_in_three_channels_has_the_statistics_of_its_one_channel():
    grey = garments(4, 5)
    assert torch.allclose(frame_statistics(grey.repeat(1, 3, 1, 1)), frame_statistics(grey), atol=1e-6)
