"""Node `demo_camera` (executable `demo_camera`): publishes images at a fixed rate, as a camera would.

Source (parameter `source`): the shipped Fashion-MNIST test split (default), a folder of image
files (torchvision ImageFolder layout: its subfolder is a frame's class), or an MCAP recording of
sensor_msgs/Image (needs the `mcap` package). Every frame is stamped with the current time (recorded
stamps would make every replayed frame "too old"). `encoding` "" publishes grey frames as mono8 and
colour ones as rgb8.

Topics:
- `image` (sensor_msgs/Image; QoS depth 5, reliability `reliability`, best effort by default like
  a camera driver; a `reliable` mixer subscription needs `reliability: reliable` here);
- `~/ground_truth` (mix_perception/GroundTruth, reliable, depth 100), published just before each image
  with the image's exact header (match on header.stamp): `label_id` (-1 when unknown), `label`, `index`
  (position in the source).
"""

import sys

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from mix_perception.core.names import CLASS_NAMES
from mix_perception.ros import parameters
from mix_perception.ros.demo_sources import WithDigits, convert, open_source
from mix_perception.ros.image_conversion import array_to_image
from mix_perception.ros.spin import reliability_policy

NODE_NAME = "demo_camera"
EXTRA = (
    parameters.Spec(
        "reliability",
        "best_effort",
        "QoS reliability of `image`: best_effort | reliable",
        choices=("best_effort", "reliable"),
    ),
)


class DemoCameraNode(Node):
    def __init__(self, source=None, ood_frames=None, ood_fraction: float = 0.0, **node_kwargs):
        """`source` (a sequence of demo_sources.Frame) may be passed in; else the `source` parameter names it.
        `ood_frames` ((N, H, W) uint8), shown at `ood_fraction` of the frames with label_id -1 (WithDigits)."""
        super().__init__(NODE_NAME, **node_kwargs)
        from sensor_msgs.msg import Image

        from mix_perception.msg import GroundTruth

        values = parameters.declare_and_read(self, parameters.DEMO_CAMERA + EXTRA)
        self.source = (
            source
            if source is not None
            else open_source(values["source"], values["labels"], values["shuffle_seed"], values["mcap_topic"])
        )
        self.labels = list(values["labels"]) or list(getattr(self.source, "class_names", CLASS_NAMES))
        if ood_frames is not None:
            self.source = WithDigits(self.source, ood_frames, ood_fraction)
        self.encoding = values["encoding"]
        self.frame_id = values["frame_id"]
        self.loop = values["loop"]
        self.limit = values["limit"]
        if self.source[0].pixels is not None:
            convert(self.source[0].pixels, self._encoding(self.source[0]))  # fails now, at startup, for a bad one
        reliability = reliability_policy(values["reliability"])
        self.image_pub = self.create_publisher(Image, "image", QoSProfile(depth=5, reliability=reliability))
        self.truth_pub = self.create_publisher(
            GroundTruth, "~/ground_truth", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.truth_type = GroundTruth
        self.published = 0
        self.position = 0
        self.timer = self.create_timer(1.0 / values["rate"], self._tick)
        self.get_logger().info(f"publishing {len(self.source)} frames from {values['source']} at {values['rate']} Hz")

    @property
    def finished(self) -> bool:
        """True once `limit` frames went out, or the source ended without `loop`."""
        return (self.limit and self.published >= self.limit) or (not self.loop and self.position >= len(self.source))

    def _encoding(self, frame) -> str:
        """The `encoding` parameter, or for "" the frame's own: mono8 for grey pixels, rgb8 for colour."""
        return self.encoding or ("mono8" if frame.pixels.shape[2] == 1 else "rgb8")

    def _tick(self) -> None:
        if self.finished:
            self.timer.cancel()
            return
        frame = self.source[self.position % len(self.source)]
        self.position += 1
        if frame.message is not None:
            image = frame.message
        else:
            encoding = self._encoding(frame)
            image = array_to_image(convert(frame.pixels, encoding), encoding)
        image.header.stamp = self.get_clock().now().to_msg()
        image.header.frame_id = self.frame_id
        label = self.labels[frame.label_id] if 0 <= frame.label_id < len(self.labels) else ""
        truth = self.truth_type(header=image.header, label_id=frame.label_id, label=label, index=frame.index)
        self.truth_pub.publish(truth)
        self.image_pub.publish(image)
        self.published += 1


def main(argv=None) -> None:
    """Entry point of `demo_camera`."""
    from mix_perception.ros.spin import run_node

    run_node("demo_camera", DemoCameraNode, argv)


if __name__ == "__main__":
    sys.exit(main())
