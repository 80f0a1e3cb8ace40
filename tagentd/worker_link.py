"""The worker's end of workers.sock: batched sends, drained receives, re-send until acknowledged.

Throughput comes from never paying one loop wake-up per message: one wake-up
reads every frame already queued with non-blocking receives, and the sends made
during one loop tick go out together in one pass. Messages that
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

from . import wire

RESEND_AFTER = 1.0
MAX_DRAIN = 1000  # frames handled per wake-up before letting other tasks run

#: What encoding a message can raise when a field holds something msgpack cannot carry.
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)


class WorkerLink:
    """A DEALER socket (identity `w<id>`) connected to the daemon's ROUTER, used only from the event loop.

    The loop watches the socket's ZMQ_FD, which is edge-triggered: it signals that *something*
    changed and is reset by any send, receive or EVENTS query. So every pass (`_service`)
    sends what it can, receives what is queued, then re-reads EVENTS and goes again if
    anything is still pending — no message ever waits unseen. (Mixing this with a
    zmq.asyncio socket would not work: both would claim the same FD.)
    """

    def __init__(self, context: zmq.Context, endpoint: str, identity: bytes) -> None:
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, identity)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: Callable[[bytes], None] = lambda frame: None
        self._out: deque[bytes] = deque()
        self._scheduled = False
        self._unacked: dict[Hashable, list] = {}  # key -> [frame, last sent (monotonic)]

    def start(self, handle: Callable[[bytes], None]) -> None:
        """Call `handle(frame)` for every frame received from now on (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        self._loop.add_reader(self._sock.getsockopt(zmq.FD), self._schedule)
        self._schedule()

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
        self._schedule()

    # -- the socket pass ------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _service(self) -> None:
        """Send what is queued (until the high-water mark), handle what arrived, then re-check EVENTS."""
        self._scheduled = False
        sock = self._sock
        try:
            while self._out:
                sock.send(self._out[0], zmq.NOBLOCK)
                self._out.popleft()
        except zmq.Again:
            pass  # the daemon is not reading; POLLOUT will signal the FD
        for _ in range(MAX_DRAIN):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                self._handle(frame)
            except Exception:  # noqa: BLE001 - the handler reports its own errors; never stall the socket
                pass
        else:
            self._schedule()  # more may be queued; let other tasks run first
            return
        events = sock.getsockopt(zmq.EVENTS)
        if events & zmq.POLLIN or (self._out and events & zmq.POLLOUT):
            self._schedule()

    def close(self, linger_ms: int = 0) -> None:
        """Send what is queued if possible, then close (waiting at most `linger_ms` for the daemon)."""
        if self._loop is not None and not self._sock.closed:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        while self._out:
            try:
                self._sock.send(self._out.popleft(), zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self._sock.close(linger=linger_ms)
