"""The demo camera's sources: shipped test split, image folder, MCAP recording; encoding conversion."""

import numpy as np
import pytest
from PIL import Image as PILImage

from mix_perception.core.names import CLASS_NAMES
from mix_perception.ros.demo_sources import FashionMnistTest, ImageFolder, McapRecording, convert, open_source
from mix_perception.ros.image_conversion import ImageError, array_to_image, image_to_array


def test_shipped_test_split():
    source = FashionMnistTest(shuffle_seed=0)
    assert len(source) == 5000
    frame = source[0]
    assert frame.pixels.shape == (28, 28, 1) and frame.pixels.dtype == np.uint8
    assert 0 <= frame.label_id < 10
    in_order = FashionMnistTest(shuffle_seed=-1)
    assert in_order[frame.index].label_id == frame.label_id
    np.testing.assert_array_equal(in_order[frame.index].pixels, frame.pixels)


@pytest.mark.parametrize("encoding", ["mono8", "rgb8", "bgr8", "rgba8", "bgra8", "mono16", "32FC1"])
def test_convert_to_every_published_encoding(encoding):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20
    msg = array_to_image(convert(grey, encoding), encoding)
    back = image_to_array(msg)
    assert back.shape[:2] == (3, 4)
    first = back[..., :1].astype(np.float64)
    scale = {"mono16": 257.0, "32FC1": 1 / 255.0}.get(encoding, 1.0)
    np.testing.assert_allclose(first, grey * scale, rtol=1e-6)
    with pytest.raises(ImageError):
        convert(grey, "bayer_rggb8")


def test_image_folder_labels_from_subfolders(tmp_path):
    (tmp_path / "Trouser").mkdir()
    (tmp_path / "7").mkdir()
    PILImage.fromarray(np.full((5, 6), 9, np.uint8), mode="L").save(tmp_path / "Trouser" / "a.png")
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(tmp_path / "7" / "b.png")
    PILImage.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "c.png")
    source = open_source(str(tmp_path), CLASS_NAMES)
    assert isinstance(source, ImageFolder) and len(source) == 3
    frames = [source[i] for i in range(3)]
    assert [f.label_id for f in frames] == [7, 1, -1]  # sorted paths: 7/b.png, Trouser/a.png, c.png
    assert frames[1].pixels.shape == (5, 6, 1) and frames[0].pixels.shape == (4, 4, 3)


def test_image_folder_without_labels_names_classes_as_torchvision_does(tmp_path):
    """ImageFolder layout: classes = sorted subfolder names; a file in a deeper folder belongs to its top one."""
    (tmp_path / "square" / "day").mkdir(parents=True)
    (tmp_path / "circle").mkdir()
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(tmp_path / "square" / "day" / "a.jpg")
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(tmp_path / "circle" / "b.PNG")
    source = open_source(str(tmp_path))
    assert source.class_names == ["circle", "square"]  # torchvision.datasets.ImageFolder(...).classes
    assert [source[i].label_id for i in range(2)] == [0, 1]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        open_source(str(tmp_path), CLASS_NAMES)
    with pytest.raises(ValueError, match="not fashion_mnist_test"):
        open_source(str(tmp_path / "missing.bag"), CLASS_NAMES)


def test_mcap_recording_replays_images(tmp_path):
    mcap_writer = pytest.importorskip("mcap.writer")
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    path = tmp_path / "camera.mcap"
    images = [array_to_image(np.full((3, 3), value, np.uint8), "mono8") for value in (10, 20)]
    with open(path, "wb") as stream:
        writer = mcap_writer.Writer(stream)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema(name="sensor_msgs/msg/Image", encoding="ros2msg", data=b"")
        channel = writer.register_channel(topic="/camera/image", message_encoding="cdr", schema_id=schema)
        other = writer.register_channel(topic="/other", message_encoding="cdr", schema_id=schema)
        for time_ns, image in enumerate(images):
            writer.add_message(channel, log_time=time_ns, publish_time=time_ns, data=serialize_message(image))
        writer.add_message(other, log_time=5, publish_time=5, data=serialize_message(Image()))
        writer.finish()
    source = open_source(str(path), CLASS_NAMES, mcap_topic="/camera/image")
    assert isinstance(source, McapRecording) and len(source) == 2
    assert bytes(source[1].message.data) == bytes(images[1].data)
    assert source[1].label_id == -1


def test_digits_are_interleaved_at_the_fraction_with_no_class():
    from mix_perception.ros.demo_sources import WithDigits

    digits = np.stack([np.full((28, 28), 200 + d, np.uint8) for d in range(3)])
    source = WithDigits(FashionMnistTest(shuffle_seed=0), digits, 0.1)
    assert len(source) == 5000
    frames = [source[p] for p in range(1000)]
    shown = [f for f in frames if f.label_id == -1]
    assert len(shown) == 100 and all(f.pixels.shape == (28, 28, 1) for f in shown)
    positions = [p for p, f in enumerate(frames) if f.label_id == -1]
    assert positions[:3] == [9, 19, 29]  # evenly spread: one in ten
    assert [f.index for f in shown[:4]] == [0, 1, 2, 0] and shown[1].pixels[0, 0, 0] == 201
    assert frames[0].label_id == FashionMnistTest(shuffle_seed=0)[0].label_id
    with pytest.raises(ValueError, match="fraction"):
        WithDigits(FashionMnistTest(shuffle_seed=0), digits, 1.0)


def test_run_demo_ood_needs_the_demo_camera(capsys):
    from mix_perception import cli

    assert cli.main(["run", "--demo-ood", "0.1", "--duration", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mix-perception run: error: --demo-ood needs --demo and a fraction in (0, 1), got 0.1"
    )
