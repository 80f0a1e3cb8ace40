"""A client's end of `PipelineCommunicator`: ports that carry its requests over the client's connection.

`Client.communicator(as_pipeline="x")` / `AsyncClient.communicator(as_pipeline="x")` build them. A client
is the daemon's owner, so it may speak as any pipeline name; its message and event ids are random, and a
send is resent under the same id when no answer came in time (stored once at most).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.broker_records import Message
from ..errors import InvalidRequest
from ..wire import protocol_broker as b
from .calls import Call
from .subscription import AsyncSubscription, Subscription


def _call_of(request: b.BrokerRequest) -> Call[Any]:
    return Call(request, lambda result: result, resend=isinstance(request, b.SendMessage))


class ClientPort:
    """SyncBrokerPort over a blocking `Client`'s calls and subscriptions."""

    def __init__(self, call: Callable[[Call[Any]], Any], subscribe: Callable[..., Subscription]) -> None:
        self._call = call
        self._subscribe = subscribe

    def call(self, request: b.BrokerRequest) -> Any:
        return self._call(_call_of(request))

    def subscribe(self, prefixes: list[str]) -> Subscription:
        return self._subscribe(*prefixes)

    def message_id(self) -> str:
        return uuid.uuid4().hex

    def event_id(self) -> str:
        return uuid.uuid4().hex


class AsyncClientPort:
    """BrokerPort over an `AsyncClient`'s calls and subscriptions."""

    def __init__(self, call: Callable[[Call[Any]], Awaitable[Any]],
                 subscribe: Callable[..., Awaitable[AsyncSubscription]]) -> None:
        self._call = call
        self._subscribe = subscribe

    async def call(self, request: b.BrokerRequest) -> Any:
        return await self._call(_call_of(request))

    async def subscribe(self, prefixes: list[str]) -> AsyncSubscription:
        return await self._subscribe(*prefixes)

    async def receive(self, timeout: float | None) -> Message | None:
        raise InvalidRequest("only a step can receive messages (they are leased to its attempt); a client can "
                             "look into a mailbox with client.mailboxes(pipeline, peek=N)")

    def message_id(self) -> str:
        return uuid.uuid4().hex

    def event_id(self) -> str:
        return uuid.uuid4().hex
