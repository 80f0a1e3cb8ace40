"""`Channel`: a ZeroMQ socket driven by the asyncio loop through its ZMQ_FD, in batches.

ZMQ_FD is edge-triggered: it says *something* changed and any send, receive or
EVENTS query resets it. So one pass sends everything queued, receives
everything already there (handing the whole batch to the handler at once), and
re-reads ZMQ_EVENTS before it sleeps — no message ever waits unseen, and the
loop wakes once per batch, not once per message. A socket used this way must
not also be used through zmq.asyncio: both would claim the same FD.

With `pack`, the messages queued when a pass sends are sent as the one message `pack` makes of them (the
worker's link packs a loop turn's messages into one frame: tagentd/worker/wire.py `Batch`).

A send is dropped only when ZeroMQ refuses it for good (a ROUTER_MANDATORY
peer that is gone); each drop is counted (`dropped_sends`) and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from tagentd.plumbing.peers import receive

MAX_DRAIN = 1000  # messages handled per pass before letting other tasks run

log = logging.getLogger("tagentd.channel")

Frames = list[bytes]


class Channel:
    """Batched, non-blocking sends and receives on one socket, from the running event loop only.

    With `peers`, each received message is a `peers.Received` that carries its sender's `peer_property`: by default
    "Peer-Address" (on ipc: the connecting process's uid, gid and pid; see peers.py); "User-Id" is the name a
    ZAP handler gave the sender's connection (on a CURVE socket: whose key it is).
    """

    def __init__(self, sock: zmq.Socket, *, multipart: bool = True, peers: bool = False, name: str = "socket",
                 peer_property: str = "Peer-Address", pack: Callable[[list[Frames]], Frames] | None = None) -> None:
        self.sock = sock
        self.pack = pack
        self.multipart = multipart
        self.peers = peers
        self.peer_property = peer_property
        self.name = name
        self.dropped_sends = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: Callable[[list[Frames]], None] = lambda batch: None
        self._out: deque[Frames] = deque()
        self._scheduled = False
        self._fd: int | None = None

    def start(self, handle: Callable[[list[Frames]], None]) -> None:
        """Call `handle(batch)` with every batch of received messages from now on."""
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        self._fd = self.sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._service)  # served in the loop turn that saw the FD, not one later
        self._schedule()

    def send(self, frames: Frames) -> None:
        """Queue one message; it leaves on the next pass (or as soon as the peer accepts it)."""
        self._out.append(frames)
        self._schedule()

    def send_now(self, frames: Frames) -> bool:
        """Send at once, without queueing; False if the peer cannot take it (gone, or full)."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            self._schedule()
            return False
        self._look()  # the send reset the FD's edge: look again
        return True

    def rearm(self) -> None:
        """Look at the socket again soon: call after sending on `sock` directly (a send resets the FD's edge)."""
        self._schedule()

    def _look(self) -> None:
        """Schedule a pass if one is needed now: a message waits, or queued ones may leave (ZMQ_EVENTS, which also
        re-arms the FD's edge) — without a pass of its own when there is nothing to do."""
        if self._scheduled or self.sock.closed:
            return  # the pass to come looks anyway
        events = self.sock.getsockopt(zmq.EVENTS)
        if events & zmq.POLLIN or (self._out and events & zmq.POLLOUT):
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _service(self) -> None:
        self._scheduled = False
        sock = self.sock
        if sock.closed:
            return
        if self.pack is not None and len(self._out) > 1:
            merged = self.pack(list(self._out))
            self._out.clear()
            self._out.append(merged)
        while self._out:
            try:
                sock.send_multipart(self._out[0], zmq.NOBLOCK)
            except zmq.Again:
                break  # the peer is not reading; POLLOUT will signal the FD
            except zmq.ZMQError as exc:
                self._dropped(exc)  # e.g. a ROUTER peer that went away
            self._out.popleft()
        batch: list[Frames] = []
        for _ in range(MAX_DRAIN):
            try:
                batch.append(self._receive(sock))
            except zmq.Again:
                break
        if batch:
            self._handle(batch)
        if len(batch) >= MAX_DRAIN:
            self._schedule()
            return
        if sock.closed:
            return
        events = sock.getsockopt(zmq.EVENTS)
        if events & zmq.POLLIN or (self._out and events & zmq.POLLOUT):
            self._schedule()

    def _receive(self, sock: zmq.Socket) -> Frames:
        if self.peers:
            return receive(sock, self.peer_property)
        return sock.recv_multipart(zmq.NOBLOCK) if self.multipart else [sock.recv(zmq.NOBLOCK)]

    def _dropped(self, exc: zmq.ZMQError) -> None:
        self.dropped_sends += 1
        log.info("%s: a message could not be delivered (%s); %d dropped so far", self.name, exc.strerror,
                 self.dropped_sends)

    def flush(self) -> None:
        """Send what is queued now, as far as the peer takes it (used just before closing)."""
        while self._out:
            try:
                self.sock.send_multipart(self._out.popleft(), zmq.NOBLOCK)
            except zmq.ZMQError:
                break

    def close(self, linger_ms: int = 0) -> None:
        if self._loop is not None and self._fd is not None and not self.sock.closed:
            self._loop.remove_reader(self._fd)
        self.sock.close(linger=linger_ms)
