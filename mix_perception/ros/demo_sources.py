"""Where the demo camera's frames come from: the shipped Fashion-MNIST test split, a folder of image
files, or an MCAP recording of sensor_msgs/Image. Each source is a sequence of `Frame`s.

Frame.pixels is (H, W, C) uint8 in RGB order (C = 1 or 3) for the first two sources; an MCAP
source replays the recorded Image messages themselves (`Frame.message`). label_id is the ground
truth class (-1 when unknown), an index into the source's `class_names`. `WithDigits` interleaves
out-of-distribution frames into a source.
"""

import math
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mix_perception.core.names import CLASS_NAMES
from mix_perception.ros.image_conversion import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
FASHION_MNIST_TEST = "fashion_mnist_test"
SHIPPED_SPLITS_FILE = "fashion_mnist_splits.npz"


class Frame(NamedTuple):
    pixels: np.ndarray | None
    label_id: int
    index: int
    message: object = None  # a recorded sensor_msgs/Image (MCAP source)


class FashionMnistTest:
    """The shipped 5,000-image test split, in file order (seed -1) or a seeded permutation.

    Read from the package's data file (its format: mix_perception.experiments.data), uint8 as stored.
    """

    class_names = CLASS_NAMES

    def __init__(self, shuffle_seed: int = 0):
        path = resources.files("mix_perception").joinpath("data", SHIPPED_SPLITS_FILE)
        with resources.as_file(path) as file, np.load(file, allow_pickle=False) as shipped:
            self.images = shipped["test_images"]
            self.labels = shipped["test_labels"].astype(np.int64)
        order = np.arange(len(self.labels))
        if shuffle_seed >= 0:
            order = np.random.default_rng(shuffle_seed).permutation(order)
        self.order = order

    def __len__(self):
        return len(self.order)

    def __getitem__(self, position: int) -> Frame:
        index = int(self.order[position])
        return Frame(self.images[index][:, :, None], int(self.labels[index]), index)


class ImageFolder:
    """Image files under `root` in sorted path order, in the torchvision ImageFolder layout (one subfolder per
    class; files in deeper folders belong to their top subfolder). class_names: `labels`, or when empty the
    sorted subfolder names (torchvision's ImageFolder classes, which `mix-perception train` names too).
    label_id = index of the file's subfolder in class_names (or the name itself when it is a number), else -1."""

    def __init__(self, root, labels=()):
        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.class_names = list(labels) or folders

    def __len__(self):
        return len(self.files)

    def label_of(self, path: Path) -> int:
        parts = path.relative_to(self.root).parts
        name = parts[0] if len(parts) > 1 else ""
        if name in self.class_names:
            return self.class_names.index(name)
        return int(name) if name.isdigit() else -1

    def __getitem__(self, position: int) -> Frame:
        from PIL import Image as PILImage

        path = self.files[position]
        with PILImage.open(path) as image:
            grey = image.mode in ("L", "1", "I;16", "I", "F")
            pixels = np.asarray(image.convert("L" if grey else "RGB"))
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return Frame(pixels, self.label_of(path), position)


class McapRecording:
    """sensor_msgs/msg/Image messages of one topic of an MCAP file (ROS 2 CDR), read into memory.

    Needs the `mcap` Python package. topic "" = the first topic whose schema is sensor_msgs/msg/Image.
    """

    class_names = ()  # recorded frames carry no ground truth

    def __init__(self, path, topic: str = ""):
        try:
            from mcap.reader import make_reader
        except ImportError as error:
            raise ValueError(f"{path}: reading MCAP needs the `mcap` Python package (pip install mcap)") from error
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        self.messages = []
        with open(path, "rb") as stream:
            reader = make_reader(stream)
            for schema, channel, message in reader.iter_messages():
                if schema is None or schema.name != "sensor_msgs/msg/Image":
                    continue
                if topic and channel.topic != topic:
                    continue
                topic = channel.topic
                self.messages.append(deserialize_message(message.data, Image))
        if not self.messages:
            raise ValueError(f"{path}: no sensor_msgs/msg/Image messages" + (f" on {topic}" if topic else ""))

    def __len__(self):
        return len(self.messages)

    def __getitem__(self, position: int) -> Frame:
        return Frame(None, -1, position, self.messages[position])


class WithDigits:
    """`source` with out-of-distribution frames (`digits`: (N, H, W) uint8, e.g. MNIST) interleaved at `fraction`
    of the positions, evenly: position p shows a digit when floor((p + 1) f) > floor(p f), the digits in turn,
    else the source's own frame p. A digit's label_id is -1 (no class of the model), its index its position
    in `digits`. ValueError unless 0 < fraction < 1 and there is a digit."""

    def __init__(self, source, digits: np.ndarray, fraction: float):
        if not 0.0 < fraction < 1.0 or len(digits) == 0:
            raise ValueError(f"the OOD fraction must be in (0, 1) with frames to show, got {fraction!r}")
        self.source, self.digits, self.fraction = source, digits, float(fraction)
        self.class_names = source.class_names

    def __len__(self):
        return len(self.source)

    def __getitem__(self, position: int) -> Frame:
        shown = math.floor(position * self.fraction)
        if math.floor((position + 1) * self.fraction) > shown:
            digit = shown % len(self.digits)
            return Frame(self.digits[digit][:, :, None], -1, digit)
        return self.source[position]


def open_source(source: str, labels=(), shuffle_seed: int = 0, mcap_topic: str = ""):
    """The frame sequence named by the demo camera's `source` parameter, its `class_names` from `labels` or
    the source itself; ValueError when unusable."""
    if source == FASHION_MNIST_TEST:
        return FashionMnistTest(shuffle_seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return ImageFolder(path, labels)
    if path.suffix == ".mcap" and path.is_file():
        return McapRecording(path, mcap_topic)
    raise ValueError(f"source {source!r} is not {FASHION_MNIST_TEST}, an image folder or an .mcap file")


def convert(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """uint8 (H, W, 1|3) RGB-order pixels -> array laid out as `encoding` (for array_to_image)."""
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    grey = (
        pixels if pixels.shape[2] == 1 else (rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)[..., None]
    )
    opaque = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    layouts = {
        "mono8": lambda: grey,
        "rgb8": lambda: rgb,
        "bgr8": lambda: rgb[:, :, ::-1],
        "rgba8": lambda: np.concatenate([rgb, opaque], axis=2),
        "bgra8": lambda: np.concatenate([rgb[:, :, ::-1], opaque], axis=2),
        "mono16": lambda: grey.astype(np.uint16) * 257,
        "32FC1": lambda: grey.astype(np.float32) / 255.0,
    }
    if encoding not in layouts:
        raise ImageError("unknown_encoding", f"the demo camera publishes {', '.join(layouts)}, not {encoding!r}")
    return layouts[encoding]()
