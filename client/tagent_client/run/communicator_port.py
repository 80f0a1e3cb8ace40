"""A step's end of `PipelineCommunicator` (`ctx.communicator`): its requests go where the step's broker calls go.

The step's pipeline is the sender of everything (the daemon takes it from the calling step, not from the
request). Message ids are the step's own sequence (`ctx.send`'s: a re-run sends the same ids, dropped as
duplicates); event ids are `<run>/<task>/event/<n>` in the same spirit, so a subscriber can drop an event a
re-run broadcast again. Subscriptions end with the attempt at the latest: the runner calls `close_all`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..communication.communicator import EventSubscription, PipelineCommunicator
from ..communication.ports import EventSource
from ..core.broker_records import Message
from ..wire.protocol_broker import BrokerRequest


class StepPort:
    """BrokerPort over a step context's broker calls and its services' subscriptions."""

    def __init__(self, *, call: Callable[[BrokerRequest], Awaitable[Any]],
                 subscribe: Callable[[list[str]], Awaitable[EventSource]],
                 receive: Callable[[float | None], Awaitable[Message | None]],
                 message_id: Callable[[], str], events_prefix: str) -> None:
        self.call = call
        self.subscribe = subscribe
        self.receive = receive
        self.message_id = message_id
        self._events_prefix = events_prefix
        self._events = 0

    def event_id(self) -> str:
        self._events += 1
        return f"{self._events_prefix}/event/{self._events}"


class StepCommunicators:
    """The communicator of one step attempt, and the subscriptions it opened (closed when the attempt ends)."""

    def __init__(self, port: StepPort, pipeline: str) -> None:
        self.open: list[EventSubscription] = []
        self.communicator = PipelineCommunicator(port, pipeline, on_subscribe=self.open.append,
                                                 on_close=self._forget)

    def _forget(self, subscription: EventSubscription) -> None:
        if subscription in self.open:
            self.open.remove(subscription)

    def close_all(self) -> None:
        for subscription in list(self.open):
            subscription.close()
