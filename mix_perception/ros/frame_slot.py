"""Newest-frame mailboxes between the subscription callbacks and the inference worker: one per source
(camera), all behind one lock.

`put` never blocks: a frame still waiting when a newer one of the same source arrives is replaced
and counted as dropped, so the worker always takes the newest frame of each camera and latency stays
bounded by one inference (plus the batch in flight) however fast the cameras run. `take_all` hands
over the waiting frame of every source at once, so one batch serves every camera and none starves.
Memory is bounded by one waiting frame per source.
"""

import threading
from collections import Counter


class FrameSlots:
    """Latest-frame-only handoff per source. Thread-safe; the counters (`counts`) only grow."""

    def __init__(self):
        self._condition = threading.Condition()
        self._waiting: dict[str, object] = {}
        self._closed = False
        self._received: Counter = Counter()
        self._dropped: Counter = Counter()

    def put(self, source: str, item) -> bool:
        """Store `item` as the newest frame of `source`. Returns True when it replaced a frame nobody took.
        A closed mailbox refuses it (returns False, counts nothing)."""
        with self._condition:
            if self._closed:
                return False
            self._received[source] += 1
            replaced = source in self._waiting
            if replaced:
                self._dropped[source] += 1
            self._waiting[source] = item
            self._condition.notify()
            return replaced

    def take_all(self, timeout: float | None = None) -> list[tuple[str, object]]:
        """Wait up to `timeout` seconds (None: forever) for a frame; return every waiting (source, frame),
        in the order the sources first sent one, and empty the mailboxes. [] on timeout or when closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._waiting or self._closed, timeout)
            if self._closed:
                return []
            taken, self._waiting = list(self._waiting.items()), {}
            return taken

    def close(self) -> None:
        """Drop the waiting frames, wake every `take_all` (it returns []) and refuse frames until `open`."""
        with self._condition:
            self._closed = True
            self._waiting = {}
            self._condition.notify_all()

    def open(self) -> None:
        """Accept frames again (after `close`)."""
        with self._condition:
            self._closed = False

    def counts(self) -> dict:
        """{source: {"received": frames put, "dropped": frames replaced before the worker took them}},
        read under the mailbox's own lock."""
        with self._condition:
            return {
                source: {"received": received, "dropped": self._dropped[source]}
                for source, received in self._received.items()
            }

    @property
    def closed(self) -> bool:
        return self._closed
