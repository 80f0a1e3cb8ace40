"""`Broker`: the daemon's broker state — the shared core plus allow-lists, trigger registrations and their queue.

Pure and in memory, like the engine: no sockets, no files, no clock of its own.
The mailbox and space mechanics are `tagent_client.core.broker` (shared with
in-process runs); this adds what only the daemon has:

- allow-lists of pipelines per space (from tagentd.toml `[spaces.NAME] allow`
  and from `tagent space allow`), checked for steps only — clients are the owner;
- registrations of triggered pipelines (source snapshot, plan, trigger prefixes)
  and a durable FIFO of the events waiting to start a run of each, bounded in
  flight by `trigger_max_concurrent` runs per pipeline;
- what pipelines said about themselves (`register_pipeline`: description,
  capabilities, metadata), shown in the registry until unregistered;
- counters for `stats`.

Every durable change is a record in `journal` (the core's and these), in order;
`tagentd/broker/store.py` writes them and replays them through `apply`.
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any

import msgspec

from tagent_client.core.broker import MAX_DELIVERIES, BrokerCore, CoreSnapshot
from tagent_client.core.broker_records import CoreRecord, Record
from tagent_client.define.plan import Plan
from tagent_client.errors import PermissionDenied
from tagent_client.wire.protocol_broker import PipelineInfo, StepRef, matches
from tagentd.runs.run import RunSource


class Registration(msgspec.Struct, kw_only=True):
    """A pipeline registered for events: what to run (the source as submitted) and on which topics."""

    pipeline: str
    source: RunSource
    plan: Plan
    triggers: list[str]
    registered_at: float = 0.0
    by: str = ""


class QueuedTrigger(msgspec.Struct, kw_only=True):
    """An event waiting to start a run of `pipeline` (its id is stored in the run's trigger, so never started twice)."""

    id: str
    pipeline: str
    topic: str
    data: Any = None
    ts: float = 0.0
    seq: int = 0

    def as_trigger(self) -> dict[str, Any]:
        """What the run sees as `ctx.trigger`."""
        return {"id": self.id, "topic": self.topic, "data": self.data, "ts": self.ts, "seq": self.seq}


class Registered(Record, tag="registered"):
    registration: Registration


class Unregistered(Record, tag="unregistered"):
    pipeline: str


class AllowSet(Record, tag="allow"):
    """The allow-list granted at run time for `space` (None: lifted)."""

    space: str
    pipelines: list[str] | None = None


class TriggerQueued(Record, tag="trigger_queued"):
    item: QueuedTrigger


class TriggerStarted(Record, tag="trigger_started"):
    pipeline: str
    id: str


class InfoRegistered(Record, tag="pipeline_info"):
    """A pipeline's `register_pipeline` info (replacing the one before)."""

    pipeline: str
    info: PipelineInfo


AnyRecord = CoreRecord | Registered | Unregistered | AllowSet | TriggerQueued | TriggerStarted | InfoRegistered


class BrokerSnapshot(msgspec.Struct, kw_only=True):
    core: CoreSnapshot = msgspec.field(default_factory=CoreSnapshot)
    allow: dict[str, list[str]] = {}
    registrations: list[Registration] = []
    queue: list[QueuedTrigger] = []
    infos: dict[str, PipelineInfo] = {}


class Broker:
    """The daemon's broker state; only the daemon's loop touches it."""

    def __init__(self, *, mailbox_max: int, trigger_max_concurrent: int,
                 config_allow: dict[str, list[str]] | None = None, max_deliveries: int = MAX_DELIVERIES,
                 max_deliveries_of: dict[str, int] | None = None) -> None:
        self.core = BrokerCore(mailbox_max=mailbox_max, max_deliveries=max_deliveries,
                               max_deliveries_of=max_deliveries_of, journal=True)
        self.trigger_max_concurrent = trigger_max_concurrent
        self.config_allow = {space: set(names) for space, names in (config_allow or {}).items()}
        self.granted: dict[str, set[str]] = {}
        self.registrations: dict[str, Registration] = {}
        self.infos: dict[str, PipelineInfo] = {}  # pipeline -> what it said of itself (register_pipeline)
        self.queue: dict[str, collections.deque[QueuedTrigger]] = {}
        self.triggered_running: dict[str, set[str]] = {}  # pipeline -> run ids started by a trigger, unfinished
        self.launching: dict[str, QueuedTrigger] = {}  # popped from the queue; TriggerStarted not yet journalled
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def journal(self) -> list[Record]:
        return self.core.journal

    def _record(self, record: Record) -> None:
        self.core.journal.append(record)

    # -- allow-lists ------------------------------------------------------------------------------------

    def allowed(self, space: str) -> set[str] | None:
        """The pipelines allowed in `space`, or None when it is open to all."""
        config, granted = self.config_allow.get(space), self.granted.get(space)
        if config is None and granted is None:
            return None
        return (config or set()) | (granted or set())

    def check_access(self, space: str, caller: StepRef | None, op: str, key: str = "") -> None:
        """Raise PermissionDenied (and log the refusal) if a step of a pipeline not on the space's allow-list asks.

        Clients pass: they are the daemon's owner.
        """
        if caller is None:
            return
        allowed = self.allowed(space)
        if allowed is None or caller.pipeline in allowed:
            return
        self.stats["permission_denied"] += 1
        self.core.refused(space, str(caller), op, key, time.time())
        listed = ", ".join(sorted(allowed)) or "none"
        verb = {"get": "read", "keys": "list the keys of", "log": "read the log of"}.get(op, "write")
        raise PermissionDenied(
            f"space {space!r} is restricted to pipelines {listed}; pipeline {caller.pipeline!r} (run {caller.run_id}, "
            f"step {caller.step!r}) may not {verb} it: add it with 'tagent space allow {space} {caller.pipeline}' "
            f"or in tagentd.toml [spaces.{space}] allow", space=space, pipeline=caller.pipeline)

    def grant(self, space: str, pipelines: list[str], replace: bool) -> set[str] | None:
        current = set() if replace else set(self.granted.get(space, set()))
        current |= set(pipelines)
        if replace and not pipelines:
            self.granted.pop(space, None)
            self._record(AllowSet(space=space, pipelines=None))
        else:
            self.granted[space] = current
            self._record(AllowSet(space=space, pipelines=sorted(current)))
        return self.allowed(space)

    # -- triggers ----------------------------------------------------------------------------------------

    def register(self, registration: Registration) -> None:
        self.registrations[registration.pipeline] = registration
        self._record(Registered(registration=registration))

    def describe(self, pipeline: str, info: PipelineInfo) -> None:
        """Keep what `pipeline` says of itself (register_pipeline) until it is unregistered."""
        self.infos[pipeline] = info
        self._record(InfoRegistered(pipeline=pipeline, info=info))

    def unregister(self, pipeline: str) -> int:
        """Forget a registration, its info and its queued events; returns how many queued events were dropped."""
        self.registrations.pop(pipeline, None)
        self.infos.pop(pipeline, None)
        dropped = len(self.queue.pop(pipeline, ()))
        self._record(Unregistered(pipeline=pipeline))
        return dropped

    def match(self, topic: str, origin_pipeline: str | None) -> list[str]:
        """Registered pipelines whose triggers match `topic` (never the pipeline the event came from)."""
        return [name for name, reg in self.registrations.items()
                if name != origin_pipeline and matches(topic, reg.triggers)]

    def enqueue(self, pipeline: str, topic: str, data: Any, ts: float, seq: int) -> QueuedTrigger:
        item = QueuedTrigger(id=uuid.uuid4().hex, pipeline=pipeline, topic=topic, data=data, ts=ts, seq=seq)
        self.queue.setdefault(pipeline, collections.deque()).append(item)
        self._record(TriggerQueued(item=item))
        self.stats["triggers_queued"] += 1
        return item

    def startable(self) -> list[QueuedTrigger]:
        """Pop every queued event that may start a run now (each pipeline below its concurrency limit)."""
        out = []
        for pipeline, queue in self.queue.items():
            running = self.triggered_running.setdefault(pipeline, set())
            while queue and len(running) + sum(1 for i in out if i.pipeline == pipeline) < self.trigger_max_concurrent:
                item = queue.popleft()
                self.launching[item.id] = item
                out.append(item)
        return out

    def started(self, item: QueuedTrigger, run_id: str) -> None:
        """A run was created for `item` (its TriggerStarted is journalled by `trigger_durable` after the run is)."""
        self.triggered_running.setdefault(item.pipeline, set()).add(run_id)
        self.stats["triggered_runs"] += 1

    def trigger_durable(self, item: QueuedTrigger) -> None:
        self.launching.pop(item.id, None)
        self._record(TriggerStarted(pipeline=item.pipeline, id=item.id))

    def run_ended(self, pipeline: str, run_id: str) -> None:
        self.triggered_running.get(pipeline, set()).discard(run_id)

    def forget_started(self, started_ids: set[str]) -> int:
        """At load: drop queued events whose run exists already (it was created; its TriggerStarted was not written)."""
        dropped = 0
        for pipeline, queue in self.queue.items():
            kept = [item for item in queue if item.id not in started_ids]
            dropped += len(queue) - len(kept)
            self.queue[pipeline] = collections.deque(kept)
        return dropped

    # -- durability -----------------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        if isinstance(record, Registered):
            self.registrations[record.registration.pipeline] = record.registration
        elif isinstance(record, Unregistered):
            self.registrations.pop(record.pipeline, None)
            self.infos.pop(record.pipeline, None)
            self.queue.pop(record.pipeline, None)
        elif isinstance(record, InfoRegistered):
            self.infos[record.pipeline] = record.info
        elif isinstance(record, AllowSet):
            if record.pipelines is None:
                self.granted.pop(record.space, None)
            else:
                self.granted[record.space] = set(record.pipelines)
        elif isinstance(record, TriggerQueued):
            self.queue.setdefault(record.item.pipeline, collections.deque()).append(record.item)
        elif isinstance(record, TriggerStarted):
            queue = self.queue.get(record.pipeline)
            if queue and queue[0].id == record.id:
                queue.popleft()  # the usual case: events start runs in queue order
            elif queue:
                self.queue[record.pipeline] = collections.deque(i for i in queue if i.id != record.id)
        else:
            self.core.apply(record)

    def snapshot(self) -> BrokerSnapshot:
        return BrokerSnapshot(
            core=self.core.snapshot(), allow={s: sorted(p) for s, p in self.granted.items()},
            registrations=list(self.registrations.values()),
            queue=[*self.launching.values(), *(i for q in self.queue.values() for i in q)], infos=dict(self.infos),
        )

    def restore(self, snapshot: BrokerSnapshot) -> None:
        self.core.restore(snapshot.core)
        self.granted = {space: set(names) for space, names in snapshot.allow.items()}
        self.registrations = {r.pipeline: r for r in snapshot.registrations}
        self.infos = dict(snapshot.infos)
        for item in snapshot.queue:
            self.queue.setdefault(item.pipeline, collections.deque()).append(item)
