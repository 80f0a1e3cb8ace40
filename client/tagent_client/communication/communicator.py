"""`PipelineCommunicator`: the design documents' communicator, async, over tagentd's broker.

One communicator speaks for one pipeline: inside a step, `ctx.communicator` (the step's pipeline); from
a program, `AsyncClient.communicator(as_pipeline="x")`. What each call promises is what the broker
promises (docs/broker.md):

- `send_message` returns the message id once the message is durable in the target's mailbox; the
  target's steps get it at least once (`ctx.receive()`, or `receive_message()` here), with its
  `message_type`, `from_pipeline`, `timestamp` and `message_id`. A step's message ids repeat when the step
  runs again (as `ctx.send`'s), so a re-run never doubles a message; a client's are random.
- `broadcast_event` publishes the event with this pipeline as `source_pipeline` and a fresh `event_id`:
  durable for the triggered pipelines it starts (in the daemon), best effort for subscribers — a
  subscriber that is not connected, or falls 100,000 events behind, misses it (misses are counted).
- `subscribe_to_events` calls `callback(event)` for each event published after it returns whose type
  starts with one of `event_types` (the broker's prefix rule: "research." matches "research.done");
  sync or async callbacks, one event at a time, in order. In a step it ends with the step's attempt at
  the latest; `close()` (or `async with`) ends it sooner.
- `register_pipeline` enters the pipeline in the registry (`discover`, `tagent pipelines`) with a
  description, capabilities and metadata; durable in the daemon until `tagent unregister`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ..wire import protocol_broker as b
from ..wire.protocol_broker import PipelineInfo, RegistryEntry
from .envelopes import (
    PipelineEvent,
    PipelineMessage,
    deliver,
    log,
    publish_request,
    register_request,
    same_pipeline,
    send_request,
    subscribe_args,
    wanted,
)
from .ports import BrokerPort, EventSource


class EventSubscription:
    """Events handed to a callback as they come, until `close()`: await it (or `async with` it) to start.

    `delivered` counts the events handed to the callback, `failed` those whose callback raised (logged,
    and the subscription goes on); `dropped` the events the bus dropped for it (a slow reader).
    """

    def __init__(self, port: BrokerPort, event_types: list[str], callback: Callable[[PipelineEvent], Any],
                 on_close: Callable[[EventSubscription], None] | None = None) -> None:
        self.event_types = event_types
        self.callback = callback
        self.delivered = 0
        self.failed = 0
        self._port = port
        self._on_close = on_close
        self._source: EventSource | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> EventSubscription:
        """Subscribe (confirmed: every event published after this returns is handed over) and start delivering."""
        if self._source is None and not self._closed:
            self._source = await self._port.subscribe(self.event_types)
            self._pump = asyncio.get_running_loop().create_task(self._run(self._source), name="event-subscription")
        return self

    def __await__(self) -> Any:
        return self.open().__await__()

    async def _run(self, source: EventSource) -> None:
        try:
            while not self._closed:
                record = await source.get()
                if record is None or not wanted(record, self.event_types):
                    continue
                if await deliver(self.callback, PipelineEvent.of(record)):
                    self.delivered += 1
                else:
                    self.failed += 1
        except Exception:  # noqa: BLE001 - the connection itself failed: say so, nobody awaits this task
            log.exception("event subscription to %s ended", ", ".join(self.event_types))

    @property
    def dropped(self) -> int:
        return int(getattr(self._source, "dropped", 0))

    def close(self) -> None:
        """Stop: no callback starts after this (one running now is cancelled)."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        if self._source is not None:
            self._source.close()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> EventSubscription:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class PipelineCommunicator:
    """The documents' `PipelineCommunicator` for pipeline `pipeline`, over a broker port.

    Differences from the documents, and why: the sending pipeline is the communicator's own, so
    `from_pipeline` / `source_pipeline` / `pipeline_id` may be passed (as keywords, or in the documents'
    positions where that is unambiguous) but must name it — a step cannot speak for another pipeline.
    `send_message`'s positional order is (to_pipeline, message, message_type): the documents'
    (from, to, message) would be ambiguous with it. `subscribe_to_events` is awaited (it returns once the
    daemon confirmed the subscription) and returns the subscription to close. Event types match by prefix,
    the broker's one rule for subscriptions and triggers.
    """

    def __init__(self, port: BrokerPort, pipeline: str, *, on_subscribe: Callable[[EventSubscription], None] | None = None,
                 on_close: Callable[[EventSubscription], None] | None = None) -> None:
        self.pipeline = pipeline
        self._port = port
        self._on_subscribe = on_subscribe
        self._on_close = on_close

    async def send_message(self, to_pipeline: str, message: Any = None, message_type: str = "data", *,
                           from_pipeline: str | None = None, message_id: str | None = None, durable: bool = True) -> str:
        """Send `message` to `to_pipeline`'s mailbox labelled `message_type`; its id once it is durable
        (`durable=False`: once the daemon has it, before it is on disk; docs/broker.md, "Non-durable messages")."""
        same_pipeline(self.pipeline, from_pipeline, "send_message's from_pipeline")
        request = send_request(self.pipeline, to_pipeline, message, message_type, message_id or self._port.message_id(),
                               durable)
        return str((await self._port.call(request))["id"])

    async def receive_message(self, timeout: float | None = None) -> PipelineMessage | None:
        """(steps only) The next message for this pipeline, leased to the step's attempt; None after `timeout` s."""
        message = await self._port.receive(timeout)
        return PipelineMessage.of(message) if message is not None else None

    async def broadcast_event(self, event_type: str, data: Any = None, source_pipeline: str | None = None, *,
                              event_id: str | None = None) -> str:
        """Publish an event of `event_type` from this pipeline; returns its `event_id` once published."""
        same_pipeline(self.pipeline, source_pipeline, "broadcast_event's source_pipeline")
        chosen = event_id or self._port.event_id()
        await self._port.call(publish_request(self.pipeline, event_type, data, chosen))
        return chosen

    def subscribe_to_events(self, *args: Any, **kwargs: Any) -> EventSubscription:
        """`await comm.subscribe_to_events(event_types, callback)` (or the documents' (pipeline_id, event_types,
        callback)): `callback(event)` — sync or async — for each matching event from now on."""
        event_types, callback = subscribe_args(self.pipeline, args, kwargs)
        subscription = EventSubscription(self._port, event_types, callback, on_close=self._on_close)
        if self._on_subscribe is not None:
            self._on_subscribe(subscription)
        return subscription

    async def register_pipeline(self, pipeline_id: str | None = None, info: PipelineInfo | Mapping[str, Any] | None = None,
                                *, description: str | None = None, capabilities: Iterable[str] | None = None) -> RegistryEntry:
        """Enter `pipeline_id` (default: this pipeline) in the registry with `info`; returns its registry entry."""
        request = register_request(pipeline_id or self.pipeline, info, description, capabilities)
        return msgspec.convert(await self._port.call(request), RegistryEntry)

    async def discover(self, capability: str | None = None) -> list[RegistryEntry]:
        """The registry: running, triggered and registered pipelines (only those with `capability`, if given)."""
        return msgspec.convert(await self._port.call(b.ListPipelines(capability=capability)), list[RegistryEntry])

    def __repr__(self) -> str:
        return f"PipelineCommunicator({self.pipeline!r})"
