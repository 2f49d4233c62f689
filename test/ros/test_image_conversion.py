"""sensor_msgs/Image <-> numpy: every supported encoding round-trips; every malformed field is an ImageError."""

import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from mix_perception.ros.image_conversion import (
    ENCODINGS,
    FrameConverter,
    ImageError,
    InputSpec,
    array_to_image,
    compressed_to_array,
    frame_pixels,
    image_to_array,
)

RNG = np.random.default_rng(0)


def random_pixels(encoding, height=5, width=7):
    layout = ENCODINGS[encoding]
    shape = (height, width, layout.channels)
    if layout.dtype == "u1":
        return RNG.integers(0, 256, shape, dtype=np.uint8)
    if layout.dtype == "u2":
        return RNG.integers(0, 65536, shape, dtype=np.uint16)
    return RNG.random(shape).astype(layout.dtype)


def raw(encoding, width, height, step, data, bigendian=0):
    msg = Image()
    msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian = encoding, width, height, step, bigendian
    msg.data = bytes(data)
    return msg


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_round_trips(encoding):
    pixels = random_pixels(encoding)
    msg = array_to_image(pixels, encoding)
    assert msg.step == pixels.shape[1] * pixels.shape[2] * pixels.itemsize
    np.testing.assert_array_equal(image_to_array(msg), pixels)


def test_padded_rows_are_cropped():
    pixels = random_pixels("rgb8", 4, 3)
    padded = np.zeros((4, 16), dtype=np.uint8)
    padded[:, :9] = pixels.reshape(4, 9)
    msg = raw("rgb8", 3, 4, 16, padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), pixels)


def test_big_endian_mono16():
    pixels = np.array([[1, 256, 65535]], dtype=">u2")
    msg = raw("mono16", 3, 1, 6, pixels.tobytes(), bigendian=1)
    np.testing.assert_array_equal(image_to_array(msg)[:, :, 0], pixels.astype(np.uint16))


@pytest.mark.parametrize(
    "msg, code",
    [
        (raw("yuv422_weird", 2, 2, 4, b"\0" * 8), "unknown_encoding"),
        (raw("mono8", 0, 2, 0, b""), "zero_size"),
        (raw("mono8", 2, 0, 2, b""), "zero_size"),
        (raw("rgb8", 4, 2, 6, b"\0" * 12), "bad_step"),  # step < 4 pixels x 3 bytes
        (raw("mono16", 3, 1, 7, b"\0" * 7), "bad_step"),  # not a multiple of 2
        (raw("mono8", 4, 4, 4, b"\0" * 10), "bad_size"),  # truncated
        (raw("mono8", 4, 4, 4, b"\0" * 20), "bad_size"),  # trailing bytes
        (raw("32FC1", 2, 1, 8, np.array([0.5, np.nan], dtype=np.float32).tobytes()), "non_finite"),
        (raw("32FC1", 2, 1, 8, np.array([np.inf, 0.0], dtype=np.float32).tobytes()), "non_finite"),
    ],
)
def test_malformed_images_raise(msg, code):
    with pytest.raises(ImageError) as caught:
        image_to_array(msg)
    assert caught.value.code == code
    assert code in str(caught.value)


def test_too_large_is_rejected_before_reading_data():
    msg = raw("mono8", 100_000, 100_000, 100_000, b"")
    with pytest.raises(ImageError) as caught:
        image_to_array(msg, max_pixels=4096 * 4096)
    assert caught.value.code == "too_large"


def test_colour_orders_agree_and_grey_is_bt601_luma():
    rgb = random_pixels("rgb8")
    convert = FrameConverter(InputSpec(channels=3, size=None))
    from_rgb = convert(rgb, "rgb")
    from_bgr = convert(rgb[:, :, ::-1].copy(), "bgr")
    torch.testing.assert_close(from_rgb, from_bgr)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    torch.testing.assert_close(convert(rgba, "rgb"), from_rgb)
    grey = FrameConverter(InputSpec(channels=1, size=None))(rgb, "rgb")
    expected = (rgb.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    torch.testing.assert_close(grey[0, 0], torch.from_numpy(expected), rtol=1e-5, atol=1e-6)


def test_scaling_resizing_and_normalization():
    mono16 = np.full((56, 56, 1), 65535, dtype=np.uint16)
    tensor = FrameConverter(InputSpec(channels=1, size=(28, 28)))(mono16, "mono")
    assert tensor.shape == (1, 1, 28, 28) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.ones_like(tensor))
    grey = np.full((28, 28, 1), 0.25, dtype=np.float32)
    normalized = InputSpec(channels=3, size=(28, 28), mean=(0.25,) * 3, std=(0.5,) * 3)
    rgb = FrameConverter(normalized)(grey, "mono")
    assert rgb.shape == (1, 3, 28, 28)
    torch.testing.assert_close(rgb, torch.zeros_like(rgb))


def convert_first(pixels: np.ndarray, order: str, spec: InputSpec) -> torch.Tensor:
    """Reference: scale to [0, 1], RGB order, luma or grey repeated, normalize, and only then resize."""
    unit = pixels[:, :, :3].astype(np.float64) / (np.iinfo(pixels.dtype).max if pixels.dtype.kind == "u" else 1.0)
    unit = unit[:, :, ::-1] if order == "bgr" else unit
    if spec.channels == 1 and unit.shape[2] == 3:
        unit = unit @ np.array([0.299, 0.587, 0.114])[:, None]
    unit = np.repeat(unit, spec.channels // unit.shape[2], axis=2)
    if spec.mean:
        unit = (unit - np.array(spec.mean)) / np.array(spec.std)
    tensor = torch.from_numpy(np.ascontiguousarray(unit)).permute(2, 0, 1).unsqueeze(0).float()
    return torch.nn.functional.interpolate(tensor, size=spec.size, mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize(
    "encoding, spec",
    [
        ("bgr8", InputSpec(channels=1, size=(28, 28))),
        ("rgba8", InputSpec(channels=3, size=(32, 24), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))),
        ("mono16", InputSpec(channels=3, size=(28, 28))),
    ],
)
def test_resizing_first_gives_the_input_of_converting_first(encoding, spec):
    """A VGA frame: the converter resizes before scaling, reordering, luma and normalization (all affine
    per pixel), and must give what converting first gives, to float rounding."""
    layout = ENCODINGS[encoding]
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, np.iinfo(layout.dtype).max, (480, 640, layout.channels)).astype(layout.dtype)
    got = FrameConverter(spec)(pixels, layout.order)
    torch.testing.assert_close(got, convert_first(pixels, layout.order, spec), rtol=1e-4, atol=1e-5)


def png_message(array, mode):
    buffer = io.BytesIO()
    PILImage.fromarray(array, mode=mode).save(buffer, format="PNG")
    msg = CompressedImage(format="png")
    msg.data = buffer.getvalue()
    return msg


def test_compressed_png_decodes_like_the_raw_image():
    grey = random_pixels("mono8", 6, 9)
    pixels, encoding = compressed_to_array(png_message(grey[:, :, 0], "L"))
    assert encoding == "mono8"
    np.testing.assert_array_equal(pixels, grey)
    rgb = random_pixels("rgb8", 6, 9)
    pixels, encoding = compressed_to_array(png_message(rgb, "RGB"))
    assert encoding == "rgb8"
    np.testing.assert_array_equal(pixels, rgb)
    convert = FrameConverter(InputSpec(channels=1, size=(28, 28)))
    from_png = convert(*frame_pixels(png_message(grey[:, :, 0], "L")))
    torch.testing.assert_close(from_png, convert(*frame_pixels(array_to_image(grey, "mono8"))))
    assert frame_pixels(png_message(rgb, "RGB"))[1] == "rgb" and frame_pixels(array_to_image(rgb, "bgr8"))[1] == "bgr"


@pytest.mark.parametrize("data, code", [(b"", "zero_size"), (b"\x89PNG garbage", "decode_failed")])
def test_broken_compressed_images_raise(data, code):
    msg = CompressedImage(format="png")
    msg.data = data
    with pytest.raises(ImageError) as caught:
        compressed_to_array(msg)
    assert caught.value.code == code


def test_compressed_size_limit_checked_from_the_header():
    big = png_message(np.zeros((300, 300), dtype=np.uint8), "L")
    with pytest.raises(ImageError) as caught:
        compressed_to_array(big, max_pixels=10_000)
    assert caught.value.code == "too_large"
