"""The worker's end of workers.sock: batched sends, drained receives, re-send until acknowledged.

A local worker (`unix://PATH`) speaks over a Unix stream socket its loop drives itself (`FrameLink`,
tagentd/plumbing/framed_link.py: one loop wake-up per batch of frames, no I/O thread); a worker given a ZeroMQ
endpoint (`tcp://` with CURVE, or `ipc://`) over a DEALER driven by `Channel`. Either way, what the worker
sends in one loop turn leaves as one frame (`wire.pack`),
and a frame received may hold several messages (`wire.unpack`). On top of it, messages that must arrive
(results, memory requests) stay in an unacked map and are re-sent every
`RESEND_AFTER` seconds until `acked(key)`, because ZeroMQ alone may drop them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import msgspec
import zmq

from tagentd.plumbing.channel import Channel
from tagentd.plumbing.framed import MAX_FRAME
from tagentd.plumbing.framed_link import FrameLink
from tagentd.worker import wire
from tagentd.worker.credentials import WorkerCredentials

RESEND_AFTER = 1.0

#: What encoding a message can raise when a field holds something msgpack cannot carry.
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)


class WorkerLink:
    """The worker's connection to the daemon, announced as `identity` (`w<id>.<token>`), used only from the loop.

    `unix://PATH` (the daemon's workers.sock, 0600 in a 0700 dir): a `FrameLink`. Otherwise a ZeroMQ DEALER
    connected to `endpoint`: with `credentials`, a CURVE client of the daemon's worker endpoint (tcp, encrypted
    and authenticated); without, in the clear.
    """

    def __init__(self, context: zmq.Context, endpoint: str, identity: bytes,
                 credentials: WorkerCredentials | None = None) -> None:
        self.endpoint = endpoint
        self._unacked: dict[Hashable, list] = {}  # key -> [frame, last sent (monotonic)]
        pack = lambda queued: [wire.pack([m[0] for m in queued])]  # noqa: E731
        if endpoint.startswith("unix://") and credentials is None:
            self._channel: Channel | FrameLink = FrameLink(endpoint.removeprefix("unix://"), identity, pack=pack)
            return
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        if credentials is not None:
            credentials.apply(sock)
        sock.connect(endpoint)
        self._channel = Channel(sock, multipart=False, pack=pack)

    def start(self, handle: Callable[[bytes], None], on_closed: Callable[[str], None] | None = None) -> None:
        """Call `handle(frame)` for every frame received from now on (on the running loop); `on_closed(why)` once
        if the daemon ends the connection (a local worker's: a ZeroMQ link reconnects by itself)."""

        def each(batch: list[list[bytes]]) -> None:
            for (frame,) in batch:
                try:
                    handle(frame)
                except Exception:  # noqa: BLE001 - the handler reports its own errors; never stall the socket
                    pass

        if isinstance(self._channel, FrameLink):
            self._channel.start(each, on_closed)
        else:
            self._channel.start(each)

    # -- sending ------------------------------------------------------------------------

    def send(self, message: wire.WorkerMessage) -> None:
        """Queue a best-effort message (raises one of ENCODE_ERRORS if it cannot be encoded)."""
        self._channel.send([encode(message)])

    def send_until_acked(self, key: Hashable, message: wire.WorkerMessage, *, at_once: bool = False) -> None:
        """Queue a message and re-send it every RESEND_AFTER seconds until `acked(key)`; `at_once`: see
        `Channel.send` (it leaves now if nothing waits before it)."""
        frame = encode(message)
        self._unacked[key] = [frame, time.monotonic()]
        self._channel.send([frame], at_once=at_once)

    def acked(self, key: Hashable) -> bool:
        """Stop re-sending `key`; False if it was not waiting for an acknowledgement."""
        return self._unacked.pop(key, None) is not None

    def resend(self, key: Hashable) -> bool:
        """Send `key` again now (e.g. the daemon asked for it twice); False if it is not unacked."""
        entry = self._unacked.get(key)
        if entry is None:
            return False
        entry[1] = time.monotonic()
        self._channel.send([entry[0]])
        return True

    def resend_due(self, now: float) -> int:
        """Re-send every unacked message last sent RESEND_AFTER or more ago; returns how many."""
        count = 0
        for entry in self._unacked.values():
            if now - entry[1] >= RESEND_AFTER:
                entry[1] = now
                self._channel.send([entry[0]])
                count += 1
        return count

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def close(self, linger_ms: int = 0) -> None:
        """Send what is queued if the daemon takes it, then close (waiting at most `linger_ms`)."""
        self._channel.flush()
        self._channel.close(linger_ms)


def encode(message: wire.WorkerMessage) -> bytes:
    """`wire.encode`, refusing (ValueError, one of ENCODE_ERRORS) a message larger than a frame may be."""
    frame = wire.encode(message)
    if len(frame) > MAX_FRAME:
        raise ValueError(f"{type(message).__name__} is {len(frame)} bytes encoded, over the limit of {MAX_FRAME}")
    return frame
