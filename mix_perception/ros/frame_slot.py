"""A one-place mailbox between a subscription callback and an inference worker thread.

`put` never blocks: a frame still waiting when a newer one arrives is replaced and counted as
dropped, so the worker always takes the newest frame and latency stays bounded by one inference
(plus the frame in flight) however fast the camera runs. Memory is bounded by one waiting frame.
"""

import threading


class FrameSlot:
    """Latest-frame-only handoff. Thread-safe; counters `received` and `dropped` only grow."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item) -> bool:
        """Store `item` as the newest frame. Returns True when it replaced a frame nobody took."""
        with self._condition:
            self.received += 1
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None):
        """Wait up to `timeout` seconds (None: forever) for a frame and remove it.

        Returns the frame, or None on timeout or once the slot is closed.
        """
        with self._condition:
            self._condition.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full or self._closed:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake every waiting `take` (they return None) and make later takes return None at once."""
        with self._condition:
            self._closed = True
            self._item, self._full = None, False
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
