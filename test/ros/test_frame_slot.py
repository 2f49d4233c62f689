"""FrameSlots: only the newest frame of each camera waits; one take serves every camera; drops are counted
per camera; close wakes the worker and refuses frames until open."""

import threading
import time

from mix_perception.ros.frame_slot import FrameSlots


def test_newest_frame_of_each_camera_wins_and_drops_are_counted_per_camera():
    slots = FrameSlots()
    assert slots.put("/a", 1) is False
    assert slots.put("/b", 10) is False
    assert slots.put("/a", 2) is True
    assert slots.put("/a", 3) is True
    assert slots.take_all(timeout=0) == [("/a", 3), ("/b", 10)]
    assert slots.take_all(timeout=0) == []
    assert slots.counts() == {"/a": {"received": 3, "dropped": 2}, "/b": {"received": 1, "dropped": 0}}


def test_close_wakes_a_waiting_taker_and_refuses_frames_until_open():
    slots = FrameSlots()
    result = []
    worker = threading.Thread(target=lambda: result.append(slots.take_all()))
    worker.start()
    slots.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and result == [[]]
    assert slots.put("/a", 4) is False and slots.take_all(timeout=0) == []
    assert slots.counts() == {}  # a refused frame is not counted
    slots.open()
    slots.put("/a", 5)
    assert slots.take_all(timeout=0) == [("/a", 5)]


def test_a_fast_camera_does_not_starve_a_slow_one():
    """Every take hands over the newest frame of every camera that has one: the slow camera's frames
    are all taken, however many frames the fast one sends."""
    slots = FrameSlots()
    taken = []

    def consume():
        while True:
            batch = slots.take_all(timeout=1.0)
            if not batch:
                return
            taken.extend(batch)
            time.sleep(0.002)

    worker = threading.Thread(target=consume)
    worker.start()
    for frame in range(2000):
        slots.put("/fast", frame)
        if frame % 100 == 0:
            slots.put("/slow", frame)
            time.sleep(0.005)  # the worker takes it before the next slow frame
    deadline = time.monotonic() + 5
    while (not taken or ("/fast", 1999) not in taken) and time.monotonic() < deadline:
        time.sleep(0.01)
    slots.close()
    worker.join(timeout=5)
    fast = [frame for source, frame in taken if source == "/fast"]
    slow = [frame for source, frame in taken if source == "/slow"]
    assert fast[-1] == 1999 and fast == sorted(fast)
    assert slow == list(range(0, 2000, 100))
    counts = slots.counts()
    assert counts["/fast"] == {"received": 2000, "dropped": 2000 - len(fast)}
    assert counts["/slow"]["dropped"] == 0

