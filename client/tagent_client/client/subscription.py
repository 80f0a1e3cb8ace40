"""Subscriptions to the daemon's event bus (events.sock): `Subscription` and `AsyncSubscription`.

A subscription is a DEALER socket that sends `Subscribe{prefixes}` and renews it
every RENEW_EVERY seconds while it is read (the daemon forgets a subscriber it
has not heard from for EXPIRE_AFTER seconds). Events come in frames of
up to 500 (a msgpack array of EventRecords). Opening waits for the daemon's
`broker.subscribed` confirmation, so every event published after `open`
returns is seen — unless the subscriber falls behind: the daemon never waits
for a slow subscriber; it drops events for it, counts them, and says so with
`broker.dropped` events (`dropped` sums them here).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import zmq

from ..errors import DaemonUnavailable
from ..wire import paths
from ..wire.protocol import EventRecord
from ..wire.protocol_broker import RENEW_EVERY, Subscribe, Unsubscribe, encode

if TYPE_CHECKING:
    import zmq.asyncio

RECEIVE_QUEUE = 200  # frames (of up to 500 events) buffered on our side of the socket
_decoder = msgspec.msgpack.Decoder(list[EventRecord])


def _events_socket(context: zmq.Context, runtime_dir: Path) -> zmq.Socket:
    path = runtime_dir / paths.EVENTS_SOCKET
    if not path.exists():
        raise DaemonUnavailable(f"no tagentd running: {path} does not exist; start one with 'tagentd start'")
    paths.check_private_dir(runtime_dir, "runtime dir")
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.rcvhwm = RECEIVE_QUEUE
    sock.connect(paths.endpoint(runtime_dir, paths.EVENTS_SOCKET))
    return sock


class _State:
    """What both kinds share: prefixes, renewal clock, counters."""

    def __init__(self, runtime_dir: str | Path, prefixes: list[str]) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else paths.runtime_dir()
        self.prefixes = list(prefixes)
        self.received = 0
        self.dropped = 0
        self.confirmed = False
        self._renew_at = 0.0
        self._queue: collections.deque[EventRecord] = collections.deque()

    def _take(self, frame: bytes) -> None:
        """Queue the events of one frame (a batch); our own bookkeeping notices are counted, not queued."""
        for record in _decoder.decode(frame):
            if record.topic == "broker.subscribed":
                self.confirmed = True
                continue
            if record.topic == "broker.dropped":
                self.dropped += int(record.data.get("dropped", 0))
            else:
                self.received += 1
            self._queue.append(record)

    def _subscribe_frame(self) -> bytes:
        self._renew_at = time.monotonic() + RENEW_EVERY
        return encode(Subscribe(prefixes=self.prefixes))

    def _unavailable(self, timeout: float) -> DaemonUnavailable:
        return DaemonUnavailable(f"tagentd did not confirm the subscription on {self.runtime_dir / paths.EVENTS_SOCKET} "
                                 f"within {timeout:g}s; is it running? ('tagentd status')")


class Subscription(_State):
    """Blocking subscription: iterate for events as they come, or `get(timeout)`; `close()` when done."""

    def __init__(self, runtime_dir: str | Path, prefixes: list[str], timeout: float = 5.0) -> None:
        super().__init__(runtime_dir, prefixes)
        self._sock = _events_socket(zmq.Context.instance(), self.runtime_dir)
        self._sock.send(self._subscribe_frame())
        deadline = time.monotonic() + timeout
        while not self.confirmed:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(math.ceil(left * 1000)):
                self.close()
                raise self._unavailable(timeout)
            self._take(self._sock.recv())

    def get(self, timeout: float | None = None) -> EventRecord | None:
        """The next event (including `broker.dropped` notices); None after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            now = time.monotonic()
            if now >= self._renew_at:
                self._sock.send(self._subscribe_frame(), zmq.NOBLOCK)
            wait = self._renew_at - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self._sock.poll(max(0, math.ceil(wait * 1000))):
                self._take(self._sock.recv(zmq.NOBLOCK))
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self._queue.popleft()

    def __iter__(self) -> Iterator[EventRecord]:
        while True:
            record = self.get()
            if record is not None:
                yield record

    def close(self) -> None:
        if not self._sock.closed:
            try:
                self._sock.send(encode(Unsubscribe()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=100)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription(_State):
    """asyncio subscription: `async for record in sub`, or `await sub.get(timeout)`."""

    def __init__(self, runtime_dir: str | Path, prefixes: list[str]) -> None:
        super().__init__(runtime_dir, prefixes)
        self._sock: zmq.asyncio.Socket | None = None

    async def open(self, timeout: float = 5.0) -> None:
        import zmq.asyncio  # only asyncio users pay for it

        self._sock = _events_socket(zmq.asyncio.Context.instance(), self.runtime_dir)
        await self._sock.send(self._subscribe_frame())
        deadline = time.monotonic() + timeout
        while not self.confirmed:
            left = deadline - time.monotonic()
            if left <= 0 or not await self._sock.poll(math.ceil(left * 1000)):
                self.close()
                raise self._unavailable(timeout)
            self._take(await self._sock.recv())

    async def get(self, timeout: float | None = None) -> EventRecord | None:
        assert self._sock is not None, "call open() first (AsyncClient.subscribe does)"
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            now = time.monotonic()
            if now >= self._renew_at:
                await self._sock.send(self._subscribe_frame())
            wait = self._renew_at - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if await self._sock.poll(max(0, math.ceil(wait * 1000))):
                self._take(await self._sock.recv())
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self._queue.popleft()

    async def __aiter__(self) -> AsyncIterator[EventRecord]:
        while True:
            record = await self.get()
            if record is not None:
                yield record

    def close(self) -> None:
        """Tell the daemon (so it stops sending at once, not after EXPIRE_AFTER), then close the socket."""
        if self._sock is not None and not self._sock.closed:
            try:
                self._sock.send(encode(Unsubscribe()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=100)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
