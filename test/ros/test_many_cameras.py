"""Many cameras in one saturated mixer: while the worker is busy with a batch, every camera keeps only its
newest frame; the next batch takes the newest frame of every camera in one forward (no camera starves);
every frame that reached the mixer is counted once, as classified or as dropped.

Saturation without timing: h's forward waits on a gate the test opens, so the test decides when the
worker is busy. The mixer, the cameras and the listener are real rclpy nodes over DDS in this process."""

import threading

import numpy as np
import pytest
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from torch import nn

from mix_perception.msg import MixedClassification
from mix_perception.ros.image_conversion import array_to_image
from mix_perception.ros.mixer_node import start_mixer

CAMERAS = [f"/many/camera_{k}/image" for k in range(16)]
ROUNDS = 5  # frames per camera sent while the worker is busy
RELIABLE = QoSProfile(depth=2 * len(CAMERAS), reliability=ReliabilityPolicy.RELIABLE)


class GatedModel(nn.Module):
    """Class 0 for every frame; each forward records its batch size and, while `gate` is closed, waits
    for it (certification none runs no forward at configure)."""

    def __init__(self):
        super().__init__()
        self.gate, self.batches = threading.Event(), []
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.gate.wait(timeout=60)
        return torch.zeros(x.shape[0], 10) + 0.0 * self.linear(x.flatten(1))


@pytest.fixture
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def test_a_saturated_mixer_serves_every_camera_and_counts_every_frame(context, spin):
    gated = GatedModel()
    overrides = [Parameter("image_topics", value=CAMERAS), Parameter("certification", value="none"),
                 Parameter("robust_logit_scale", value=1.0), Parameter("image_reliability", value="reliable"),
                 Parameter("image_depth", value=10)]  # fmt: skip
    mixer = start_mixer(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), gated, context=context,
                        parameter_overrides=overrides)  # fmt: skip
    cameras = rclpy.create_node("many_cameras", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(mixer)
    executor.add_node(cameras)
    classified = []
    cameras.create_subscription(MixedClassification, "/mixer/classification", classified.append, RELIABLE)
    publishers = [cameras.create_publisher(Image, topic, RELIABLE) for topic in CAMERAS]
    frame = array_to_image(np.zeros((28, 28), np.uint8), "mono8")

    def send(round_: int) -> None:
        for camera, publisher in enumerate(publishers):
            frame.header.frame_id = f"{camera}/{round_}"
            publisher.publish(frame)

    try:
        spin(executor, lambda: all(p.get_subscription_count() for p in publishers), what="the mixer's subscriptions")
        spin(executor, lambda: mixer.classification_pub.get_subscription_count(), what="the listener")
        send(0)
        spin(executor, lambda: gated.batches, what="the worker to take the first batch")
        for round_ in range(1, ROUNDS + 1):  # the worker waits in h's forward: the slots keep the newest
            send(round_)
            received = len(CAMERAS) * (round_ + 1)
            spin(executor, lambda r=received: mixer.counters()["received"] == r, what=f"round {round_}")
        gated.gate.set()
        spin(executor, lambda: mixer.counters()["processed"] == gated.batches[0] + len(CAMERAS), what="the batches")
        spin(executor, lambda: len(classified) == mixer.counters()["processed"], what="every classification")
    finally:
        gated.gate.set()
        executor.shutdown()
        cameras.destroy_node()
        mixer.destroy_node()

    assert gated.batches[1:] == [len(CAMERAS)]  # after the first batch: one forward with every camera's newest frame
    newest = {f"{camera}/{ROUNDS}" for camera in range(len(CAMERAS))}
    assert newest <= {msg.header.frame_id for msg in classified}
    assert {msg.source for msg in classified} == set(CAMERAS)  # absolute topics: the sources as given
    per_camera = mixer.stats.cameras(mixer.slots.counts())
    for topic in CAMERAS:
        counts = per_camera[topic]
        assert counts["received"] == ROUNDS + 1 and counts["lost"] == 0 and counts["rejected"] == 0
        assert counts["processed"] + counts["dropped"] == counts["received"]
        assert counts["processed"] == sum(msg.source == topic for msg in classified)
    assert mixer.counters()["failed"] == 0
