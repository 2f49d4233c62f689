"""FrameSlot: only the newest frame waits; drops are counted; close wakes the worker."""

import threading
import time

from mix_perception.ros.frame_slot import FrameSlot


def test_newest_frame_wins_and_drops_are_counted():
    slot = FrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None
    assert (slot.received, slot.dropped) == (3, 2)


def test_close_wakes_a_waiting_taker():
    slot = FrameSlot()
    result = []
    worker = threading.Thread(target=lambda: result.append(slot.take()))
    worker.start()
    slot.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and result == [None]
    slot.put(4)
    assert slot.take(timeout=0) is None


def test_fast_producer_slow_consumer_stays_bounded():
    slot = FrameSlot()
    taken = []

    def consume():
        while True:
            item = slot.take(timeout=1.0)
            if item is None:
                return
            taken.append(item)
            time.sleep(0.002)

    worker = threading.Thread(target=consume)
    worker.start()
    for frame in range(2000):
        slot.put(frame)
    deadline = time.monotonic() + 5
    while (not taken or taken[-1] != 1999) and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.close()
    worker.join(timeout=5)
    assert taken[-1] == 1999
    assert taken == sorted(taken)
    assert slot.received == 2000
    assert slot.dropped == 2000 - len(taken)
