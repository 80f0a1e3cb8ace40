"""What a communicator needs from whoever carries its requests: a step's context or a client.

A port sends broker requests (protocol_broker) and opens event subscriptions; it also chooses the ids
of what is sent, so a step's ids repeat when the step runs again (its sends stay idempotent) while a
client's are random.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.broker_records import Message
from ..wire.protocol import EventRecord
from ..wire.protocol_broker import BrokerRequest


class EventSource(Protocol):
    """A subscription's events, in order (a daemon subscription, or an in-process one)."""

    async def get(self, timeout: float | None = None) -> EventRecord | None: ...

    def close(self) -> None: ...


class SyncEventSource(Protocol):
    """A blocking subscription's events (`client.Subscription`); used from one thread only."""

    def get(self, timeout: float | None = None) -> EventRecord | None: ...

    def close(self) -> None: ...


class BrokerPort(Protocol):
    """The async carrier: a step's context (`run/communicator_port.py`) or an AsyncClient."""

    async def call(self, request: BrokerRequest) -> Any:
        """Send one request; its result as plain data (raises the daemon's error as its TagentError)."""

    async def subscribe(self, prefixes: list[str]) -> EventSource:
        """Events whose topic starts with one of `prefixes`, from when this returns on."""

    async def receive(self, timeout: float | None) -> Message | None:
        """The next message of the port's own mailbox (steps only)."""

    def message_id(self) -> str:
        """The id of the next message sent."""

    def event_id(self) -> str:
        """The id of the next event broadcast."""


class SyncBrokerPort(Protocol):
    """The blocking carrier: a `Client`."""

    def call(self, request: BrokerRequest) -> Any: ...

    def subscribe(self, prefixes: list[str]) -> SyncEventSource: ...

    def message_id(self) -> str: ...

    def event_id(self) -> str: ...
