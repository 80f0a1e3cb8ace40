"""`Porter`: control.sock's door while the daemon loads — a ping is answered at once, every other request waits.

Most of the daemon's start-up is importing and building what its requests need (the engine, the stores and
their recovery, the broker, the executor). The daemon binds control.sock as soon as it holds its lock and knows
its settings (tagentd/app/launch.py), and a porter thread answers pings on it from then on, while the main
thread loads the rest. A ping says only that this daemon is alive and which limits it enforces, both known by
then; anything else needs what is still loading, so it waits for it.

Guarantees:
- a well-formed `ping` gets the reply `handlers.ping` would give (`ping_result` is that reply);
- every other message (a request, a bad frame) is held, in the order it arrived, and answered by the
  ControlServer once the daemon has loaded, exactly as if it had arrived then (`handover`): nothing is answered
  from a half-built daemon;
- if the start fails instead, every held request gets an `ErrorReply` with the start's error (`fail`), so a
  client waiting on it hears why at once rather than timing out;
- one thread uses the socket at a time: the porter's from `start` until `handover`/`fail` returns, then the
  caller's. The porter imports nothing beyond ZeroMQ, msgspec and the protocol (no asyncio), so that the
  first answer does not wait for more than those.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import zmq

from tagent_client.errors import TagentError
from tagent_client.wire import protocol as p
from tagentd import __version__
from tagentd.plumbing import peers

log = logging.getLogger("tagentd.control")

TRANSPORT_CEILING = 2  # ZeroMQ's MAXMSGSIZE, in multiples of max_message_bytes
FAIL_LINGER_MS = 500  # after a failed start: how long the error replies may take to leave


def ping_result(max_message_bytes: int, load_timeout: float) -> dict[str, Any]:
    """A ping's reply: liveness, and the limits a client must know (request size, how long a submit's import may take)."""
    limits = p.Limits(max_message_bytes=max_message_bytes, load_timeout=load_timeout)
    return {"pid": os.getpid(), "version": __version__, "protocol": p.PROTOCOL_VERSION, "limits": limits}


def control_socket(zctx: zmq.Context, endpoint: str, max_bytes: int) -> zmq.Socket:
    """control.sock, bound: replies never dropped for a slow reader, a reply for a gone peer counted, not lost silently."""
    sock = zctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_CEILING * max_bytes)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply for a gone peer fails (and is counted), not silently
    sock.sndhwm = 0  # never drop a reply because a client reads slowly
    sock.linger = 0
    sock.bind(endpoint)
    return sock


class Porter:
    """Answers pings on `sock` from a thread of its own and holds every other message, until handed over."""

    def __init__(self, sock: zmq.Socket, *, max_bytes: int, load_timeout: float) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.pong = ping_result(max_bytes, load_timeout)
        self.held: list[peers.Received] = []
        self.pings = 0  # answered by the porter (the ControlServer adds them to its request count)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="tagentd-porter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def handover(self) -> list[peers.Received]:
        """Stop answering; the messages held so far, in arrival order. The caller owns the socket from now on."""
        self._stop()
        held, self.held = self.held, []
        return held

    def fail(self, exc: BaseException) -> None:
        """The start failed: answer every held request with `exc` (a TagentError's code and message, else
        `error`), then close the socket, leaving the replies FAIL_LINGER_MS to go. Nothing once handed over."""
        if self._stopping:  # handed over (the ControlServer owns the socket) or failed already
            return
        self._stop()
        if isinstance(exc, TagentError):
            code, message = exc.code, exc.message
        else:
            code, message = "error", f"the daemon failed to start: {exc!r}"
        for frames in self.held:
            reply = p.ErrorReply(id=p.peek_id(frames[-1]) if len(frames) > 1 else 0, code=code, message=message)
            self._send([frames[0], p.encode(reply)])
        self.held = []
        self.sock.close(linger=FAIL_LINGER_MS)

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            os.write(self._wake_w, b"x")
            if self._thread.is_alive():
                self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                return
            while True:
                try:
                    frames = peers.receive(self.sock)
                except zmq.Again:
                    break
                self._on_message(frames)

    def _on_message(self, frames: peers.Received) -> None:
        if len(frames) == 2:
            try:
                req = p.decode_request(frames[1], self.max_bytes)
            except TagentError:
                req = None  # the ControlServer answers it, as it answers every bad frame
            if isinstance(req, p.Ping):
                self._send([frames[0], p.encode(p.Reply(id=req.id, result=self.pong))])
                self.pings += 1
                return
        self.held.append(frames)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client has gone (ROUTER_MANDATORY)
            log.info("control.sock: a reply could not be delivered (%s)", exc.strerror)
