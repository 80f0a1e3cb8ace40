"""What a step can do with the broker: `ctx.send/receive/ack/publish/wait_for_event/space/discover`.

`StepContext` inherits these from `BrokerAbilities`; each call becomes one broker
request (protocol_broker) handed to the run's services — the daemon over the
worker's socket, or the in-process `LocalBroker`. Guarantees (docs/broker.md):

- `send` returns once the message is durable. Its default id is derived from
  (run, task, n-th send of this attempt), so a step re-run after a crash sends
  the same ids again and they are dropped as duplicates; pass `id=` to choose.
- `receive` leases a message to this attempt: it is acknowledged when the
  attempt succeeds (or at `ack`), and offered again if the attempt fails, its
  worker dies or the daemon restarts (at-least-once: dedupe by `message.id`).
- `space(name)` is a `SharedMemorySpace` (space.py): values, an access log and
  per-key locks held by this attempt.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.broker_records import Message
from ..core.result import to_builtins
from ..wire import protocol_broker as b
from ..wire.protocol import EventRecord
from ..wire.protocol_broker import RegistryEntry, StepRef
from .space import SharedMemorySpace

if TYPE_CHECKING:
    from .services import RunServices

FOREVER_CHUNK = b.MAX_WAIT


class BrokerAbilities:
    """Mixed into StepContext; needs `_services`, `run_id`, `pipeline`, `step_name`, `task`, `attempt`, `item_index`."""

    _services: RunServices
    run_id: str
    pipeline: str
    step_name: str
    task: str
    attempt: int
    item_index: int | None
    _sends: int = 0
    _step_ref: StepRef | None = None

    @property
    def step_ref(self) -> StepRef:
        """Who is calling: this attempt of this task (built once; the fields never change)."""
        if self._step_ref is None:
            self._step_ref = StepRef(run_id=self.run_id, pipeline=self.pipeline, step=self.step_name, task=self.task,
                                     attempt=self.attempt, item_index=self.item_index)
        return self._step_ref

    async def _call(self, op: b.BrokerRequest, wait: float = 0.0) -> Any:
        return await self._services.broker(self.step_ref, op, wait)

    def next_message_id(self) -> str:
        """The default id of this attempt's next message: `<run>/<task>/<n>`, the same when the step runs again."""
        self._sends += 1
        return f"{self.run_id}/{self.task}/{self._sends}"

    async def send(self, to: str, payload: Any = None, *, id: str | None = None,  # noqa: A002 - the issue's name
                   durable: bool = True) -> str:
        """Send `payload` to pipeline `to`'s mailbox; returns the message id once the message is durable.

        `durable=False` returns once the daemon has it, before it is on disk: faster, and lost if the daemon
        crashes before its next commit (docs/broker.md, "Non-durable messages")."""
        message_id = id if id is not None else self.next_message_id()
        result = await self._call(b.SendMessage(to=to, payload=to_builtins(payload), message_id=message_id,
                                                durable=durable))
        return str(result["id"])

    async def receive(self, timeout: float | None = None) -> Message | None:
        """The oldest message for this pipeline, leased to this attempt; None after `timeout` s (None: wait on)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = FOREVER_CHUNK if deadline is None else max(0.0, min(FOREVER_CHUNK, deadline - time.monotonic()))
            found = await self._call(b.ReceiveMessage(wait=left), left)
            if found is not None:
                return msgspec.convert(found, Message)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def ack(self, *messages: Message | str) -> int:
        """Acknowledge messages now (else they are when this attempt succeeds); returns how many were removed."""
        by_box: dict[str, list[str]] = {}
        for message in messages:
            if isinstance(message, Message):
                by_box.setdefault(message.mailbox or self.pipeline, []).append(message.id)
            else:
                by_box.setdefault(self.pipeline, []).append(str(message))
        done = 0
        for mailbox, ids in by_box.items():
            done += len((await self._call(b.AckMessages(ids=ids, mailbox=mailbox)))["acked"])
        return done

    async def publish(self, topic: str, data: Any = None) -> None:
        """Publish an event to subscribers (best effort) and to the triggers it matches (durable)."""
        await self._call(b.Publish(topic=topic, data=to_builtins(data)))

    async def wait_for_event(self, topic_prefix: str, timeout: float | None = None) -> EventRecord | None:
        """The next event published after this call whose topic starts with `topic_prefix`; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = FOREVER_CHUNK if deadline is None else max(0.0, min(FOREVER_CHUNK, deadline - time.monotonic()))
            found = await self._call(b.WaitEvent(prefix=topic_prefix, wait=left), left)
            if found is not None:
                return msgspec.convert(found, EventRecord)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def space(self, name: str) -> SharedMemorySpace:
        """A shared space by name (created on first write): values, an access log, and per-key locks."""
        return SharedMemorySpace(self._call, name)

    async def discover(self, capability: str | None = None) -> list[RegistryEntry]:
        """Running (and trigger-registered) pipelines, only those declaring `capability` if given."""
        found = await self._call(b.ListPipelines(capability=capability))
        return msgspec.convert(found, list[RegistryEntry])


def __getattr__(name: str) -> Any:
    """`SpaceRef` is the old name of `SharedMemorySpace`: deprecated, removed in the next release."""
    if name == "SpaceRef":
        warnings.warn("tagent_client.run.context_broker.SpaceRef is deprecated: use tagent_client.SharedMemorySpace",
                      DeprecationWarning, stacklevel=2)
        return SharedMemorySpace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
