"""Length-prefixed frames over a Unix-domain stream socket, driven by the asyncio loop: workers.sock.

The daemon and its local workers talk over a plain Unix stream socket that each side's event loop reads and
writes itself (non-blocking `send`/`recv`), not through ZeroMQ: a ZeroMQ send wakes the sender's I/O thread,
which writes, and the receiver's I/O thread, which wakes the receiver — three threads to schedule per hop where
this needs one (on two cores each waited 40-120 µs for a CPU). Remote workers (tcp with CURVE) stay on ZeroMQ
(tagentd/plumbing/worker_sockets.py routes each worker's replies to the socket it spoke on).

The stream: each frame is a 4-byte big-endian length, then that many bytes. A connection's first frame is the
worker's identity (`w<id>.<token>`, what a ZeroMQ DEALER would have announced, 1-255 bytes); each later frame is
one worker-protocol message (tagentd/worker/wire.py), which the daemon's handler gets as `[identity, payload]`,
as from a ROUTER socket.

Guarantees (`FrameListener`, the daemon's side; both sides for the stream itself):
- the loop is never blocked: a send writes what the socket takes at once and buffers the rest, which leaves,
  in order, as the socket becomes writable; receives drain what is there in batches (each batch handed to the
  handler at once, at most MAX_DRAIN frames), and what arrived while the handler ran is served by the same
  callback, up to PASSES_AT_ONCE times, before whatever the loop queued meanwhile;
- frames arrive whole and in order, however the kernel splits the bytes; a frame whose length is over
  MAX_FRAME (or a connection that starts with anything but a valid identity) closes that connection, with one
  log line saying what came from which process (pid) and what to do, counted in `stats`
  (`worker_frames_refused`); the daemon never sends an oversized frame (it is dropped, counted and logged), and a
  worker packs a loop turn's messages into one frame only while that fits (its link refuses to encode a single
  message over the limit: tagentd/worker/link.py);
- only processes of the daemon's own uid are accepted (SO_PEERCRED on each accepted connection; the socket file
  is 0600 in a 0700 dir besides); any other is closed at once, counted (`worker_peers_refused`) and logged;
- a message for a worker that is not connected (it never was, or it is gone) is not delivered: `send_now` says
  so (False; nothing of it left), and `send` drops it, counts it (`dropped_sends`) and logs it — what ZeroMQ's
  ROUTER_MANDATORY did; a connection that ends loses nothing already handed over and hands nothing over twice:
  whatever complete frames arrived before its end are handed over once, a torn last frame is discarded (its
  sender died writing it; the daemon learns of the death from the process, tagentd/executor/workers.py);
- the worker's side, `FrameLink`, is in framed_link.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable

from tagentd.plumbing.channel import MAX_DRAIN, PASSES_AT_ONCE, Frames

#: The largest frame either side sends or accepts: 4x the largest record the WAL writes (MAX_RECORD, 256 MiB),
#: so anything a step can hand the daemon to keep fits, and a corrupt or foreign length is caught at once.
MAX_FRAME = 1 << 30
MAX_IDENTITY = 255  # what ZeroMQ allowed a socket identity
#: Bytes asked of one recv. Under glibc's mmap threshold (128 KiB): Python allocates the whole size before each recv
#: (also one that finds nothing), and a larger buffer is mapped and unmapped every time (~28 µs, measured).
READ_SIZE = 64 * 1024
_HEADER = struct.Struct(">I")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SMALL = 64 * 1024  # below this a frame is copied behind its header (one send); above, sent from its own buffer

log = logging.getLogger("tagentd.channel")


class FrameError(Exception):
    """The stream cannot be read on: what is wrong with it (one line)."""


class FrameReader:
    """Whole frames out of a byte stream, however it is split."""

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the start of a frame not complete yet
        self._need = 0  # bytes `_buffer` must hold before another frame can be complete

    def feed(self, data: bytes, out: list[bytes]) -> None:
        """Append to `out` every frame `data` completes, in order; raises FrameError on a length over MAX_FRAME."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return
            data, self._buffer = bytes(self._buffer), bytearray()
        pos, end = 0, len(data)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(data, pos)
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes announced (the limit is {MAX_FRAME})"
                                 + (": a ZeroMQ peer?" if data[pos] == 0xFF else ""))
            stop = pos + 4 + size
            if stop > end:
                break
            out.append(data[pos + 4:stop])
            pos = stop
        if pos < end:
            self._buffer += data[pos:]
            self._need = 4 if end - pos < 4 else 4 + _HEADER.unpack_from(data, pos)[0]

    @property
    def torn(self) -> int:
        """Bytes of an incomplete frame held (what an ended stream loses)."""
        return len(self._buffer)


def frame(payload: bytes) -> bytes:
    """`payload` with its length before it, as it goes on the stream."""
    return _HEADER.pack(len(payload)) + payload


class Stream:
    """One connected, non-blocking socket on the loop (either side's): its reader, and the bytes waiting for it to
    become writable. Frames written leave whole and in order; `on_broken(stream, why)` is called when a write finds
    the peer gone (the owner closes the stream then)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, pid: int | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.pid = pid
        self.reader = FrameReader()
        self.out = bytearray()
        self.closed = False
        self.identity: bytes | None = None
        self.on_broken: Callable[[Stream, str], None] = lambda stream, why: None

    def write(self, payload: bytes) -> bool:
        """Send one frame now, buffering what the socket does not take; False if the connection is gone (then
        nothing of it left)."""
        if self.closed:
            return False
        if self.out:  # earlier bytes wait for the socket: this one follows them
            self.out += _HEADER.pack(len(payload))
            self.out += payload
            return True
        size = len(payload) + 4
        try:
            if size <= _SMALL:
                data = _HEADER.pack(len(payload)) + payload
                sent = self.sock.send(data)
            else:
                data = b""
                sent = self.sock.sendmsg([_HEADER.pack(len(payload)), payload])
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
            self.on_broken(self, exc.strerror or str(exc))
            return False
        if sent < size:
            rest = memoryview(data)[sent:] if data else memoryview(_HEADER.pack(len(payload)) + payload)[sent:]
            self.out += rest
            self.loop.add_writer(self.fd, self._writable)
        return True

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.on_broken(self, exc.strerror or str(exc))
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.fd)

    def receive(self, frames: list[bytes]) -> bool:
        """Read what is there (at most MAX_DRAIN frames' worth) into `frames`; False once the peer has closed.
        Raises FrameError (see FrameReader.feed) and OSError."""
        while len(frames) < MAX_DRAIN:
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                return True
            if not data:
                return False
            self.reader.feed(data, frames)
            if len(data) < READ_SIZE:  # the socket had no more: saves the recv that would say so
                return True
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self.out:
            self.loop.remove_writer(self.fd)
        self.sock.close()


class FrameListener:
    """workers.sock, the daemon's side: accepts local workers, hands their messages over as `[identity, payload]`,
    sends to each by identity. Used from the running loop only, like `Channel` (whose `send`/`send_now` it has)."""

    def __init__(self, path: str, stats: dict[str, int], name: str = "workers.sock") -> None:
        """Bind and listen at `path` (a stale socket file there is replaced: the caller holds the daemon's lock)."""
        self.path = path
        self.name = name
        self.stats = stats
        self.dropped_sends = 0
        for key in ("worker_frames_refused", "worker_peers_refused"):
            stats.setdefault(key, 0)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock.bind(path)
        self.sock.listen(socket.SOMAXCONN)
        self._uid = os.getuid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: Callable[[list[Frames]], None] = lambda batch: None
        self._routes: dict[bytes, Stream] = {}  # identity -> its connection
        self._streams: set[Stream] = set()

    def start(self, handle: Callable[[list[Frames]], None]) -> None:
        """Accept workers and call `handle(batch)` with each batch of `[identity, payload]` messages from now on."""
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        self._loop.add_reader(self.sock.fileno(), self._accept)

    @property
    def connected(self) -> int:
        """Workers connected and identified."""
        return len(self._routes)

    def _accept(self) -> None:
        assert self._loop is not None
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the connection waits in the backlog
                log.warning("%s: cannot accept a worker's connection (%s)", self.name, exc.strerror)
                return
            sock.setblocking(False)
            pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
            if uid != self._uid:
                self.stats["worker_peers_refused"] += 1
                log.warning("%s: refused a connection from pid %d of uid %d: only processes of uid %d may join; "
                            "check who can reach %s", self.name, pid, uid, self._uid, self.path)
                sock.close()
                continue
            stream = Stream(sock, self._loop, pid)
            stream.on_broken = self._ended
            self._streams.add(stream)
            self._loop.add_reader(stream.fd, self._readable, stream)

    def _readable(self, stream: Stream) -> None:
        """Passes until nothing waits (at most PASSES_AT_ONCE; the loop calls again while there is more)."""
        for _ in range(PASSES_AT_ONCE):
            frames: list[bytes] = []
            why = "closed by the worker"
            try:
                open_ = stream.receive(frames)
            except FrameError as exc:
                self._refuse(stream, str(exc))
                return
            except OSError as exc:  # ECONNRESET: as an end, after the frames read before it
                open_, why = False, exc.strerror or str(exc)
            if frames and stream.identity is None and not self._identify(stream, frames.pop(0)):
                return
            if frames:
                identity = stream.identity
                self._handle([[identity, payload] for payload in frames])
            if not open_:
                self._ended(stream, why)
                return
            if not frames or stream.closed or len(frames) >= MAX_DRAIN:
                return

    def _identify(self, stream: Stream, identity: bytes) -> bool:
        """A connection's first frame names it; False (and closed) if it cannot."""
        if not 0 < len(identity) <= MAX_IDENTITY or identity[0] == 0:
            self._refuse(stream, f"its first frame ({len(identity)} bytes) is not a worker identity")
            return False
        if identity in self._routes:
            self._refuse(stream, f"identity {identity[:24]!r} is already connected (pid "
                                 f"{self._routes[identity].pid})")
            return False
        stream.identity = identity
        self._routes[identity] = stream
        return True

    def _refuse(self, stream: Stream, what: str) -> None:
        self.stats["worker_frames_refused"] += 1
        log.warning("%s: closed the connection of pid %s (%s): %s; a tagentd worker of another version, or not a "
                    "worker? Stop that process; the daemon replaces its own workers", self.name, stream.pid,
                    (stream.identity or b"?")[:24], what)
        self._ended(stream, what)

    def _ended(self, stream: Stream, why: str) -> None:
        if stream.closed:
            return
        if stream.reader.torn:
            log.info("%s: pid %s left with %d bytes of a frame unread (%s)", self.name, stream.pid,
                     stream.reader.torn, why)
        stream.close()
        self._streams.discard(stream)
        if stream.identity is not None and self._routes.get(stream.identity) is stream:
            del self._routes[stream.identity]

    def send_now(self, frames: Frames) -> bool:
        """Send `[identity, payload]` at once; False if that worker is not connected (nothing of it left)."""
        stream = self._routes.get(frames[0])
        if stream is None:
            return False
        if len(frames[1]) > MAX_FRAME:
            self._dropped(frames[0], f"{len(frames[1])} bytes, over the limit of {MAX_FRAME}")
            return False
        return stream.write(frames[1])

    def send(self, frames: Frames) -> None:
        """Send `[identity, payload]`; a message for a worker that is not connected is dropped and counted."""
        if not self.send_now(frames):
            self._dropped(frames[0], "no such worker connected")

    def _dropped(self, identity: bytes, why: str) -> None:
        self.dropped_sends += 1
        log.info("%s: a message for %r could not be delivered (%s); %d dropped so far", self.name, identity[:24],
                 why, self.dropped_sends)

    def close(self) -> None:
        """Close every connection and the listening socket (the file is the caller's to remove)."""
        for stream in list(self._streams):
            self._ended(stream, "the daemon is stopping")
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
