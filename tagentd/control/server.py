"""control.sock: every request gets exactly one reply, sent after the daemon's next commit.

`ControlServer` owns the socket. For each message it receives it sends one
`Reply` or `ErrorReply`, whatever the message is:

- more or fewer than one frame, or a frame that does not decode: `protocol`
  (counted in `bad_frames`);
- a frame over `max_message_bytes`: `request_too_large` (counted in
  `requests_too_large` and logged). ZeroMQ itself discards frames over twice
  that (MAXMSGSIZE, a memory guard) and drops the sender's connection: those
  never reach the daemon, and a tagent client refuses them before sending;
- a name too long or data nested too deeply (bounds.py): `name_too_long` /
  `invalid_request`;
- while the state dir cannot be written (tagentd/storage/health.py): `disk_full` (or
  `config`) at once, and nothing changes — except for the requests in
  `control.ANSWERED_AT_ONCE` (ping, status, shutdown, metrics), which report nothing
  that must be on disk and are answered at once, commit or not;
- otherwise what the request's handler (handlers.py) returns or raises, turned
  into the reply by router.py (the one request -> reply path).

Replies are never dropped on a full queue: the socket's send queue is
unbounded (SNDHWM 0), so memory, not a silent drop, bounds a client that does
not read — and the clients bound their requests in flight (AsyncClient's
window). A reply for a peer that has gone is counted (`replies_dropped`).
Each request carries its sender's OS credentials as `req.peer` (tagentd/plumbing/peers.py).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import zmq

from tagent_client import bounds
from tagent_client.errors import RequestTooLarge, TagentError
from tagent_client.wire import protocol as p
from tagentd.control import handlers as control
from tagentd.control.porter import control_socket
from tagentd.control.router import Deliver, Router
from tagentd.plumbing import peers
from tagentd.plumbing.channel import Channel, Frames
from tagentd.plumbing.ports import ReplyAfterCommit
from tagentd.storage.health import StoreHealth

log = logging.getLogger("tagentd.control")

class ControlReplyShape:
    """A `Reply` / `ErrorReply` to one control request (router.py's `Shape`)."""

    __slots__ = ("name", "req")

    def __init__(self, req: p.Request) -> None:
        self.req = req
        self.name = type(req).__name__

    def ok(self, result: Any) -> bytes:
        return p.encode(p.Reply(id=self.req.id, result=result))

    def error(self, exc: TagentError) -> bytes:
        return p.encode(_error(self.req, exc))


class ControlServer:
    """The daemon's control socket: decode, check, dispatch, reply once."""

    def __init__(self, *, ports: control.Ports, router: Router, health: StoreHealth, stats: dict[str, Any],
                 max_bytes: int, reply_after_commit: ReplyAfterCommit) -> None:
        self.ports = ports
        self.router = router
        self.health = health
        self.max_bytes = max_bytes
        self.reply_after_commit = reply_after_commit
        self.stats = stats
        for counter in ("requests", "bad_frames", "requests_too_large"):
            self.stats.setdefault(counter, 0)
        self.sock: zmq.Socket | None = None
        self.channel: Channel | None = None

    def bind(self, zctx: zmq.Context, endpoint: str) -> None:
        self.attach(control_socket(zctx, endpoint, self.max_bytes))

    def attach(self, sock: zmq.Socket) -> None:
        """Serve `sock`, a control socket already bound (porter.control_socket), from `start` on."""
        self.sock = sock
        self.channel = Channel(sock, peers=True, name="control.sock")

    def start(self, held: list[Frames] | None = None, pings: int = 0) -> None:
        """Answer requests from now on: first `held` (what arrived while the daemon loaded, porter.py), in order;
        `pings` were answered meanwhile and count as requests."""
        assert self.channel is not None
        self.stats["requests"] += pings
        if held:
            self._on_batch(held)
        self.channel.start(self._on_batch)

    @property
    def replies_dropped(self) -> int:
        return self.channel.dropped_sends if self.channel is not None else 0

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    # -- requests --------------------------------------------------------------------------------

    def _on_batch(self, batch: list[Frames]) -> None:
        for frames in batch:
            try:
                self._on_request(frames)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the control loop
                self.stats["bad_frames"] += 1
                log.exception("could not handle a control frame of %d part(s)", len(frames))
                message = f"internal error handling the request: {exc}"
                self._reply(frames[0], p.ErrorReply(id=0, code="error", message=message))

    def _reply(self, identity: bytes, message: msgspec.Struct) -> None:
        assert self.channel is not None
        self.reply_after_commit(self.channel, [identity, p.encode(message)])

    def _on_request(self, frames: Frames) -> None:
        self.stats["requests"] += 1
        identity = frames[0]
        if len(frames) != 2:
            self.stats["bad_frames"] += 1
            self._reply(identity, p.ErrorReply(id=0, code="protocol",
                                               message=f"expected 1 frame per request, got {len(frames) - 1}"))
            return
        peer = peers.parse(getattr(frames, "peer", None))
        try:
            req = p.decode_request(frames[1], self.max_bytes)
        except RequestTooLarge as exc:
            self.stats["requests_too_large"] += 1
            log.warning("refused a request of %d bytes from %s: over max_message_bytes (%d)", len(frames[1]),
                        f"uid={peer.uid} pid={peer.pid}" if peer else "a client", self.max_bytes)
            self._reply(identity, p.ErrorReply(id=p.peek_id(frames[1]), code=exc.code, message=exc.message,
                                               details=exc.details))
            return
        except TagentError as exc:
            self.stats["bad_frames"] += 1
            self._reply(identity, p.ErrorReply(id=p.peek_id(frames[1]), code=exc.code, message=exc.message))
            return
        req.peer = peer
        try:
            bounds.check_request(req)
        except TagentError as exc:
            self._reply(identity, _error(req, exc))
            return
        handler, args = control.route(self.ports, req)
        if control.answered_at_once(req):  # reports nothing that must be on disk: no commit to wait for
            self.router.serve(handler, args, ControlReplyShape(req), lambda reply: self._send_now(identity, reply))
            return
        if self.health.failing:  # its reply would wait for a commit that cannot happen: refuse, change nothing
            self._send_now(identity, p.encode(_error(req, self.health.refusal())))
            return
        self.router.serve(handler, args, ControlReplyShape(req), self._after_commit(identity, req))

    def _send_now(self, identity: bytes, reply: bytes) -> None:
        assert self.channel is not None
        self.channel.send([identity, reply])

    def _after_commit(self, identity: bytes, req: p.Request) -> Deliver:
        """Deliver the reply after the next commit; a parked read ends with the store's error if writes fail by then."""
        assert self.channel is not None
        channel = self.channel

        def deliver(reply: bytes) -> None:
            if self.health.failing and isinstance(req, control.PARKED_READS):  # it changed nothing: no need to wait
                self._send_now(identity, p.encode(_error(req, self.health.refusal())))
                return
            self.reply_after_commit(channel, [identity, reply])
        return deliver


def _error(req: p.Request, exc: TagentError) -> p.ErrorReply:
    details = dict(exc.details)
    if hasattr(exc, "problems"):
        details.update(pipeline=getattr(exc, "pipeline", "?"), problems=exc.problems)
    return p.ErrorReply(id=req.id, code=exc.code, message=exc.message, details=details)
