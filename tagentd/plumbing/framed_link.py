"""`FrameLink`: a worker's end of workers.sock, the framed Unix stream socket of framed.py, on the worker's loop.

Guarantees (besides the stream's, framed.py):
- it connects, and retries every RECONNECT_S until the daemon listens (as a ZeroMQ DEALER would); what was
  queued before then leaves once connected, after the identity frame;
- what one loop turn queued leaves as one frame (`pack`), while that frame fits MAX_FRAME (else one frame per
  message); `send(at_once=True)` with nothing queued before it leaves at once, alone;
- `on_closed` is called once if the daemon ends the connection (or it breaks); nothing is re-sent after that.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from tagentd.plumbing.channel import PASSES_AT_ONCE, Frames
from tagentd.plumbing.framed import MAX_FRAME, FrameError, Stream

RECONNECT_S = 0.1  # ZeroMQ's default reconnect interval


class FrameLink:
    """The worker's side: one connection to `path`, announced as `identity`; `Channel`'s `send`/`flush`/`close`.

    `pack`: what one loop turn queued leaves as the one frame `pack` makes of it."""

    def __init__(self, path: str, identity: bytes, pack: Callable[[list[Frames]], Frames] | None = None) -> None:
        self.path = path
        self.identity = identity
        self.pack = pack
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Stream | None = None
        self._queued: list[Frames] = []
        self._scheduled = False
        self._closed = False
        self._handle: Callable[[list[Frames]], None] = lambda batch: None
        self._on_closed: Callable[[str], None] = lambda why: None

    def start(self, handle: Callable[[list[Frames]], None], on_closed: Callable[[str], None] | None = None) -> None:
        """Connect; call `handle(batch)` with each batch of frames received (each a one-element list, as from a
        ZeroMQ DEALER), and `on_closed(why)` once if the daemon ends the connection."""
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        if on_closed is not None:
            self._on_closed = on_closed
        self._connect()

    def _connect(self) -> None:
        assert self._loop is not None
        if self._closed:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError, InterruptedError):
            sock.close()  # the daemon does not listen (yet), or its backlog is full: again soon
            self._loop.call_later(RECONNECT_S, self._connect)
            return
        self._stream = Stream(sock, self._loop, None)
        self._stream.on_broken = self._broken
        self._loop.add_reader(self._stream.fd, self._readable)
        self._stream.write(self.identity)
        self._flush()

    def send(self, frames: Frames, *, at_once: bool = False) -> None:
        """Queue one message (`[payload]`); it leaves at the end of this loop turn, with the others queued in it.
        `at_once`: if nothing is queued before it, it leaves now, alone."""
        stream = self._stream
        if at_once and not self._queued and stream is not None and not stream.out:
            stream.write(frames[0])
            return
        self._queued.append(frames)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        stream = self._stream
        if stream is None or not self._queued:
            return
        queued, self._queued = self._queued, []
        if self.pack is not None and len(queued) > 1:
            packed = self.pack(queued)
            if len(packed[0]) <= MAX_FRAME:
                queued = [packed]
        for frames in queued:
            stream.write(frames[0])

    def _readable(self) -> None:
        stream = self._stream
        for _ in range(PASSES_AT_ONCE):
            if stream is None or stream.closed:
                return
            frames: list[bytes] = []
            try:
                open_ = stream.receive(frames)
            except (FrameError, OSError) as exc:
                self._broken(stream, str(exc))
                return
            if frames:
                self._handle([[payload] for payload in frames])
            if not open_:
                self._broken(stream, "the daemon closed the connection")
                return
            if not frames:
                return

    def _broken(self, stream: Stream, why: str) -> None:
        if stream.closed:
            return
        stream.close()
        if not self._closed:
            self._on_closed(why)

    def flush(self) -> None:
        """Write what is queued now, as far as the socket takes it (used just before closing)."""
        self._flush()

    def close(self, linger_ms: int = 0) -> None:
        """Close; bytes the socket has not taken yet get up to `linger_ms` to leave."""
        self._closed = True
        stream = self._stream
        if stream is None or stream.closed:
            return
        if stream.out and linger_ms > 0:
            try:
                stream.sock.setblocking(True)
                stream.sock.settimeout(linger_ms / 1000)
                stream.sock.sendall(stream.out)
            except OSError:
                pass
        stream.close()
