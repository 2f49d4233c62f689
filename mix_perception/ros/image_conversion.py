"""sensor_msgs/Image and CompressedImage <-> numpy arrays, without cv_bridge.

`image_to_array` returns an (H, W, C) array in the message's own channel order and dtype, after
checking every field that can be wrong (encoding, width/height, step, data length, endianness,
size limit); anything unusable raises `ImageError` with a short machine-readable `code` and a
human-readable message. `FrameConverter` turns that into the float (1, C, H, W) tensor a model
takes: resized, pixels scaled to [0, 1] (uint8 / 255, uint16 / 65535, floats taken as they are),
channels brought to RGB order (or luma for one-channel models) and normalized, on the model's device.
"""

import warnings
from typing import NamedTuple

import numpy as np

from mix_perception.core.preprocessing_bounds import (
    FrameBound,
    LinearPreprocessing,
    PreprocessingBound,
    preprocessing_bound,
    unbounded,
)

MAX_PIXELS_DEFAULT = 4096 * 4096


class ImageError(ValueError):
    """A frame that cannot be used. `code` is one word for counting and logs (e.g. "bad_step")."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Encoding(NamedTuple):
    """How an encoding lays out a pixel: numpy dtype, channel count, channel order ("rgb", "bgr", "mono")."""

    dtype: str
    channels: int
    order: str


ENCODINGS = {
    "rgb8": Encoding("u1", 3, "rgb"),
    "bgr8": Encoding("u1", 3, "bgr"),
    "rgba8": Encoding("u1", 4, "rgb"),
    "bgra8": Encoding("u1", 4, "bgr"),
    "rgb16": Encoding("u2", 3, "rgb"),
    "bgr16": Encoding("u2", 3, "bgr"),
    "rgba16": Encoding("u2", 4, "rgb"),
    "bgra16": Encoding("u2", 4, "bgr"),
    "mono8": Encoding("u1", 1, "mono"),
    "mono16": Encoding("u2", 1, "mono"),
    "8UC1": Encoding("u1", 1, "mono"),
    "8UC3": Encoding("u1", 3, "bgr"),  # OpenCV's default order
    "8UC4": Encoding("u1", 4, "bgr"),
    "16UC1": Encoding("u2", 1, "mono"),
    "32FC1": Encoding("f4", 1, "mono"),
    "32FC3": Encoding("f4", 3, "bgr"),
    "64FC1": Encoding("f8", 1, "mono"),
}

SUPPORTED_ENCODINGS = tuple(ENCODINGS)

# ITU-R BT.601 luma weights for R, G, B.
LUMA = (0.299, 0.587, 0.114)

# float32 roundings on a pixel's path through FrameConverter after the resize, at most: float64 -> float32 (1),
# x scale (2: the constant, the product), luma (4: a constant, a product, two sums), (x - mean) / std (4).
CHANNEL_ROUNDINGS = 11


def image_to_array(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Validate a sensor_msgs/Image and return its pixels as an (H, W, C) array (a view where possible).

    Checks: known encoding; 0 < width, height and width * height <= max_pixels; step >= width *
    bytes per pixel; len(data) >= step * height (extra trailing bytes are an error too, as a sign of
    a wrong width/step); float pixels finite. Byte order follows `is_bigendian`.
    """
    encoding = ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise ImageError(
            "unknown_encoding", f"encoding {msg.encoding!r} is not one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width <= 0 or height <= 0:
        raise ImageError("zero_size", f"image is {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_large", f"image is {width}x{height}, more than {max_pixels} pixels")
    dtype = np.dtype(encoding.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * encoding.channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(
            "bad_step", f"step {step} < width {width} x {encoding.channels * dtype.itemsize} bytes per pixel"
        )
    if step % dtype.itemsize:
        raise ImageError("bad_step", f"step {step} is not a multiple of the {dtype.itemsize}-byte channel size")
    data = msg.data
    size = len(data)
    if size != step * height:
        raise ImageError("bad_size", f"data has {size} bytes, expected step {step} x height {height} = {step * height}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    rows = buffer.reshape(height, step)[:, :row_bytes]
    pixels = rows.view(dtype) if row_bytes == step else np.ascontiguousarray(rows).view(dtype)
    pixels = pixels.reshape(height, width, encoding.channels)
    if dtype.kind == "f" and not np.isfinite(pixels).all():
        raise ImageError("non_finite", "float image holds NaN or infinite values")
    return pixels


def array_to_image(array: np.ndarray, encoding: str, header=None):
    """Build a sensor_msgs/Image from an (H, W) or (H, W, C) array already laid out as `encoding`."""
    from sensor_msgs.msg import Image

    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise ImageError("unknown_encoding", f"encoding {encoding!r} is not supported")
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != layout.channels:
        raise ImageError(
            "bad_shape", f"array of shape {array.shape} does not fit {encoding} ({layout.channels} channels)"
        )
    array = np.ascontiguousarray(array, dtype=np.dtype(layout.dtype).newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * array.shape[2] * array.itemsize)
    msg.data = array.tobytes()
    return msg


def compressed_to_array(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (jpeg, png, ...) with Pillow: returns ((H, W, C) uint8, encoding).

    The size is checked from the file header before any pixel is decoded (no decompression bombs).
    Returns mono8 for grayscale images and rgb8 otherwise (alpha dropped).
    """
    import io

    try:
        from PIL import Image as PILImage
    except ImportError as error:  # pragma: no cover - Pillow is a dependency where compressed input is used
        raise ImageError("no_decoder", "Pillow is not installed; compressed images cannot be decoded") from error
    if len(msg.data) == 0:
        raise ImageError("zero_size", "compressed image has no data")
    try:
        with PILImage.open(io.BytesIO(bytes(msg.data))) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError("zero_size", f"image is {width}x{height}")
            if width * height > max_pixels:
                raise ImageError("too_large", f"image is {width}x{height}, more than {max_pixels} pixels")
            grey = image.mode in ("L", "1", "I;16", "I", "F")
            image = image.convert("L" if grey else "RGB")
            array = np.asarray(image)
    except ImageError:
        raise
    except Exception as error:  # Pillow raises many types for broken files
        raise ImageError("decode_failed", f"cannot decode {msg.format!r} data: {error}") from error
    if grey:
        return array[:, :, None], "mono8"
    return array, "rgb8"


class InputSpec(NamedTuple):
    """What the model takes: `channels` (1 or 3), `size` (H, W) or None to keep the frame's size,
    per-channel `mean` and `std` applied after scaling to [0, 1] (empty: no normalization)."""

    channels: int = 1
    size: tuple[int, int] | None = (28, 28)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def resize(tensor, size, antialias: bool):
    """Bilinear resize of (N, C, H, W) to `size` (H', W'): the one call FrameConverter and its operator make."""
    import torch

    return torch.nn.functional.interpolate(
        tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias
    )


class FrameConverter:
    """A frame's pixels -> the model input: float32 tensor (1, spec.channels, H', W') on `device`.

    The frame is resized first (bilinear, antialiased when shrinking), in its own channels and pixel
    scale. Every later step is an affine map per pixel — scaling to [0, 1] (uint8 / 255, uint16 / 65535,
    floats as they are), RGB order, BT.601 luma for one-channel models, (x - mean) / std — and the
    resize weights sum to 1, so the result equals converting first, to float rounding, at a fraction of
    the cost for a large frame. The luma weights and the mean and std tensors are built once.

    The whole map is affine in the frame's [0, 1] pixels: `operator` describes it, `frame_bound` gives the
    l2 bound (core.preprocessing_bounds) that turns a radius on the model input into one on the frame.
    """

    def __init__(self, spec: InputSpec, device="cpu"):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.luma = torch.tensor(LUMA, device=self.device).view(1, 3, 1, 1)
        self.mean = self.std = None
        if spec.mean:
            self.mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(spec.std, device=self.device).view(1, -1, 1, 1)
        self.bounds: dict[tuple, FrameBound | PreprocessingBound] = {}

    def __call__(self, pixels: np.ndarray, order: str):
        """(H, W, C) pixels in channel `order` ("rgb", "bgr", "mono"; a 4th channel is alpha, dropped)."""
        import torch

        scale = 1.0 / np.iinfo(pixels.dtype).max if pixels.dtype.kind == "u" else 1.0
        if pixels.dtype != np.uint8:  # uint16, floats, big-endian: torch takes float32 in native order
            pixels = pixels.astype(np.float32)
        with warnings.catch_warnings():  # a decoded frame is read-only; it is only read: each step makes a new tensor
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(pixels))
        return self.convert_tensor(tensor.to(self.device).permute(2, 0, 1).unsqueeze(0), scale, order)

    def convert_tensor(self, tensor, scale: float, order: str):
        """(N, C, H, W) pixels (x scale: [0, 1]) -> model input (N, spec.channels, H', W'); differentiable
        (attacks in a frame's pixels go through it)."""
        tensor = tensor[:, :3].float()
        antialias = self._antialias(*tensor.shape[-2:])
        if antialias is not None:
            tensor = resize(tensor, self.spec.size, antialias)
        return self._pixel_steps(tensor * scale, order)

    def _antialias(self, height: int, width: int) -> bool | None:
        """None: a frame of this size is not resized; else whether its resize antialiases (when shrinking)."""
        size = self.spec.size
        if size is None or (height, width) == tuple(size):
            return None
        return height > size[0] or width > size[1]

    def _pixel_steps(self, tensor, order: str):
        """[0, 1] pixels (N, C, H, W) -> model input: RGB order, spec.channels, (x - mean) / std."""
        if order == "bgr":
            tensor = tensor.flip(1)
        tensor = self._channels(tensor)
        if self.mean is not None:
            tensor = (tensor - self.mean) / self.std
        return tensor

    def operator(self, height: int, width: int, channels: int, order: str) -> LinearPreprocessing:
        """This converter's affine map of a (height, width, channels) frame in `order`, [0, 1] pixels -> model
        input: the channel map from unit pixels through `_pixel_steps` (in float64, with the constants that
        run), each resize axis from unit vectors through `resize` (in float32: the weights that run).
        ImageError bad_channels as the conversion."""
        import torch

        basis = torch.eye(channels, dtype=torch.float64, device=self.device).view(channels, channels, 1, 1)[:, :3]
        zero = self._pixel_steps(torch.zeros_like(basis[:1]), order)
        channel_map = (self._pixel_steps(basis, order) - zero)[:, :, 0, 0].T
        antialias = self._antialias(height, width)
        axes = None if antialias is None else (self._axis(height, 0, antialias), self._axis(width, 1, antialias))
        offset = zero.flatten().cpu().numpy()
        return LinearPreprocessing(channel_map.cpu().numpy(), offset, axes, CHANNEL_ROUNDINGS)

    def _axis(self, length: int, dim: int, antialias: bool) -> np.ndarray:
        """The resize matrix (spec.size[dim], length) of axis `dim` (0: rows, 1: columns): unit vectors along it,
        2 pixels along the other axis (torch's antialiased resize takes another path for a 1-pixel axis)."""
        import torch

        unit = torch.eye(length, device=self.device).view(length, 1, length, 1).expand(-1, -1, -1, 2)
        size = [self.spec.size[dim], 2]
        if dim == 1:
            unit, size = unit.transpose(2, 3), size[::-1]
        out = resize(unit.contiguous(), size, antialias)
        out = out[:, 0, :, 0] if dim == 0 else out[:, 0, 0, :]
        return out.T.double().cpu().numpy()

    def frame_bound(self, pixels: np.ndarray, order: str) -> FrameBound:
        """How a radius on the model input of these (H, W, C) pixels becomes one on the frame's own [0, 1]
        pixels: proven once per (size, channels, dtype, order), cached; float frames add their largest |pixel|.
        A kind it cannot bound gets an unbounded FrameBound with the reason (no certificate)."""
        key = (pixels.shape, pixels.dtype.str, order)
        bound = self.bounds.get(key)
        if bound is None:
            try:
                bound = self._checked_bound(pixels.shape, pixels.dtype, order)
            except Exception as error:  # noqa: BLE001 - a kind of frame that cannot be bounded gets no certificate
                bound = unbounded(f"cannot bound the conversion of {pixels.shape} {pixels.dtype} frames: {error}")
            self.bounds[key] = bound
        return bound if isinstance(bound, FrameBound) else bound.for_frame(float(np.abs(pixels).max()))

    def _checked_bound(self, shape, dtype: np.dtype, order: str) -> FrameBound | PreprocessingBound:
        """The bound of `operator` for frames of this kind, after converting a random one: a conversion the
        description misses by more than the rounding bound (a step that is not this affine map) is unbounded."""
        height, width, channels = shape
        operator = self.operator(height, width, channels, order)
        size = (height, width) if operator.resize is None else self.spec.size
        bound = preprocessing_bound(operator, size[0] * size[1])
        rng = np.random.default_rng(0)
        if dtype.kind == "u":
            top = np.iinfo(dtype).max
            pixels = rng.integers(0, top, shape, endpoint=True).astype(dtype)
            unit = pixels / top
        else:
            pixels = rng.uniform(-1.0, 2.0, shape).astype(dtype)
            unit = pixels.astype(np.float64)
        converted = self(pixels, order)[0].double().cpu().numpy()
        error = float(np.linalg.norm(converted - operator.apply(unit.transpose(2, 0, 1))))
        allowed = bound.rounding(float(np.abs(unit).max()))
        if not error <= allowed:
            return unbounded(
                f"the conversion of {width}x{height} {dtype} {order} frames is not the affine map its bound is "
                f"proven for (off by {error:.3g}, rounding allows {allowed:.3g}): their radii are not certified"
            )
        return bound.for_frame() if dtype.kind == "u" else bound

    def _channels(self, tensor):
        """(1, C, H, W) RGB or grey -> (1, spec.channels, H, W): luma of RGB, or grey repeated."""
        have, want = tensor.shape[1], self.spec.channels
        if have == want:
            return tensor
        if want == 1 and have == 3:
            return (tensor * self.luma).sum(dim=1, keepdim=True)
        if have == 1:
            return tensor.expand(-1, want, -1, -1)
        raise ImageError("bad_channels", f"cannot turn {have} channels into {want}")


def frame_pixels(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> tuple[np.ndarray, str]:
    """A sensor_msgs/Image (checked, `image_to_array`) or CompressedImage (decoded, `compressed_to_array`)
    -> ((H, W, C) pixels, channel order "rgb" | "bgr" | "mono"), what FrameConverter takes. Raises ImageError."""
    if hasattr(msg, "format"):
        pixels, encoding = compressed_to_array(msg, max_pixels)
    else:
        pixels, encoding = image_to_array(msg, max_pixels), msg.encoding
    return pixels, ENCODINGS[encoding].order
