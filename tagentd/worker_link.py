"""The worker's end of workers.sock: batched sends, drained receives, re-send until acknowledged.

Throughput comes from never paying one loop wake-up per message: after one
awaited receive, every frame already queued is read with non-blocking receives;
sends made during one loop tick go out together in one flush. Messages that
must arrive (results, memory requests) stay in an unacked map and are re-sent
every `RESEND_AFTER` seconds until `acked(key)`, because ZeroMQ alone may drop
them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable

import msgspec
import zmq
import zmq.asyncio

from . import wire

RESEND_AFTER = 1.0
MAX_DRAIN = 1000  # frames handled per wake-up before letting other tasks run

#: What encoding a message can raise when a field holds something msgpack cannot carry.
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)


class WorkerLink:
    """A DEALER socket (identity `w<id>`) connected to the daemon's ROUTER, used only from the event loop."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, identity: bytes) -> None:
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, identity)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._sync = zmq.Socket.shadow(self._sock.underlying)  # same socket, for non-blocking calls
        self._out: deque[bytes] = deque()
        self._flush_scheduled = False
        self._blocked = False
        self._unacked: dict[Hashable, list] = {}  # key -> [frame, last sent (monotonic)]

    # -- sending ------------------------------------------------------------------------

    def send(self, message: wire.WorkerMessage) -> None:
        """Queue a best-effort message (raises one of ENCODE_ERRORS if it cannot be encoded)."""
        self._queue(wire.encode(message))

    def send_until_acked(self, key: Hashable, message: wire.WorkerMessage) -> None:
        """Queue a message and re-send it every RESEND_AFTER seconds until `acked(key)`."""
        frame = wire.encode(message)
        self._unacked[key] = [frame, time.monotonic()]
        self._queue(frame)

    def acked(self, key: Hashable) -> bool:
        """Stop re-sending `key`; False if it was not waiting for an acknowledgement."""
        return self._unacked.pop(key, None) is not None

    def resend(self, key: Hashable) -> bool:
        """Send `key` again now (e.g. the daemon asked for it twice); False if it is not unacked."""
        entry = self._unacked.get(key)
        if entry is None:
            return False
        entry[1] = time.monotonic()
        self._queue(entry[0])
        return True

    def resend_due(self, now: float) -> int:
        """Re-send every unacked message last sent RESEND_AFTER or more ago; returns how many."""
        count = 0
        for entry in self._unacked.values():
            if now - entry[1] >= RESEND_AFTER:
                entry[1] = now
                self._queue(entry[0])
                count += 1
        return count

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled and not self._blocked:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._out and not self._blocked:
            try:
                self._sync.send(self._out[0], zmq.NOBLOCK)
            except zmq.Again:
                self._blocked = True
                asyncio.get_running_loop().create_task(self._flush_when_writable())
                return
            self._out.popleft()

    async def _flush_when_writable(self) -> None:
        """The high-water mark was reached: wait on each send until the daemon reads again."""
        try:
            while self._out:
                await self._sock.send(self._out[0])
                self._out.popleft()
        finally:
            self._blocked = False

    # -- receiving ----------------------------------------------------------------------

    async def receive_forever(self, handle: Callable[[bytes], None]) -> None:
        """Call `handle(frame)` for every frame received; one awaited receive, then drain what is queued."""
        while True:
            handle(await self._sock.recv())
            for _ in range(MAX_DRAIN):
                try:
                    frame = self._sync.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handle(frame)

    def close(self, linger_ms: int = 0) -> None:
        """Send what is queued if possible, then close (waiting at most `linger_ms` for the daemon)."""
        while self._out:
            try:
                self._sync.send(self._out.popleft(), zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self._sock.close(linger=linger_ms)
