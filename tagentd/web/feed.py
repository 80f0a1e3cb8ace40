"""One subscription to the daemon's events.sock, shared by every browser tab.

The daemon sends each event once to this process, however many tabs are open; each tab's stream
(`Listener`) gets a bounded queue here. Guarantees:
- the subscription is open only while a tab listens (and LINGER seconds after the last one left): a dashboard
  nobody looks at costs the daemon nothing;
- a slow tab never slows the others or the subscription: when its queue is full its events are dropped
  and it is told to reload its data (`resync`), as it is when the daemon dropped events for us
  (`broker.dropped`) or the subscription had to be opened again (the daemon restarted);
- losing the daemon is not an error: the feed retries with a growing delay (at most RETRY_MAX seconds);
- it follows the lifecycle topics (PREFIXES) only, unless a tab shows every topic's rate (the broker page):
  then it follows all of them until that tab leaves. `topics` counts what it saw.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq

from tagent_client.client.subscription import AsyncSubscription
from tagent_client.errors import TagentError
from tagent_client.wire.protocol import EventRecord

log = logging.getLogger("tagentd.web")

#: What the pages follow: runs and steps, the watcher, space changes.
PREFIXES = ("run.", "step.", "steps.", "watch.", "space.")
QUEUE = 2000          # events one tab may have waiting
RETRY_MAX = 5.0       # seconds between two tries to subscribe, at most
LINGER = 10.0         # seconds the subscription stays open after the last tab left
RESYNC: dict[str, Any] = {"topic": "resync"}
EVERYTHING = ("",)
SLIM_TEXT = 300       # characters of a text field of an event sent to a tab
RATE_WINDOW = 60      # seconds of events the topic rates are measured over
RATE_TOPICS = 500     # distinct topics counted per second, at most (the rest count as "(other topics)")


def slim(data: Any) -> Any:
    """What a tab needs of an event's data: its short scalar fields (run, step, attempt, status, error...), not a
    step's whole output (`result`) or a published event's payload."""
    if not isinstance(data, dict):
        return None
    return {k: (v[:SLIM_TEXT] if isinstance(v, str) else v) for k, v in data.items()
            if k != "result" and (v is None or isinstance(v, (str, int, float, bool)))}


class TopicRates:
    """Events per second per topic over the last RATE_WINDOW seconds of what the feed received."""

    def __init__(self) -> None:
        self.seconds: collections.deque[tuple[int, collections.Counter[str]]] = collections.deque()
        self.since = time.monotonic()

    def count(self, topic: str, now: float) -> None:
        second = int(now)
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append((second, collections.Counter()))
            while self.seconds[0][0] <= second - RATE_WINDOW:
                self.seconds.popleft()
        counter = self.seconds[-1][1]
        counter[topic if topic in counter or len(counter) < RATE_TOPICS else "(other topics)"] += 1

    def rates(self, now: float) -> dict[str, Any]:
        """{"window_s": seconds measured, "topics": [{topic, count, per_s}] busiest first}."""
        totals: collections.Counter[str] = collections.Counter()
        for second, counter in self.seconds:
            if second > now - RATE_WINDOW:
                totals.update(counter)
        window = max(1.0, min(float(RATE_WINDOW), now - self.since))
        topics = [{"topic": t, "count": n, "per_s": round(n / window, 2)} for t, n in totals.most_common(100)]
        return {"window_s": round(window, 1), "topics": topics}


class Listener:
    """One tab's stream: the events whose topic starts with one of `prefixes` and, with `run_id`, of that run.
    `rates`: the tab shows every topic's rate, so the feed follows every topic while it listens."""

    def __init__(self, prefixes: Iterable[str], run_id: str | None, rates: bool = False) -> None:
        self.prefixes = tuple(p for p in prefixes if p) or PREFIXES
        self.run_id = run_id
        self.rates = rates
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)

    def wants(self, record: EventRecord) -> bool:
        if not record.topic.startswith(self.prefixes):
            return False
        if self.run_id is None or not record.topic.startswith(("run.", "step.", "steps.")):
            return True
        return isinstance(record.data, dict) and record.data.get("run_id") == self.run_id

    def offer(self, item: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.resync()

    def resync(self) -> None:
        """Drop what waits and tell the tab to reload its data instead."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(RESYNC)


class Feed:
    """The shared subscription and its listeners; `run()` is its task for the life of the process."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.listeners: set[Listener] = set()
        self.connected = False
        self.received = 0
        self.topics = TopicRates()
        self._wanted = asyncio.Event()

    def listen(self, prefixes: Iterable[str] = (), run_id: str | None = None, rates: bool = False) -> Listener:
        listener = Listener(prefixes, run_id, rates)
        self.listeners.add(listener)
        self._wanted.set()
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if not self.listeners:
            self._wanted.clear()

    def prefixes(self) -> tuple[str, ...]:
        """What the subscription follows now: every topic while a tab wants them all, else PREFIXES."""
        return EVERYTHING if any(listener.rates for listener in self.listeners) else PREFIXES

    async def run(self) -> None:
        delay = 0.2
        while True:
            await self._wanted.wait()
            prefixes = self.prefixes()
            if prefixes == EVERYTHING:
                self.topics = TopicRates()  # rates of every topic count from when every topic is followed
            subscription = AsyncSubscription(self.runtime_dir, list(prefixes))
            try:
                await subscription.open()
                self.connected, delay = True, 0.2
                for listener in list(self.listeners):
                    listener.resync()  # what happened while we were not subscribed is only in the daemon's data
                await self._pump(subscription, prefixes)
            except (TagentError, zmq.ZMQError) as exc:
                log.info("events.sock: %s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
            finally:
                self.connected = False
                subscription.close()

    async def _pump(self, subscription: AsyncSubscription, prefixes: tuple[str, ...]) -> None:
        """Hand each event to the listeners that want it, while these prefixes are wanted and someone listens
        (or did less than LINGER seconds ago: a tab moving to another page keeps the subscription)."""
        last_heard = time.monotonic()
        while self.prefixes() == prefixes:
            if self.listeners:
                last_heard = time.monotonic()
            elif time.monotonic() - last_heard > LINGER:
                return
            record = await subscription.get(timeout=0.5)
            if record is None:
                continue
            self.received += 1
            self.topics.count(record.topic, time.monotonic())
            if record.topic == "broker.dropped":
                for listener in list(self.listeners):
                    listener.resync()
                continue
            item = {"seq": record.seq, "ts": record.ts, "topic": record.topic, "data": slim(record.data)}
            for listener in list(self.listeners):
                if listener.wants(record):
                    listener.offer(item)
