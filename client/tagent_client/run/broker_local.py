"""`LocalBroker`: the broker for in-process runs (`run_pipeline`), on the same core as the daemon's.

Pipelines run by `run_pipeline` in one process talk through one LocalBroker
(`LocalBroker.default()` unless a run is given its own): messages, events,
spaces (with their locks), the registry and event subscriptions (`subscribe`) work as with
the daemon, but in memory only — nothing survives the process, there are no
allow-lists and no triggers (registering a pipeline for events needs the daemon). A message whose delivery failed
`max_deliveries` times becomes a dead letter as in the daemon (`dead_letters`,
`requeue`, `drop_dead`). Only the event loop's thread may call it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgspec

from ..core.broker import MAX_DELIVERIES, BrokerCore, Holder, attempt_error
from ..core.broker_records import DeadLetter
from ..core.events import StepSucceeded
from ..core.lock_queue import LockQueue
from ..core.locks import ended_why
from ..core.receivers import Receivers
from ..errors import InvalidRequest
from ..wire import protocol_broker as b
from ..wire.protocol import EventRecord
from .events_local import LocalSubscription


class LocalBroker:
    """BrokerCore plus waiting (receive, wait_for_event), a local event bus and a registry of running runs."""

    _default: LocalBroker | None = None

    def __init__(self, *, max_deliveries: int = MAX_DELIVERIES, max_deliveries_of: dict[str, int] | None = None) -> None:
        self.core = BrokerCore(max_deliveries=max_deliveries, max_deliveries_of=max_deliveries_of)
        self.runs: dict[str, tuple[str, list[str]]] = {}  # run id -> (pipeline, capabilities)
        self.infos: dict[str, b.PipelineInfo] = {}  # pipeline -> what it said of itself (register_pipeline)
        self.subscriptions: list[LocalSubscription] = []
        self._receivers = Receivers(self.core.lease)
        self.locks = LockQueue(self.core)
        self._watchers: list[tuple[str, asyncio.Future[Any]]] = []
        self._seq = itertools.count(1)

    @classmethod
    def default(cls) -> LocalBroker:
        """The process's shared broker (so two run_pipeline calls in one process can talk)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # -- hooks for the in-process runner --------------------------------------------------------------

    def run_started(self, run_id: str, pipeline: str, capabilities: list[str]) -> None:
        self.runs[run_id] = (pipeline, list(capabilities))

    def run_finished(self, run_id: str) -> None:
        self.runs.pop(run_id, None)
        self.locks.settle_run(run_id, "run finished")

    def settle(self, holder: Holder, outcome: Any) -> None:
        """The attempt `holder` ended with `outcome` (its event; None: cancelled): ack, count a failure, or release."""
        succeeded = isinstance(outcome, StepSucceeded)
        self.core.settle(holder, succeeded, attempt_error(outcome), time.time())
        self.locks.settle(holder, ended_why(outcome))
        if not succeeded:
            self._receivers.deliver_all()

    # -- dead letters (as `tagent mailbox dead / requeue / drop` with the daemon) --------------------------

    def dead_letters(self, mailbox: str) -> list[DeadLetter]:
        """The messages of `mailbox` whose delivery failed `max_deliveries` times, oldest first, with their errors."""
        return self.core.dead_letters(mailbox)

    def requeue(self, mailbox: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        """Put dead letters back at their original positions (fresh counts); NotFound for an unknown id."""
        found = self.core.requeue(mailbox, list(ids), all)
        self._receivers.deliver(mailbox)
        return found

    def drop_dead(self, mailbox: str, *ids: str, all: bool = False) -> list[str]:  # noqa: A002
        """Delete dead letters for good; NotFound for an unknown id."""
        return self.core.drop_dead(mailbox, list(ids), all)

    def subscribe(self, prefixes: list[str]) -> LocalSubscription:
        """Events published from now on whose topic starts with one of `prefixes` ('' = all), until closed."""
        subscription = LocalSubscription(prefixes, self.subscriptions.remove)
        self.subscriptions.append(subscription)
        return subscription

    def publish(self, topic: str, data: Any, source: str = "", event_id: str = "") -> EventRecord:
        record = EventRecord(seq=next(self._seq), ts=time.time(), topic=topic, data=data, source=source, id=event_id)
        for subscription in self.subscriptions:
            subscription.offer(record)
        kept = []
        for prefix, future in self._watchers:
            if future.done():
                continue
            if topic.startswith(prefix):
                future.set_result(msgspec.to_builtins(record))
            else:
                kept.append((prefix, future))
        self._watchers = kept
        return record

    # -- calls from step contexts -------------------------------------------------------------------------

    async def call(self, caller: b.StepRef, op: b.BrokerRequest) -> Any:
        """Carry out one broker request for a step; the result is plain data, as the daemon would send it."""
        now = time.time()
        who = f"{caller.pipeline}/{caller.run_id}/{caller.task}"
        core = self.core
        if isinstance(op, b.SendMessage):
            message_id = op.message_id or f"{caller.run_id}/{caller.task}/{next(self._seq)}"
            sent = core.send(op.to, message_id, who, op.payload, now, message_type=op.message_type,
                             from_pipeline=caller.pipeline)
            if sent is not None:
                self._receivers.deliver(op.to)
            return {"id": message_id, "duplicate": sent is None}
        if isinstance(op, b.ReceiveMessage):
            return await self._receive(caller, op.wait)
        if isinstance(op, b.AckMessages):
            return {"acked": core.ack(op.mailbox or caller.pipeline, op.ids)}
        if isinstance(op, b.Publish):
            record = self.publish(op.topic, op.data, caller.pipeline, op.event_id or "")
            return {"seq": record.seq, "id": record.id}
        if isinstance(op, b.PublishMany):
            for topic, data in op.events:
                self.publish(topic, data, caller.pipeline)
            return {"published": len(op.events)}
        if isinstance(op, b.WaitEvent):
            return await self._wait_event(op.prefix, op.wait)
        if isinstance(op, (b.SpaceGet, b.SpacePut, b.SpaceCas, b.SpaceDelete, b.SpaceKeys, b.SpaceLog)):
            return self._space(op, who, now)
        if isinstance(op, b.SpaceLock):
            lease = await self.locks.acquire(op.space, op.key, caller.holder, str(caller), b.lease_ttl(op.ttl),
                                             min(max(op.wait, 0.0), b.MAX_WAIT))
            return msgspec.to_builtins(lease) if lease is not None else None
        if isinstance(op, b.SpaceUnlock):
            return {"released": self.locks.release(op.space, op.key, op.token) is not None}
        if isinstance(op, b.SpaceRenew):
            return msgspec.to_builtins(self.locks.renew(op.space, op.key, op.token, b.lease_ttl(op.ttl), str(caller)))
        if isinstance(op, b.ListPipelines):
            return msgspec.to_builtins(self.registry(op.capability))
        if isinstance(op, b.RegisterPipeline):
            self.infos[op.pipeline] = msgspec.structs.replace(op.info, registered_at=now, by=who)
            return msgspec.to_builtins(next(e for e in self.registry(None) if e.pipeline == op.pipeline))
        raise InvalidRequest(f"{type(op).__name__} is not available to in-process runs; it needs the daemon")

    def registry(self, capability: str | None) -> list[b.RegistryEntry]:
        """Pipelines with runs in this process, and those that registered themselves (register_pipeline)."""
        entries: dict[str, b.RegistryEntry] = {}
        for run_id, (pipeline, capabilities) in self.runs.items():
            entry = entries.setdefault(pipeline, b.RegistryEntry(pipeline=pipeline, capabilities=list(capabilities)))
            entry.run_ids.append(run_id)
        for pipeline, info in self.infos.items():
            entry = entries.setdefault(pipeline, b.RegistryEntry(pipeline=pipeline))
            entry.info = info
            entry.capabilities += [c for c in info.capabilities if c not in entry.capabilities]
        found = [e for e in entries.values() if capability is None or capability in e.capabilities]
        return sorted(found, key=lambda e: e.pipeline)

    def _space(self, op: Any, who: str, now: float) -> Any:
        core = self.core
        if isinstance(op, b.SpaceGet):
            entry = core.get(op.space, op.key, who, now)
            return msgspec.to_builtins(entry) if entry is not None else None
        if isinstance(op, b.SpaceKeys):
            space = core.space(op.space)
            keys = space.keys(op.prefix)
            return [[k, space.entries[k].version, space.sizes.get(k, 0)] for k in keys] if op.versions else keys
        if isinstance(op, b.SpaceLog):
            return msgspec.to_builtins(list(core.space(op.space).log)[-max(1, min(op.limit, 10_000)):])
        if isinstance(op, b.SpacePut):
            entry = core.put(op.space, op.key, op.value, who, now, b.fence_of(op))
            self._changed(op.space, "put", entry.key, entry.version, op.value, who)
            return msgspec.to_builtins(entry)
        if isinstance(op, b.SpaceCas):
            ok, current = core.cas(op.space, op.key, op.value, op.expected_version, who, now, b.fence_of(op))
            if ok and current is not None:
                self._changed(op.space, "cas", current.key, current.version, op.value, who)
            return {"ok": ok, "entry": msgspec.to_builtins(current) if current is not None else None}
        deleted = core.delete(op.space, op.key, who, now, op.expected_version, b.fence_of(op))
        if deleted is not None:
            self._changed(op.space, "delete", op.key, deleted.version, None, who)
        return {"deleted": deleted is not None}

    def _changed(self, space: str, op: str, key: str, version: int, value: Any, who: str) -> None:
        self.publish(f"space.{space}.{key}", {"space": space, "key": key, "op": op, "version": version,
                                              "value": value, "by": who})

    async def _receive(self, caller: b.StepRef, wait: float) -> Any:
        message = await self._receivers.receive(caller.pipeline, caller.holder, wait)
        return msgspec.to_builtins(message) if message is not None else None

    async def _wait_event(self, prefix: str, wait: float) -> Any:
        if wait <= 0:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._watchers.append((prefix, future))
        try:
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            return None
