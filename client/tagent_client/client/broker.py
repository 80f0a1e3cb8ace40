"""The broker half of `Client` / `AsyncClient`: messages, events, shared spaces, registry, subscriptions.

`Client` and `AsyncClient` inherit these methods (`BrokerMethods`,
`AsyncBrokerMethods`); each builds one request of protocol_broker and decodes
its reply the same way for both. A client is the daemon's owner: space
allow-lists do not apply to it. `subscribe` opens its own socket on events.sock
(see `subscription.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.broker_records import AccessEntry, DeadLetter, Entry
from ..wire import protocol_broker as b
from ..wire.protocol_broker import BrokerStats, MailboxInfo, RegistryEntry
from .calls import Call, decode_as, plain_data
from .subscription import AsyncSubscription, Subscription

if TYPE_CHECKING:
    from ..communication.blocking import SyncPipelineCommunicator
    from ..communication.communicator import PipelineCommunicator


def _plain(result: Any) -> Any:
    return result


def _send(pipeline: str, payload: Any, message_id: str | None, durable: bool = True) -> Call[str]:
    """A send whose message id is chosen once: a resend of it (by the client, or by the caller with that id)
    is stored once at most."""
    request = b.SendMessage(to=pipeline, payload=plain_data("the message payload", payload),
                            message_id=message_id or uuid.uuid4().hex, durable=durable)
    return Call(request, lambda r: str(r["id"]), resend=True)


def _publish(topic: str, data: Any) -> Call[dict[str, Any]]:
    return Call(b.Publish(topic=topic, data=plain_data("the event data", data)), _plain)


def _publish_many(events: Iterable[tuple[str, Any]]) -> Call[int]:
    batch = [(topic, plain_data("the event data", data)) for topic, data in events]
    return Call(b.PublishMany(events=batch), lambda r: int(r["published"]))


def _dead_letters(pipeline: str) -> Call[list[DeadLetter]]:
    return Call(b.DeadLetters(mailbox=pipeline), decode_as(list[DeadLetter]))


def _requeue(pipeline: str, ids: Iterable[str], every: bool) -> Call[list[str]]:
    return Call(b.RequeueDead(mailbox=pipeline, ids=list(ids), all=every), lambda r: list(r["requeued"]))


def _drop_dead(pipeline: str, ids: Iterable[str], every: bool) -> Call[list[str]]:
    return Call(b.DropDead(mailbox=pipeline, ids=list(ids), all=every), lambda r: list(r["dropped"]))


def _space_calls(name: str) -> dict[str, Callable[..., Call[Any]]]:
    return {
        "get": lambda key: Call(b.SpaceGet(space=name, key=key), decode_as(Entry)),
        "put": lambda key, value: Call(b.SpacePut(space=name, key=key, value=plain_data("the value", value)),
                                        decode_as(Entry)),
        "cas": lambda key, value, expected_version: Call(
            b.SpaceCas(space=name, key=key, value=plain_data("the value", value), expected_version=expected_version),
            lambda r: bool(r["ok"])),
        "delete": lambda key, expected_version=None: Call(
            b.SpaceDelete(space=name, key=key, expected_version=expected_version), lambda r: bool(r["deleted"])),
        "keys": lambda prefix="": Call(b.SpaceKeys(space=name, prefix=prefix), list),
        "listing": lambda prefix="": Call(b.SpaceKeys(space=name, prefix=prefix, versions=True),
                                           lambda r: [tuple(row) for row in r]),
        "log": lambda limit=100: Call(b.SpaceLog(space=name, limit=limit), decode_as(list[AccessEntry])),
        "allow": lambda pipelines, replace=False: Call(
            b.SpaceAllow(space=name, pipelines=list(pipelines), replace=replace), _plain),
    }


class ClientSpace:
    """A shared space seen from a client: `client.space("research").get("acme")` (same methods as ctx.space)."""

    def __init__(self, call: Callable[[Any], Any], name: str) -> None:
        self.name = name
        self._call = call
        self._calls = _space_calls(name)

    def get(self, key: str) -> Entry | None:
        return self._call(self._calls["get"](key))

    def put(self, key: str, value: Any) -> Entry:
        return self._call(self._calls["put"](key, value))

    def cas(self, key: str, value: Any, expected_version: int) -> bool:
        return self._call(self._calls["cas"](key, value, expected_version))

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        return self._call(self._calls["delete"](key, expected_version))

    def keys(self, prefix: str = "") -> list[str]:
        return self._call(self._calls["keys"](prefix))

    def listing(self, prefix: str = "") -> list[tuple[str, int, int]]:
        """(key, version, size in bytes) of each key starting with `prefix`."""
        return self._call(self._calls["listing"](prefix))

    def log(self, limit: int = 100) -> list[AccessEntry]:
        """The newest `limit` lines of the space's access log, oldest first."""
        return self._call(self._calls["log"](limit))

    def allow(self, pipelines: Iterable[str], replace: bool = False) -> dict[str, Any]:
        """Let these pipelines' steps use the space (and no others); `replace` with [] lifts the list."""
        return self._call(self._calls["allow"](pipelines, replace))


class AsyncClientSpace:
    """`ClientSpace` for AsyncClient: the same methods, awaited."""

    def __init__(self, call: Callable[[Any], Any], name: str) -> None:
        self.name = name
        self._call = call
        self._calls = _space_calls(name)

    async def get(self, key: str) -> Entry | None:
        return await self._call(self._calls["get"](key))

    async def put(self, key: str, value: Any) -> Entry:
        return await self._call(self._calls["put"](key, value))

    async def cas(self, key: str, value: Any, expected_version: int) -> bool:
        return await self._call(self._calls["cas"](key, value, expected_version))

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        return await self._call(self._calls["delete"](key, expected_version))

    async def keys(self, prefix: str = "") -> list[str]:
        return await self._call(self._calls["keys"](prefix))

    async def listing(self, prefix: str = "") -> list[tuple[str, int, int]]:
        return await self._call(self._calls["listing"](prefix))

    async def log(self, limit: int = 100) -> list[AccessEntry]:
        return await self._call(self._calls["log"](limit))

    async def allow(self, pipelines: Iterable[str], replace: bool = False) -> dict[str, Any]:
        return await self._call(self._calls["allow"](pipelines, replace))


class BrokerMethods:
    """Broker calls of the blocking `Client`."""

    runtime_dir: Any
    _call: Callable[..., Any]

    def send(self, pipeline: str, payload: Any = None, *, id: str | None = None,  # noqa: A002
             durable: bool = True) -> str:
        """Put a message in `pipeline`'s mailbox (kept until a run of it takes it); returns its id once durable.

        The id (`id`, or a random one chosen once per call) is stored once at most: the client resends a send
        that got no answer in time under the same id, and a RequestTimeout's `details["message_id"]` lets you
        retry it under that id too. `durable=False` returns before the message is on disk (a crash may lose
        it; docs/broker.md, "Non-durable messages").
        """
        return self._call(_send(pipeline, payload, id, durable))

    def publish(self, topic: str, data: Any = None) -> dict[str, Any]:
        """Publish an event; returns {seq, triggered: [pipelines a run was queued for]}."""
        return self._call(_publish(topic, data))

    def publish_many(self, events: Iterable[tuple[str, Any]]) -> int:
        """Publish a batch of (topic, data) events in one request; returns how many."""
        return self._call(_publish_many(events))

    def space(self, name: str) -> ClientSpace:
        return ClientSpace(self._call, name)

    def pipelines(self, capability: str | None = None) -> list[RegistryEntry]:
        """Running and registered pipelines (only those declaring `capability`, if given)."""
        return self._call(Call(b.ListPipelines(capability=capability), decode_as(list[RegistryEntry])))

    def mailboxes(self, pipeline: str | None = None, peek: int = 0) -> list[MailboxInfo]:
        """Mailbox depths (and the first `peek` messages of each)."""
        return self._call(Call(b.ListMailboxes(pipeline=pipeline, peek=peek), decode_as(list[MailboxInfo])))

    def dead_letters(self, pipeline: str) -> list[DeadLetter]:
        """Messages of `pipeline`'s mailbox whose delivery failed max_deliveries times, with their last error."""
        return self._call(_dead_letters(pipeline))

    def requeue_dead(self, pipeline: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        """Put dead letters (or `all` of them) back at their original positions with fresh counts; returns
        their ids once durable. NotFound (nothing changed) if an id is not a dead letter of that mailbox."""
        return self._call(_requeue(pipeline, ids, all))

    def drop_dead(self, pipeline: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        """Delete dead letters (or `all` of them) for good; returns their ids once durable (NotFound as above)."""
        return self._call(_drop_dead(pipeline, ids, all))

    def unregister(self, pipeline: str) -> dict[str, Any]:
        """Stop starting runs of a triggered pipeline; returns {pipeline, dropped_queued}."""
        return self._call(Call(b.Unregister(pipeline=pipeline), _plain))

    def broker_stats(self) -> BrokerStats:
        """Message rates, queue depths, subscribers and their drops, space sizes, trigger queues."""
        return self._call(Call(b.BrokerStatsRequest(), decode_as(BrokerStats)))

    def subscribe(self, *prefixes: str, timeout: float = 5.0) -> Subscription:
        """Events whose topic starts with one of `prefixes` ('' = all), from now on; iterate or `get()`."""
        return Subscription(self.runtime_dir, list(prefixes) or [""], timeout=timeout)

    def communicator(self, as_pipeline: str) -> SyncPipelineCommunicator:
        """The design documents' PipelineCommunicator (blocking calls), speaking as pipeline `as_pipeline`."""
        from ..communication.blocking import SyncPipelineCommunicator
        from .communicator import ClientPort

        return SyncPipelineCommunicator(ClientPort(self._call, self.subscribe), as_pipeline)


class AsyncBrokerMethods:
    """Broker calls of `AsyncClient` (see BrokerMethods)."""

    runtime_dir: Any
    _call: Callable[..., Any]

    async def send(self, pipeline: str, payload: Any = None, *, id: str | None = None,  # noqa: A002
                   durable: bool = True) -> str:
        return await self._call(_send(pipeline, payload, id, durable))

    async def publish(self, topic: str, data: Any = None) -> dict[str, Any]:
        return await self._call(_publish(topic, data))

    async def publish_many(self, events: Iterable[tuple[str, Any]]) -> int:
        return await self._call(_publish_many(events))

    def space(self, name: str) -> AsyncClientSpace:
        return AsyncClientSpace(self._call, name)

    async def pipelines(self, capability: str | None = None) -> list[RegistryEntry]:
        return await self._call(Call(b.ListPipelines(capability=capability), decode_as(list[RegistryEntry])))

    async def mailboxes(self, pipeline: str | None = None, peek: int = 0) -> list[MailboxInfo]:
        return await self._call(Call(b.ListMailboxes(pipeline=pipeline, peek=peek), decode_as(list[MailboxInfo])))

    async def dead_letters(self, pipeline: str) -> list[DeadLetter]:
        return await self._call(_dead_letters(pipeline))

    async def requeue_dead(self, pipeline: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        return await self._call(_requeue(pipeline, ids, all))

    async def drop_dead(self, pipeline: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        return await self._call(_drop_dead(pipeline, ids, all))

    async def unregister(self, pipeline: str) -> dict[str, Any]:
        return await self._call(Call(b.Unregister(pipeline=pipeline), _plain))

    async def broker_stats(self) -> BrokerStats:
        return await self._call(Call(b.BrokerStatsRequest(), decode_as(BrokerStats)))

    async def subscribe(self, *prefixes: str, timeout: float = 5.0) -> AsyncSubscription:
        subscription = AsyncSubscription(self.runtime_dir, list(prefixes) or [""])
        await subscription.open(timeout)
        return subscription

    def communicator(self, as_pipeline: str) -> PipelineCommunicator:
        """The design documents' PipelineCommunicator (async), speaking as pipeline `as_pipeline`."""
        from ..communication.communicator import PipelineCommunicator
        from .communicator import AsyncClientPort

        return PipelineCommunicator(AsyncClientPort(self._call, self.subscribe), as_pipeline)
