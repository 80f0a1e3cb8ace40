"""`SyncPipelineCommunicator`: `PipelineCommunicator` for the blocking `Client` (`client.communicator(as_pipeline=)`).

The same calls and promises as the async one (communicator.py), made with blocking calls; a subscription's
callbacks run on a thread of their own (an async callback on that thread's own event loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ..wire import protocol_broker as b
from ..wire.protocol_broker import PipelineInfo, RegistryEntry
from .envelopes import (
    PipelineEvent,
    deliver,
    publish_request,
    register_request,
    same_pipeline,
    send_request,
    subscribe_args,
    wanted,
)
from .ports import SyncBrokerPort, SyncEventSource

POLL = 0.1  # how often the callback thread looks whether it was closed


class ThreadSubscription:
    """Events handed to a callback on a thread of its own until `close()` (or the end of a `with` block).

    Subscribed (and confirmed by the daemon) when it is created. `delivered`, `failed` and `dropped` as
    for the async subscription.
    """

    def __init__(self, port: SyncBrokerPort, event_types: list[str], callback: Callable[[PipelineEvent], Any]) -> None:
        self.event_types = event_types
        self.callback = callback
        self.delivered = 0
        self.failed = 0
        self._source: SyncEventSource = port.subscribe(event_types)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with asyncio.Runner() as runner:  # async callbacks run on this thread's own loop
            try:
                while not self._stop.is_set():
                    record = self._source.get(POLL)
                    if record is None or not wanted(record, self.event_types):
                        continue
                    if runner.run(deliver(self.callback, PipelineEvent.of(record))):
                        self.delivered += 1
                    else:
                        self.failed += 1
            finally:
                self._source.close()  # its socket belongs to this thread

    @property
    def dropped(self) -> int:
        return int(getattr(self._source, "dropped", 0))

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop; waits up to `timeout` s for a callback that is running now to return."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> ThreadSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncPipelineCommunicator:
    """`PipelineCommunicator` with blocking calls, for `Client` (see communicator.PipelineCommunicator)."""

    def __init__(self, port: SyncBrokerPort, pipeline: str) -> None:
        self.pipeline = pipeline
        self._port = port

    def send_message(self, to_pipeline: str, message: Any = None, message_type: str = "data", *,
                     from_pipeline: str | None = None, message_id: str | None = None, durable: bool = True) -> str:
        """Send `message` to `to_pipeline`'s mailbox labelled `message_type`; its id once it is durable
        (`durable=False`: once the daemon has it, before it is on disk; docs/broker.md, "Non-durable messages")."""
        same_pipeline(self.pipeline, from_pipeline, "send_message's from_pipeline")
        request = send_request(self.pipeline, to_pipeline, message, message_type, message_id or self._port.message_id(),
                               durable)
        return str(self._port.call(request)["id"])

    def broadcast_event(self, event_type: str, data: Any = None, source_pipeline: str | None = None, *,
                        event_id: str | None = None) -> str:
        """Publish an event of `event_type` from this pipeline; returns its `event_id` once published."""
        same_pipeline(self.pipeline, source_pipeline, "broadcast_event's source_pipeline")
        chosen = event_id or self._port.event_id()
        self._port.call(publish_request(self.pipeline, event_type, data, chosen))
        return chosen

    def subscribe_to_events(self, *args: Any, **kwargs: Any) -> ThreadSubscription:
        """`callback(event)` (sync or async) for each event matching `event_types` from now on; close() to end."""
        event_types, callback = subscribe_args(self.pipeline, args, kwargs)
        return ThreadSubscription(self._port, event_types, callback)

    def register_pipeline(self, pipeline_id: str | None = None, info: PipelineInfo | Mapping[str, Any] | None = None,
                          *, description: str | None = None, capabilities: Iterable[str] | None = None) -> RegistryEntry:
        """Enter `pipeline_id` (default: this pipeline) in the registry with `info`; returns its registry entry."""
        request = register_request(pipeline_id or self.pipeline, info, description, capabilities)
        return msgspec.convert(self._port.call(request), RegistryEntry)

    def discover(self, capability: str | None = None) -> list[RegistryEntry]:
        """The registry: running, triggered and registered pipelines (only those with `capability`, if given)."""
        return msgspec.convert(self._port.call(b.ListPipelines(capability=capability)), list[RegistryEntry])

    def __repr__(self) -> str:
        return f"SyncPipelineCommunicator({self.pipeline!r})"
