"""Several cameras in one mixer, and the mixer's lifecycle driven over its services, with the nodes in
separate processes over DDS: each frame's message names its camera; the monitor judges and watches each
camera on its own (a silent camera goes STALE while the other stays OK); per-camera counters on
/diagnostics; while the mixer is not active no frame is classified and the monitor reports STALE."""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from mix_perception.core.sequential import SequentialPlan
from mix_perception.msg import MixedClassification, SafetyStatus
from mix_perception.ros.diagnostics import values_of
from mix_perception.ros.image_conversion import array_to_image
from mix_perception.ros.safety_monitor import STATUS_QOS

pytestmark = pytest.mark.slow  # nodes in separate processes over DDS

MAX_FRAME_AGE = 0.5
WATCHDOG_PERIOD = 0.1
CAMERAS = ("/multi/front/image", "/multi/rear/image")
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
STALE = SafetyStatus.STALE
# Sequential smoothing (the default) certifies the constant model's frames at its first look.
FIRST_LOOK = SequentialPlan(0.25, 0.75, 0.1, 0.001, 256).looks[0]


class Graph:
    """The test's side: a publisher per camera, and everything the mixer and the monitor publish."""

    def __init__(self, ros, spin, namespace: str, cameras):
        _, self.node, self.executor = ros
        self.spin = spin
        self.classifications, self.statuses, self.diagnostics = [], [], []
        self.node.create_subscription(
            MixedClassification, f"{namespace}/mixer/classification", self.classifications.append, RELIABLE
        )
        status_topic = f"{namespace}/safety_monitor/status"
        self.node.create_subscription(SafetyStatus, status_topic, self.statuses.append, STATUS_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.cameras = {topic: self.node.create_publisher(Image, topic, qos_profile_sensor_data) for topic in cameras}
        self.sequence = 0
        self.namespace = namespace

    def wait_for_nodes(self, mixer_active: bool = True):
        """The monitor (and this test) subscribe to the mixer's classifications; an active mixer to every camera."""

        def ready():
            subscribed = all(p.get_subscription_count() >= 1 for p in self.cameras.values()) or not mixer_active
            return subscribed and self.node.count_subscribers(f"{self.namespace}/mixer/classification") >= 2

        self.wait(ready, "the mixer and the monitor to be discovered", 60.0)

    def send(self, topic: str) -> str:
        """Publish one frame on `topic`; returns its frame_id."""
        self.sequence += 1
        pixels = np.random.default_rng(self.sequence).integers(0, 256, (28, 28), dtype=np.uint8)
        msg = array_to_image(pixels, "mono8")
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = f"frame_{self.sequence}"
        self.cameras[topic].publish(msg)
        return msg.header.frame_id

    def wait(self, predicate, what: str, timeout: float = 30.0):
        """Spin until predicate() is truthy and return it; the test fails after `timeout` s."""
        return self.spin(self.executor, predicate, timeout, what)

    def poll(self, predicate, seconds: float):
        """Spin for up to `seconds` until predicate() is truthy; returns its last value (no failure)."""
        deadline = time.monotonic() + seconds
        while not (value := predicate()) and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return value

    def classification_of(self, frame_id: str):
        return next((m for m in self.classifications if m.header.frame_id == frame_id), None)

    def classified(self, topic: str, timeout: float = 30.0):
        """Send frames on `topic` until one is classified (best effort, as a camera); returns the message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame_id = self.send(topic)
            found = self.poll(lambda f=frame_id: self.classification_of(f), 1.0)
            if found:
                return found
        pytest.fail(f"no frame of {topic} was classified in {timeout} s")

    def newest_status(self, source: str, after: int = 0):
        return next((s for s in reversed(self.statuses[after:]) if s.source == source), None)


def test_two_cameras_one_mixer_and_a_monitor_per_camera(start_node, constant_model, ros, spin):
    start_node(
        "mixer_node",
        {
            "standard_model": constant_model,
            "robust_model": constant_model,
            "image_topics": list(CAMERAS),
            "certification": "smoothing",
            "robust_logit_scale": 1.0,
            "alpha": 0.75,
            "smoothing.samples": 64,
            "smoothing.select_samples": 8,
            "cpu_threads": 1,
            "diagnostics_period": 0.2,
        },
        namespace="/multi",
    )
    start_node(
        "safety_monitor",
        {
            "required_radius": 0.01,
            "max_frame_age": MAX_FRAME_AGE,
            "watchdog_period": WATCHDOG_PERIOD,
            "sources": list(CAMERAS),
        },
        namespace="/multi",
    )
    graph = Graph(ros, spin, "/multi", CAMERAS)
    graph.wait_for_nodes()

    for topic in CAMERAS:
        msg = graph.classified(topic)
        assert msg.source == topic and msg.certified and msg.samples == FIRST_LOOK
        status = graph.wait(
            lambda fid=msg.header.frame_id: next((s for s in graph.statuses if s.header.frame_id == fid), None),
            "the frame's verdict",
        )
        assert status.safe and status.source == topic

    # Only the front camera keeps sending: the rear one goes STALE, the front one stays safe.
    seen = len(graph.statuses)
    deadline = time.monotonic() + MAX_FRAME_AGE + WATCHDOG_PERIOD + 2.0
    stale = None
    while time.monotonic() < deadline and stale is None:
        graph.send(CAMERAS[0])
        graph.executor.spin_once(timeout_sec=0.05)
        stale = next((s for s in graph.statuses[seen:] if s.source == CAMERAS[1] and s.level == STALE), None)
    assert stale is not None and stale.reason == "stale_stream" and not stale.safe
    front = [s for s in graph.statuses[seen:] if s.source == CAMERAS[0]]
    assert front and all(s.safe for s in front[-5:])
    assert not any(s.level == SafetyStatus.STALE for s in front)

    def camera_counters():
        for array in reversed(graph.diagnostics):
            cameras = {s.name: values_of(s) for s in array.status if s.name.startswith("/multi/mixer: camera ")}
            if len(cameras) == 2:
                return cameras
        return None

    cameras = graph.wait(camera_counters, "per-camera counters on /diagnostics")
    for topic in CAMERAS:
        values = cameras[f"/multi/mixer: camera {topic}"]
        assert int(values["processed"]) >= 1 and int(values["received"]) >= int(values["processed"])


def call(graph, client, request, what: str):
    future = client.call_async(request)
    graph.wait(future.done, what)
    return future.result()


def test_lifecycle_over_the_services_with_the_monitor_stale_while_inactive(start_node, constant_model, ros, spin):
    camera = "/managed/image"
    start_node(
        "mixer_node",
        {
            "standard_model": constant_model,
            "robust_model": constant_model,
            "autostart": False,
            "image_topics": [camera],
            "certification": "none",
            "cpu_threads": 1,
        },
        namespace="/managed",
    )
    start_node(
        "safety_monitor",
        {"max_frame_age": MAX_FRAME_AGE, "watchdog_period": WATCHDOG_PERIOD, "sources": [camera]},
        namespace="/managed",
    )
    graph = Graph(ros, spin, "/managed", [camera])
    graph.wait_for_nodes(mixer_active=False)
    change = graph.node.create_client(ChangeState, "/managed/mixer/change_state")
    get_state = graph.node.create_client(GetState, "/managed/mixer/get_state")
    graph.wait(lambda: change.service_is_ready() and get_state.service_is_ready(), "the lifecycle services")

    def state() -> int:
        return call(graph, get_state, GetState.Request(), "get_state").current_state.id

    def transition(transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return call(graph, change, request, f"transition {transition_id}").success

    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    stale = graph.wait(lambda: graph.newest_status(camera), "a verdict on the unconfigured mixer's camera")
    assert stale.level == SafetyStatus.STALE and stale.reason == "stale_stream"
    for _ in range(5):
        graph.send(camera)  # nobody classifies them
    assert not graph.poll(lambda: graph.classifications, 1.0)

    assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
    msg = graph.classified(camera)
    assert msg.source == camera and msg.class_id == 3
    ok = graph.wait(
        lambda: next((s for s in graph.statuses if s.header.frame_id == msg.header.frame_id), None), "a verdict"
    )
    assert ok.source == camera and ok.level == SafetyStatus.ERROR and ok.reason == "not_certified"

    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
    seen, classified = len(graph.statuses), len(graph.classifications)
    def stale_again():
        graph.send(camera)
        newest = graph.newest_status(camera, seen)
        return newest is not None and newest.level == SafetyStatus.STALE

    assert graph.poll(stale_again, 10.0)
    assert len(graph.classifications) == classified  # inactive: nothing classified
    assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
