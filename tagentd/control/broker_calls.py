"""A step's broker request (`wire.BrokerCall` on workers.sock) to its handler, and its reply back, once.

The call goes to the broker's handler (tagentd/broker/handlers.py) through the router, with the
step as its caller; the reply goes back to the worker when `BrokerShell.reply` lets it: after the
next commit, so what it reports is on disk, or sooner where nothing it reports needs that (a
non-durable send, a receive of a message already written). Workers re-send a call every second
until it is answered, so:

- a re-send of a call whose reply has not left yet is ignored: it is on its way, and still waits
  for its commit (a commit can take longer than a second: a slow or full disk);
- a re-send of a call whose reply has left is answered again, at once, from a small cache (the last
  ANSWERED_KEEP replies): what it reports is as safe as when it first left, and a lost reply never
  makes a `receive` lease a second message.
"""

from __future__ import annotations

import collections
from typing import Any

from tagent_client.errors import ProtocolError, TagentError
from tagentd.broker.handlers import HANDLERS
from tagentd.broker.service import BrokerShell
from tagentd.control.router import Router
from tagentd.plumbing.channel import Channel
from tagentd.worker import wire

ANSWERED_KEEP = 4096  # worker requests whose reply is kept to answer a re-send again
CallKey = tuple[bytes, int]  # (worker identity, the worker's request number)


class BrokerReplyShape:
    """A `wire.BrokerReply` to one call (router.py's `Shape`); keeps the result, by which `BrokerShell.reply` times it."""

    __slots__ = ("name", "op", "req", "result")

    def __init__(self, call: wire.BrokerCall) -> None:
        self.req = call.req
        self.op = call.op
        self.name = type(call.op).__name__
        self.result: Any = None

    def ok(self, result: Any) -> bytes:
        self.result = result
        return wire.encode(wire.BrokerReply(req=self.req, result=result))

    def error(self, exc: TagentError) -> bytes:
        return wire.encode(wire.BrokerReply(req=self.req, code=exc.code, message=exc.message))


class BrokerCalls:
    """The steps' broker calls: routed once each, answered when the broker says, re-sends answered from a cache."""

    def __init__(self, *, broker: BrokerShell, router: Router, channel: Channel) -> None:
        self.broker = broker
        self.router = router
        self.channel = channel
        self._in_progress: set[CallKey] = set()
        self._answered: collections.OrderedDict[CallKey, bytes] = collections.OrderedDict()

    def on_call(self, identity: bytes, call: wire.BrokerCall) -> None:
        key = (identity, call.req)
        cached = self._answered.get(key)
        if cached is not None:
            self.channel.send([identity, cached])  # a re-send of a reply that has left
            return
        if key in self._in_progress:
            return  # its reply waits for a commit (or a write), not for this re-send
        self._in_progress.add(key)
        shape = BrokerReplyShape(call)
        handler = HANDLERS.get(type(call.op))
        if handler is None:
            self._answer(key, shape, shape.error(ProtocolError(f"unknown broker request {call.op!r:.60}")))
            return
        self.router.serve(handler, (self.broker, call.op, call.caller), shape,
                          lambda payload: self._answer(key, shape, payload))

    def _answer(self, key: CallKey, shape: BrokerReplyShape, payload: bytes) -> None:
        frames = [key[0], payload]

        def send() -> None:
            """The reply leaves: from now on a re-send of the call is answered from the cache."""
            self._in_progress.discard(key)
            self._answered[key] = payload
            while len(self._answered) > ANSWERED_KEEP:
                self._answered.popitem(last=False)
            if not self.channel.send_now(frames):  # now, not a loop turn later; else queued
                self.channel.send(frames)

        self.broker.reply(shape.op, shape.result, send)
