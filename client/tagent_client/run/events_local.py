"""`LocalSubscription`: one reader's queue of a `LocalBroker`'s events, the in-process twin of a subscription
to the daemon's events.sock (`client/subscription.py`).

Same promise as the daemon's: best effort. Events published after `subscribe` returns whose topic starts
with one of the prefixes are queued for the reader; a reader that falls QUEUE_MAX events behind loses the
oldest, counted in `dropped` (the publisher never waits). Only the event loop's thread may use it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from ..wire.protocol import EventRecord
from ..wire.protocol_broker import matches

QUEUE_MAX = 100_000  # as many events as the daemon queues for one subscriber


class LocalSubscription:
    """Matching events of a LocalBroker, in publishing order; `await get(timeout)`, `close()` when done."""

    def __init__(self, prefixes: list[str], forget: Callable[[LocalSubscription], None]) -> None:
        self.prefixes = list(prefixes) or [""]
        self.received = 0
        self.dropped = 0
        self._queue: collections.deque[EventRecord] = collections.deque()
        self._ready = asyncio.Event()
        self._forget = forget
        self._closed = False

    def offer(self, record: EventRecord) -> None:
        """Queue `record` if it matches (the broker calls this for every event it publishes)."""
        if self._closed or not matches(record.topic, self.prefixes):
            return
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(record)
        self.received += 1
        self._ready.set()

    async def get(self, timeout: float | None = None) -> EventRecord | None:
        """The next event; None after `timeout` s, or at once once closed."""
        while not self._queue:
            if self._closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._queue.popleft()

    def close(self) -> None:
        """Stop queueing events (a reader waiting in `get` gets None)."""
        if not self._closed:
            self._closed = True
            self._forget(self)
            self._ready.set()
