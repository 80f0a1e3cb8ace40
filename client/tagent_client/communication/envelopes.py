"""The documents' envelopes (`PipelineMessage`, `PipelineEvent`) and the requests a communicator sends.

Shared by the async and the blocking communicator, so they cannot drift apart. The envelopes are views of
what the broker stores and carries: a `Message` in a mailbox (`core/broker_records.py`) and an
`EventRecord` on the bus (`wire/protocol.py`), under the documents' field names.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..core.broker_records import Message
from ..core.result import to_builtins
from ..errors import InvalidRequest
from ..wire import protocol_broker as b
from ..wire.protocol import EventRecord

log = logging.getLogger("tagent.communicator")

#: The bus's own notices: a subscription's bookkeeping, never handed to a callback.
NOTICES = ("broker.subscribed", "broker.dropped")


class PipelineMessage(msgspec.Struct, kw_only=True, frozen=True):
    """A direct message as its receiver sees it (the documents' envelope).

    `message_id` is what a receiver dedupes by (delivery is at-least-once); `deliveries` counts the leases
    of it, this one included; `sender` says exactly who sent it (`pipeline/run/task#attempt` for a step).
    """

    from_pipeline: str
    to_pipeline: str
    message: Any
    message_type: str
    timestamp: datetime
    message_id: str
    deliveries: int = 1
    sender: str = ""

    @classmethod
    def of(cls, message: Message) -> PipelineMessage:
        return cls(from_pipeline=message.from_pipeline, to_pipeline=message.mailbox, message=message.payload,
                   message_type=message.message_type, timestamp=datetime.fromtimestamp(message.ts, UTC),
                   message_id=message.id, deliveries=message.deliveries, sender=message.sender)


class PipelineEvent(msgspec.Struct, kw_only=True, frozen=True):
    """An event as a subscriber's callback sees it (the documents' envelope).

    `event_type` is the event's topic. `source_pipeline` and `event_id` are set for events broadcast by a
    communicator; an event from elsewhere (a run's lifecycle event, a space change, `ctx.publish`) has its
    publisher's pipeline if it came from a step, and an empty `event_id`. `seq` is the bus's number.
    """

    event_type: str
    data: Any
    source_pipeline: str
    timestamp: datetime
    event_id: str
    seq: int = 0

    @classmethod
    def of(cls, record: EventRecord) -> PipelineEvent:
        return cls(event_type=record.topic, data=record.data, source_pipeline=record.source,
                   timestamp=datetime.fromtimestamp(record.ts, UTC), event_id=record.id, seq=record.seq)


def same_pipeline(pipeline: str, named: str | None, what: str) -> None:
    """The documents pass the calling pipeline explicitly; here it is the communicator's own."""
    if named is not None and named != pipeline:
        raise InvalidRequest(f"this communicator speaks for pipeline {pipeline!r}, not {named!r} ({what}); use "
                             f"one made for {named!r}: client.communicator(as_pipeline={named!r})")


def send_request(pipeline: str, to_pipeline: str, message: Any, message_type: str, message_id: str,
                 durable: bool = True) -> b.SendMessage:
    return b.SendMessage(to=to_pipeline, payload=to_builtins(message), message_id=message_id,
                         message_type=message_type, from_pipeline=pipeline, durable=durable)


def publish_request(pipeline: str, event_type: str, data: Any, event_id: str) -> b.Publish:
    return b.Publish(topic=event_type, data=to_builtins(data), source=pipeline, event_id=event_id)


def register_request(pipeline: str, info: b.PipelineInfo | Mapping[str, Any] | None, description: str | None,
                     capabilities: Iterable[str] | None) -> b.RegisterPipeline:
    """`info` as a PipelineInfo (a dict of its fields, or of anything: what is not a field is metadata)."""
    if info is None:
        found = b.PipelineInfo()
    elif isinstance(info, b.PipelineInfo):
        found = info
    elif isinstance(info, Mapping):
        fields = {"description", "capabilities", "metadata"}
        extra = {k: v for k, v in info.items() if k not in fields}
        found = b.PipelineInfo(description=str(info.get("description", "")),
                               capabilities=list(info.get("capabilities", [])),
                               metadata={**dict(info.get("metadata", {})), **to_builtins(extra)})
    else:
        raise InvalidRequest(f"register_pipeline: info must be a PipelineInfo or a dict, not {type(info).__name__}")
    if description is not None:
        found = msgspec.structs.replace(found, description=description)
    if capabilities is not None:
        found = msgspec.structs.replace(found, capabilities=list(capabilities))
    return b.RegisterPipeline(pipeline=pipeline, info=found)


def event_types_of(event_types: str | Iterable[str]) -> list[str]:
    types = [event_types] if isinstance(event_types, str) else list(event_types)
    if not types or not all(isinstance(t, str) for t in types):
        raise InvalidRequest(f"subscribe_to_events: event_types must be a non-empty list of strings, got {event_types!r:.80}")
    return types


def subscribe_args(pipeline: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[str], Callable[..., Any]]:
    """(event_types, callback) from `(event_types, callback)` or the documents' `(pipeline_id, event_types, callback)`."""
    pipeline_id = kwargs.pop("pipeline_id", None)
    if len(args) == 3:
        pipeline_id, *rest = args
        args = tuple(rest)
    names = ("event_types", "callback")
    found = dict(zip(names, args, strict=False))
    for name in names:
        if name in kwargs:
            if name in found:
                raise InvalidRequest(f"subscribe_to_events got {name} twice")
            found[name] = kwargs.pop(name)
    if kwargs or len(found) != 2 or not callable(found["callback"]):
        raise InvalidRequest("subscribe_to_events takes (event_types, callback), or the documents' "
                             "(pipeline_id, event_types, callback); callback must be callable")
    same_pipeline(pipeline, pipeline_id, "subscribe_to_events' pipeline_id")
    return event_types_of(found["event_types"]), found["callback"]


def wanted(record: EventRecord, event_types: list[str]) -> bool:
    """Whether a callback subscribed to `event_types` gets `record` (the broker's prefix rule; no notices)."""
    return record.topic not in NOTICES and b.matches(record.topic, event_types)


async def deliver(callback: Callable[[PipelineEvent], Any], event: PipelineEvent) -> bool:
    """Call `callback(event)`, awaiting what it returns if that is awaitable; False (logged) if it raised."""
    try:
        result = callback(event)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - one bad event must not end the subscription
        log.exception("event callback %r failed on %s event %s", callback, event.event_type, event.event_id or event.seq)
        return False
    return True
