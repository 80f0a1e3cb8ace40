"""`Channel`: a ZeroMQ socket driven by the asyncio loop through its ZMQ_FD, in batches.

ZMQ_FD is edge-triggered: it says *something* changed and any send, receive or
EVENTS query resets it. So one pass sends everything queued, receives
everything already there (handing the whole batch to the handler at once), and
re-reads ZMQ_EVENTS before it sleeps unless nothing touched the socket since it
last read them — no message ever waits unseen, and the loop wakes once per
batch, not once per message. The pass runs in the loop turn the FD fires in
(not one turn later), and what arrived while its handler ran is served by the
same callback, before whatever the loop queued meanwhile (PASSES_AT_ONCE). Each ZMQ_EVENTS query costs libzmq a poll of its command
pipe (two syscalls), so a pass asks only what it must: one the FD started
receives at once (the FD fires for a message almost every time; for anything
else the receive fails, which pyzmq raises, and the pass goes on as usual),
then receives only while ZMQ_EVENTS says a message is there; `send_now`
re-reads ZMQ_EVENTS itself instead of costing the loop another pass. A socket
used this way must not also be used through zmq.asyncio: both would claim the
same FD.

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
#: Passes one callback may run back to back: what arrived while a handler ran (say, during its send, which on a
#: busy machine often hands the CPU to the I/O threads and the peer for a while) is served at once, before the
#: callbacks the loop queued meanwhile (a commit's encoding and write, which would delay it by a whole turn).
PASSES_AT_ONCE = 4
# ZMQ_EVENTS bits as plain ints: pyzmq's flag enums make every `&` a call into the enum machinery.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK

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
        #: Receives that found nothing: the FD fired for something other than a message (see the module docstring).
        self.empty_receives = 0
        self._touched = False  # a send or receive since ZMQ_EVENTS was last read: the FD's edge may be spent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: Callable[[list[Frames]], None] = lambda batch: None
        self._out: deque[Frames] = deque()
        self._scheduled = False
        self._servicing = False
        self._fd: int | None = None

    def start(self, handle: Callable[[list[Frames]], None]) -> None:
        """Call `handle(batch)` with every batch of received messages from now on."""
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        self._fd = self.sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._readable)
        self._schedule()

    def send(self, frames: Frames, *, at_once: bool = False) -> None:
        """Queue one message; it leaves on the next pass (or as soon as the peer accepts it).

        `at_once`: if nothing is queued before it and the peer takes it, it leaves now, alone, one loop turn
        sooner (for a sender that knows nothing else of this turn will follow it)."""
        if at_once and not self._out and self.send_now(frames):
            return
        self._out.append(frames)
        self._schedule()

    def send_now(self, frames: Frames) -> bool:
        """Send at once, without queueing; False if the peer cannot take it (gone, or full)."""
        self._touched = True
        try:
            _send(self.sock, frames)
        except zmq.ZMQError:
            return False
        finally:
            self._look_again()  # the send may have reset the FD's edge
        return True

    def rearm(self) -> None:
        """Look at the socket again soon: call after sending on `sock` directly (a send resets the FD's edge)."""
        self._touched = True
        self._schedule()

    def _look_again(self) -> None:
        """After a send outside a pass: a pass only if ZMQ_EVENTS says there is something to do now (reading it
        re-arms the FD's edge for whatever comes later)."""
        if self._scheduled or self._servicing or self._loop is None or self.sock.closed:
            return
        events = self.sock.get(zmq.EVENTS)
        self._touched = False
        if events & _POLLIN or (self._out and events & _POLLOUT):
            self._schedule()

    def _readable(self) -> None:
        """The FD fired: the pass runs now, in this loop turn, unless one is already due (it will see the same)."""
        if not self._scheduled:
            self._service(fired=True)

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _service(self, fired: bool = False) -> None:
        """Passes until nothing waits (at most PASSES_AT_ONCE, then one more is scheduled). `fired`: the FD fired (a
        message is most likely there: receive it without asking)."""
        self._scheduled = False
        for _ in range(PASSES_AT_ONCE):
            if not self._pass(fired):
                return
            fired = True  # the last look saw a message
        self._schedule()

    def _pass(self, fired: bool) -> bool:
        """Send what is queued, receive what is there, hand it over, and make sure the FD will fire for whatever comes
        next; True when a message arrived meanwhile (serve it now)."""
        sock = self.sock
        if sock.closed:
            return False
        if self.pack is not None and len(self._out) > 1:
            merged = self.pack(list(self._out))
            self._out.clear()
            self._out.append(merged)
        while self._out:
            self._touched = True
            try:
                _send(sock, self._out[0])
            except zmq.Again:
                break  # the peer is not reading; POLLOUT will signal the FD
            except zmq.ZMQError as exc:
                self._dropped(exc)  # e.g. a ROUTER peer that went away
            self._out.popleft()
        batch: list[Frames] = []
        if fired:
            self._touched = True
            try:
                batch.append(self._receive(sock))
            except zmq.Again:  # the FD fired for something else (the receive took the signal: see below)
                self.empty_receives += 1
        if batch or not fired:
            while len(batch) < MAX_DRAIN:
                more = sock.get(zmq.EVENTS) & _POLLIN
                self._touched = False
                if not more:
                    break
                self._touched = True
                try:
                    batch.append(self._receive(sock))
                except zmq.Again:  # not expected after POLLIN, but then the pass is over
                    break
        if batch:
            self._servicing = True  # the handler's sends leave the edge to this pass's last look
            try:
                self._handle(batch)
            finally:
                self._servicing = False
        if len(batch) >= MAX_DRAIN:
            self._schedule()
            return False
        if sock.closed or not (self._touched or self._out):
            return False  # nothing touched the socket since ZMQ_EVENTS said it had nothing: the FD will fire for news
        events = sock.get(zmq.EVENTS)  # the handler may have sent: the edge is re-armed only by reading this
        self._touched = False
        if events & _POLLIN:
            return True
        if self._out and events & _POLLOUT:
            self._schedule()
        return False

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
                _send(self.sock, self._out.popleft())
            except zmq.ZMQError:
                break

    def close(self, linger_ms: int = 0) -> None:
        if self._loop is not None and self._fd is not None and not self.sock.closed:
            self._loop.remove_reader(self._fd)
        self.sock.close(linger=linger_ms)


def _send(sock: zmq.Socket, frames: Frames) -> None:
    """`sock.send_multipart(frames, zmq.NOBLOCK)` without pyzmq's per-call checks of each frame and its flag enums
    (about half of a send's cost here, paid by every step hand-off). Raises as that would: zmq.Again or another
    ZMQError at the first frame (a full or gone ROUTER peer), when nothing of the message has left."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _MORE if index < last else _NOBLOCK)
