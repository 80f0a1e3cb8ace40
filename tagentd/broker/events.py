"""`EventBus`: the events.sock ROUTER — prefix subscriptions with bounded queues and counted drops.

A subscriber connects a DEALER and sends `Subscribe{prefixes}`, renewed every
RENEW_EVERY seconds; one not heard from for EXPIRE_AFTER seconds is forgotten.
The daemon sends the matching `EventRecord`s of each publish to each subscriber
in frames (a msgpack array of up to FRAME_EVENTS records), with NOBLOCK on a
ROUTER_MANDATORY socket whose per-peer queue is bounded (`sndhwm`, in frames), so:

- a subscriber that does not read never blocks the daemon: once its queue is
  full a send raises EAGAIN, the frame's events are dropped *for that
  subscriber* and counted, and the rest of that publish skips it without trying;
- drops are reported: in `stats` and, about every second, as a
  `broker.dropped` event to that subscriber (once its queue has room);
- a new subscription is confirmed with a `broker.subscribed` event, so a
  subscriber knows from when on it is receiving.

`wait` serves `ctx.wait_for_event`: a future resolved by the next matching event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import zmq

from tagent_client.wire import protocol_broker as b
from tagent_client.wire.protocol import EventRecord
from tagentd.plumbing.channel import Channel

log = logging.getLogger("tagentd.topics")

QUEUE_LIMIT = 200        # frames queued per subscriber before drops start (the socket's sndhwm)
FRAME_EVENTS = 500       # events per frame at most: a full queue holds at most 100,000 events
_encoder = msgspec.msgpack.Encoder()


class Subscriber:
    __slots__ = ("identity", "prefixes", "since", "last_seen", "delivered", "dropped", "reported", "blocked")

    def __init__(self, identity: bytes, prefixes: tuple[str, ...], now: float) -> None:
        self.identity = identity
        self.prefixes = prefixes
        self.since = now
        self.last_seen = now
        self.delivered = 0
        self.dropped = 0
        self.reported = 0
        self.blocked = False


#: Distinct topics whose publications are counted by name (metrics); any further topic is counted as OTHER_TOPIC.
MAX_TOPICS = 256
OTHER_TOPIC = "_other"


class EventBus:
    """Subscribers on events.sock and waiters of wait_for_event; only the daemon's loop uses it."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.channel = Channel(sock)
        self.subscribers: dict[bytes, Subscriber] = {}
        self.waiters: list[tuple[str, asyncio.Future[Any]]] = []
        self.stats = {"events_published": 0, "events_delivered": 0, "events_dropped": 0, "bad_subscriber_frames": 0}
        #: Events published per topic, for at most MAX_TOPICS topics (the first seen), the rest under OTHER_TOPIC.
        self.published_by_topic: dict[str, int] = {}

    @classmethod
    def bind(cls, zctx: zmq.Context, endpoint: str) -> EventBus:
        sock = zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.sndhwm = QUEUE_LIMIT
        sock.rcvhwm = 1000
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
        sock.bind(endpoint)
        return cls(sock)

    def start(self) -> None:
        self.channel.start(self._on_batch)

    def close(self) -> None:
        for _, future in self.waiters:
            if not future.done():
                future.cancel()
        self.channel.close()

    # -- subscribers ------------------------------------------------------------------------------------

    def _on_batch(self, batch: list[list[bytes]]) -> None:
        now = time.monotonic()
        for frames in batch:
            if len(frames) != 2:
                self.stats["bad_subscriber_frames"] += 1
                continue
            identity, payload = frames
            try:
                message = b.subscriber_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                self.stats["bad_subscriber_frames"] += 1
                continue
            if isinstance(message, b.Unsubscribe):
                self.subscribers.pop(identity, None)
                continue
            prefixes = tuple(p for p in message.prefixes if isinstance(p, str))
            sub = self.subscribers.get(identity)
            if sub is None or sub.prefixes != prefixes:
                sub = sub or Subscriber(identity, prefixes, now)
                sub.prefixes = prefixes
                self.subscribers[identity] = sub
                self._notice(sub, "broker.subscribed", {"prefixes": list(prefixes)})
            sub.last_seen = now

    def _notice(self, sub: Subscriber, topic: str, data: dict[str, Any]) -> bool:
        record = EventRecord(seq=0, ts=time.time(), topic=topic, data=data)
        try:
            self.sock.send_multipart([sub.identity, _encoder.encode([record])], zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError:
            self.subscribers.pop(sub.identity, None)
            return False
        finally:
            self.channel.rearm()
        return True

    def tick(self, now: float) -> None:
        """Forget silent subscribers; tell the others how many events they lost since the last notice."""
        for identity, sub in list(self.subscribers.items()):
            if now - sub.last_seen > b.EXPIRE_AFTER:
                del self.subscribers[identity]
                log.info("subscriber %s expired (no renewal for %.0fs; %d dropped)", identity.hex(), b.EXPIRE_AFTER, sub.dropped)
            elif sub.dropped > sub.reported:
                lost = sub.dropped - sub.reported
                if self._notice(sub, "broker.dropped", {"dropped": lost, "total": sub.dropped}):
                    sub.reported = sub.dropped

    # -- publishing -------------------------------------------------------------------------------------------

    def publish(self, records: list[EventRecord]) -> None:
        """Send each record to every subscriber whose prefixes match, and wake matching waiters. Never blocks."""
        if not records:
            return
        self.stats["events_published"] += len(records)
        by_topic = self.published_by_topic
        for record in records:
            topic = record.topic if record.topic in by_topic or len(by_topic) < MAX_TOPICS else OTHER_TOPIC
            by_topic[topic] = by_topic.get(topic, 0) + 1
        if self.waiters:
            self._wake(records)
        subscribers = list(self.subscribers.values())
        if not subscribers:
            return
        raws: list[msgspec.Raw | None] = [None] * len(records)  # each record encoded once, for every subscriber
        for sub in subscribers:
            prefixes = sub.prefixes
            wanted: dict[str, bool] = {}  # topics repeat within a batch
            chunk: list[int] = []
            for index, record in enumerate(records):
                topic = record.topic
                match = wanted.get(topic)
                if match is None:
                    match = wanted[topic] = any(topic.startswith(p) for p in prefixes)
                if match:
                    chunk.append(index)
                    if len(chunk) >= FRAME_EVENTS:
                        self._send_batch(sub, chunk, records, raws)
                        chunk = []
            if chunk:
                self._send_batch(sub, chunk, records, raws)
            sub.blocked = False
        self.channel.rearm()

    def _send_batch(self, sub: Subscriber, chunk: list[int], records: list[EventRecord],
                    raws: list[msgspec.Raw | None]) -> None:
        """One frame of events to one subscriber, or count them dropped (it is full, or gone).

        The identity frame goes first: with ROUTER_MANDATORY a full or gone peer fails right there, so the
        events of a subscriber that does not read are never even encoded.
        """
        if not sub.blocked:
            try:
                self.sock.send(sub.identity, zmq.SNDMORE | zmq.NOBLOCK)
            except zmq.Again:
                sub.blocked = True  # the rest of this publish skips it without trying
            except zmq.ZMQError:  # EHOSTUNREACH: it disconnected
                sub.blocked = True
                self.subscribers.pop(sub.identity, None)
                return
            else:
                frame = []
                for index in chunk:
                    raw = raws[index]
                    if raw is None:
                        raw = raws[index] = msgspec.Raw(_encoder.encode(records[index]))
                    frame.append(raw)
                self.sock.send(_encoder.encode(frame), zmq.NOBLOCK)
                sub.delivered += len(chunk)
                self.stats["events_delivered"] += len(chunk)
                return
        sub.dropped += len(chunk)
        self.stats["events_dropped"] += len(chunk)

    def wait(self, prefix: str) -> asyncio.Future[Any]:
        """A future resolved with the next published record whose topic starts with `prefix`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append((prefix, future))
        return future

    def _wake(self, records: list[EventRecord]) -> None:
        kept = []
        for prefix, future in self.waiters:
            if future.done():
                continue
            hit = next((r for r in records if r.topic.startswith(prefix)), None)
            if hit is not None:
                future.set_result(hit)
            else:
                kept.append((prefix, future))
        self.waiters = kept

    def info(self, now: float) -> list[b.SubscriberInfo]:
        return [b.SubscriberInfo(id=s.identity.hex(), prefixes=list(s.prefixes), delivered=s.delivered,
                                 dropped=s.dropped, age_s=now - s.since) for s in self.subscribers.values()]
