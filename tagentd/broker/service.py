"""`BrokerShell`: the broker's imperative shell — the pure `Broker` wired to the daemon's loop.

It owns the broker state, its store, the event bus (events.sock) and everything
that waits: parked `receive` requests, `wait_for_event` futures, events and
trigger starts that must wait for a commit. It is given ports, not the daemon:
`RunOps` (runs: start triggered ones, look one up, whether new ones may start),
`mark_dirty` and `steps_in_flight` (for the registry).

As the run driver's `RunObserver` (tagentd/runs/ports.py) it hears:
- `on_event(run, event)` for each task outcome: a succeeded attempt's leases are
  acknowledged, a failed, timed-out or lost one's are released (redelivered);
- `on_actions(run, actions)`: a cancelled attempt's leases are released, a
  finished triggered run frees a slot for the next queued event;
- `on_lifecycle(events)` before each flush: lifecycle events are matched against
  triggers (so the queued trigger is in the same commit) and held for the bus.

As a participant of the group commit (tagentd/app/commit.py) it `prepare`s what
waits for the commit (events to publish, trigger starts and acks to journal),
`flush`es its store when it has something to write, and once `committed`
journals those, publishes the events to subscribers and starts queued triggers;
`failed` puts them back. Steps' broker requests reach its handlers (handlers.py)
through tagentd/control/broker_calls.py.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tagent_client.core.broker import attempt_error
from tagent_client.core.broker_records import Entry, Lease, Record
from tagent_client.core.events import Action, CancelTask, StepSucceeded
from tagent_client.core.lock_queue import LockQueue
from tagent_client.core.locks import ended_why
from tagent_client.core.receivers import Receivers
from tagent_client.define.plan import Plan
from tagent_client.errors import InvalidRequest
from tagent_client.wire import protocol_broker as b
from tagent_client.wire.protocol import EventRecord
from tagentd.broker.events import EventBus
from tagentd.broker.replies import StepReplies
from tagentd.broker.state import Broker, QueuedTrigger, Registration
from tagentd.broker.store import BrokerStore, MemoryBrokerStore
from tagentd.executor.interface import RunningAttempt
from tagentd.plumbing.longpoll import Parked
from tagentd.plumbing.ports import MarkDirty
from tagentd.runs.ports import RunOps
from tagentd.runs.run import Run, RunSource
from tagentd.runs.submission import new_run
from tagentd.settings.config import Settings
from tagentd.worker.wire import source_hash

log = logging.getLogger("tagentd.broker")

ENDED_KEEP = 10_000        # attempts known to be over: a late receive for one leases nothing
RATE_WINDOW = 10           # seconds of counter samples behind the rates in `stats`
Holder = tuple[str, str, int]
#: What one commit makes safe to publish / journal / send: lifecycle events, user events, trigger starts, acks, the
#: steps' replies that wait for it, and (filled in when its flush writes) the messages its flush covers.
Token = tuple[list[EventRecord], list[EventRecord], list[QueuedTrigger], list[Record], list[Callable[[], None]],
              set[tuple[str, str]]]


class BrokerShell:
    """The daemon's broker: state, store, bus, waiters and hooks. Only the daemon's loop uses it."""

    def __init__(self, settings: Settings, *, ops: RunOps, mark_dirty: MarkDirty,
                 steps_in_flight: Callable[[], Iterable[RunningAttempt]],
                 runs_written: Callable[[], bool] = lambda: False,
                 on_fsync: Callable[[float], None] | None = None) -> None:
        self.ops = ops
        self.mark_dirty = mark_dirty
        #: Whether every change of the runs is on disk (none waits for a flush, none is being written): only then may
        #: messages be written ahead of their commit (docs/checkpoints.md, "Pipelined commits").
        self.runs_written = runs_written
        #: The attempts running on workers right now (for the registry).
        self.steps_in_flight = steps_in_flight
        config_allow = {name: s.allow for name, s in settings.spaces.items() if s.allow is not None}
        self.broker = Broker(mailbox_max=settings.mailbox_max, trigger_max_concurrent=settings.trigger_max_concurrent,
                             config_allow=config_allow, max_deliveries=settings.max_deliveries,
                             max_deliveries_of={name: m.max_deliveries for name, m in settings.mailboxes.items()})
        self.store = (BrokerStore(settings.state_dir, self.broker, on_fsync) if settings.durable
                      else MemoryBrokerStore(self.broker))
        self.bus: EventBus | None = None
        self._seq = itertools.count(1)
        self._receivers = Receivers(self.broker.core.lease)
        self.locks = LockQueue(self.broker.core, mark_dirty)  # per-key locks of the spaces: parked requests, ttls
        self._lifecycle: list[EventRecord] = []    # runs' lifecycle events, published after the next commit
        self._pending: list[EventRecord] = []      # user and space events, published after them
        self._launched: list[QueuedTrigger] = []    # runs created; their TriggerStarted waits for the run's commit
        self._acks: list[Record] = []               # acks of succeeded attempts; wait for the attempt's commit
        self.replies = StepReplies()  # which messages are written yet; the steps' replies waiting for a write or commit
        self._ahead_soon = False      # a write ahead of the commit is scheduled for this loop turn
        self._ended: collections.OrderedDict[Holder, None] = collections.OrderedDict()
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(maxlen=RATE_WINDOW + 1)

    # -- lifecycle --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the broker store and square it with the run table (call after the runs are loaded)."""
        self.store.load()
        started = {entry.trigger_id for entry in self.ops.runs.entries() if entry.trigger_id}
        for run in self.ops.runs.active():
            if isinstance(run.source.trigger, dict) and run.source.trigger.get("id"):
                self.broker.triggered_running.setdefault(run.plan.name, set()).add(run.id)
        dropped = self.broker.forget_started(started)
        ended = self.locks.release_all("daemon restarted")  # no attempt survives a restart (recovery re-runs them)
        if ended:
            log.info("broker: %d lock lease(s) held before the restart released; their tokens are not reused", ended)
        if dropped:
            log.info("broker: %d queued trigger(s) had started their run before the crash; not starting them again", dropped)

    def bind(self, zctx: Any, endpoint: str) -> None:
        self.bus = EventBus.bind(zctx, endpoint)

    async def serve(self) -> None:
        """Start the bus; every second: expire silent subscribers, report drops, sample rates, start triggers."""
        assert self.bus is not None
        self.bus.start()
        self.pump_triggers()
        while True:
            now = time.monotonic()
            self.bus.tick(now)
            self.samples.append((now, self.counters()))
            await asyncio.sleep(1.0)

    def close(self) -> None:
        self.store.close()
        if self.bus is not None:
            self.bus.close()

    def counters(self) -> dict[str, int]:
        """Every counter of the broker and its bus (monotonic since the daemon started)."""
        found = dict(self.broker.stats)
        found.update(self.locks.stats)
        if self.bus is not None:
            found.update(self.bus.stats)
        return found

    # -- what happens to runs (RunObserver) -------------------------------------------------------------------

    def on_event(self, run: Run, event: Any) -> None:
        holder = (run.id, getattr(event, "task", ""), getattr(event, "attempt", 0))
        if not holder[1]:
            return
        if self._quiet(holder):  # the attempt holds nothing and nothing is parked: only remember that it ended
            self._note_ended(holder)
            return
        self._end(holder, isinstance(event, StepSucceeded), attempt_error(event))
        self.locks.settle(holder, ended_why(event))

    def _quiet(self, holder: Holder) -> bool:
        """Whether settling `holder` would change nothing: it leases no message, and no receive or lock request is
        parked and no lock held (by anyone: those are cheap to ask as a whole). The usual case for a step that
        does not use the broker, which then costs its end a dictionary entry, not a walk of the broker's state."""
        return holder not in self.broker.core.holders and not self._receivers.parked and self.locks.quiet

    def _note_ended(self, holder: Holder) -> None:
        """Remember that attempt `holder` is over (a late re-send of its receive or lock then gets nothing)."""
        self._ended[holder] = None
        if len(self._ended) > ENDED_KEEP:
            self._ended.popitem(last=False)

    def on_actions(self, run: Run, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, CancelTask):
                self._end((run.id, action.task, action.attempt), False, None)
                self.locks.settle((run.id, action.task, action.attempt), ended_why(None))
        if run.finished:
            self.locks.settle_run(run.id, "run finished")
        if run.finished and isinstance(run.source.trigger, dict):
            running = self.broker.triggered_running.get(run.plan.name)
            if running and run.id in running:
                self.broker.run_ended(run.plan.name, run.id)
                self.pump_triggers()

    def _end(self, holder: Holder, succeeded: bool, error: str | None) -> None:
        """Attempt `holder` ended: ack its messages (succeeded), count a failed delivery (`error`), or release them."""
        self._note_ended(holder)
        self._receivers.wake(holder)
        journal = self.broker.core.journal
        before = len(journal)
        count, dead = self.broker.core.settle(holder, succeeded, error, time.time())
        if succeeded and len(journal) > before:
            # Written one commit after the success itself: a crash in between redelivers (at-least-once); the
            # other order could lose messages to an attempt whose success was never recorded.
            self._acks += journal[before:]
            del journal[before:]
        for letter in dead:
            message = letter.message
            log.warning("mailbox %s: message %s failed %d deliveries (last: %s); moved to the dead letters: see "
                        "'tagent mailbox dead %s', then requeue or drop it", message.mailbox, message.id,
                        message.failures, letter.error, message.mailbox)
        if count:
            self.broker.stats["messages_acked" if succeeded else "messages_released"] += count - len(dead)
            self.broker.stats["messages_dead"] += len(dead)
            if not succeeded:
                self._receivers.deliver_all()
            self.mark_dirty()

    def on_lifecycle(self, events: list[tuple[Run, EventRecord]]) -> None:
        """Queue a triggered run for each new lifecycle event that matches (a run never triggers its own pipeline);
        hold the events for the bus until the commit that writes them."""
        if self.broker.registrations:
            for run, record in events:
                for pipeline in self.broker.match(record.topic, run.plan.name):
                    self.broker.enqueue(pipeline, record.topic, record.data, record.ts, record.seq)
        self._lifecycle += [record for _, record in events]

    # -- the group commit (CommitParticipant) ------------------------------------------------------------------

    def prepare(self) -> Token:
        """Take what waits for this commit: events to publish, trigger starts and acks to journal after it, and the
        steps' replies it holds."""
        token = (self._lifecycle, self._pending, self._launched, self._acks, self.replies.after_commit, set())
        self._lifecycle, self._pending, self._launched, self._acks, self.replies.after_commit = [], [], [], [], []
        return token

    def flush(self, token: Token) -> Awaitable[None] | None:
        """Write the broker store in the same commit as the run store, when it has anything to write."""
        return self._flush(token) if self.has_writes() else None

    async def _flush(self, token: Token) -> None:
        """The store's flush; the receives waiting for a message it writes are answered once it is written (its fsync
        may still run: docs/checkpoints.md, "Writing: group commit")."""
        try:
            await self.store.flush(self.replies.volatile, lambda: token[5].update(self.replies.flush_wrote()))
        except BaseException:
            self.replies.undone(token[5])  # cut off the log, to be written again: receives of them wait again
            raise

    def failed(self, token: Token) -> None:
        self._lifecycle[:0], self._pending[:0], self._launched[:0], self._acks[:0] = token[:4]
        self.replies.after_commit[:0] = token[4]

    def committed(self, token: Token) -> None:
        """The commit is on disk: journal the trigger starts and acks it made safe, publish, start queued triggers."""
        lifecycle, pending, launched, acks, replies, _ = token
        for send in replies:  # in the turn the commit ends
            send()
        for item in launched:
            self.broker.trigger_durable(item)
        self.broker.journal.extend(acks)
        if self.bus is not None:
            self.bus.publish(lifecycle + pending if pending else lifecycle)
        self.pump_triggers()
        if self.broker.journal:
            self.mark_dirty()

    def _write_ahead(self) -> None:
        """Once per loop turn with new messages: while the commit in flight is being fsynced and wrote nothing but the
        broker log, write them behind it now (their fsync starts the moment its fsync ends; the next commit awaits
        it), and answer the receives waiting for them. Not while any change of the runs is unwritten or being
        written: a message may be a consequence of one (docs/checkpoints.md, "Pipelined commits")."""
        self._ahead_soon = False
        if self.runs_written() and self.store.write_ahead(self.replies.volatile):
            self.replies.written()

    def publish_now(self, topic: str, data: Any) -> None:
        """Best effort and at once, without a commit and without triggers (progress notes)."""
        if self.bus is not None:
            self.bus.publish([EventRecord(seq=0, ts=time.time(), topic=topic, data=data)])

    # -- mailboxes --------------------------------------------------------------------------------------------

    def send(self, to: str, message_id: str, sender: str, payload: Any, *, message_type: str = "data",
             from_pipeline: str = "", durable: bool = True) -> dict[str, Any]:
        """Append a message to `to`'s mailbox (journalled for the next commit); parked receivers get it now.

        A non-durable message (`durable=False`) is remembered as volatile until the commit that writes it:
        its sender and its receiver are answered without waiting for that commit (`StepReplies.answered_at_once`).
        """
        sent = self.broker.core.send(to, message_id, sender, payload, time.time(), message_type=message_type,
                                     from_pipeline=from_pipeline)
        self.broker.stats["messages_duplicate" if sent is None else "messages_sent"] += 1
        if sent is not None:
            self.replies.sent((to, message_id), durable)
            if not durable:
                self.broker.stats["messages_sent_not_durable"] += 1
            self._receivers.deliver(to)
            self.mark_dirty()
            if not self._ahead_soon:
                self._ahead_soon = True
                asyncio.get_running_loop().call_soon(self._write_ahead)
        return {"id": message_id, "duplicate": sent is None}

    def receive(self, caller: b.StepRef, wait: float) -> Parked:
        """The oldest leasable message of the caller's mailbox, leased to its attempt: now, or when one comes
        within `wait` s (resolved inside the send that brings it), else None."""
        holder = caller.holder
        run = self.ops.runs.live(caller.run_id)
        if holder in self._ended or run is None or run.finished:
            return Parked.now(None)  # a late re-send for an attempt that is over: lease nothing
        parked = Parked()

        def deliver(message: Any) -> None:
            if message is not None:
                self.broker.stats["messages_delivered"] += 1
            parked.resolve(message)

        self._receivers.park(caller.pipeline, holder, wait, deliver)
        return parked

    def reply(self, request: Any, result: Any, send: Callable[[], None]) -> None:
        """Call `send` (a step's reply leaves) at the right time (`StepReplies.reply`): now, once the message it leased
        is written, or once the next commit is on disk."""
        if self.replies.reply(request, result, send):
            self.mark_dirty()

    async def lock(self, caller: b.StepRef, space: str, key: str, ttl: float, wait: float) -> Lease | None:
        """A lease on `key` for the calling attempt (parked up to `wait` s); None for an attempt that is over."""
        run = self.ops.runs.live(caller.run_id)
        if caller.holder in self._ended or run is None or run.finished:
            return None  # a late re-send for an attempt that is over: grant nothing
        return await self.locks.acquire(space, key, caller.holder, str(caller), ttl, wait)

    def requeue(self, mailbox: str, ids: list[str], every: bool) -> list[str]:
        """Dead letters back at their original positions (durable at the commit); parked receivers get them."""
        requeued = self.broker.core.requeue(mailbox, ids, every)
        self.broker.stats["messages_requeued"] += len(requeued)
        self._receivers.deliver(mailbox)
        return requeued

    # -- topics and spaces ----------------------------------------------------------------------------------------

    def has_writes(self) -> bool:
        """Whether the broker store has anything to write at this commit."""
        return bool(self.broker.journal) or self.store.pending

    def publish_many(self, events: list[tuple[str, Any]], origin: str | None) -> int:
        """`publish` for a batch; returns how many runs were queued."""
        now, seq, match = time.time(), self._seq, self.broker.match
        source = origin or ""
        records = [EventRecord(seq=next(seq), ts=now, topic=topic, data=data, source=source) for topic, data in events]
        triggered = 0
        if self.broker.registrations:
            for record in records:
                for pipeline in match(record.topic, origin):
                    self.broker.enqueue(pipeline, record.topic, record.data, record.ts, record.seq)
                    triggered += 1
        self._pending += records
        self.broker.stats["user_events"] += len(records)
        self.mark_dirty()
        return triggered

    def publish(self, topic: str, data: Any, origin: str | None, event_id: str = "") -> tuple[EventRecord, list[str]]:
        """A user or space event: triggers are queued now (durable in this commit), subscribers hear it after.

        `origin` (the publishing pipeline, if any) is the event's `source`, and is never triggered by it.
        """
        record = EventRecord(seq=next(self._seq), ts=time.time(), topic=topic, data=data, source=origin or "",
                             id=event_id)
        triggered = self.broker.match(topic, origin)
        for pipeline in triggered:
            self.broker.enqueue(pipeline, topic, data, record.ts, record.seq)
        self._pending.append(record)
        self.broker.stats["user_events"] += 1
        self.mark_dirty()
        return record, triggered

    async def wait_event(self, prefix: str, wait: float) -> Any:
        if wait <= 0 or self.bus is None:
            return None
        future = self.bus.wait(prefix)
        try:
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            return None

    def space_changed(self, space: str, op: str, entry: Entry, by: str, caller: b.StepRef | None) -> None:
        self.broker.stats["space_writes"] += 1
        data = {"space": space, "key": entry.key, "op": op, "version": entry.version, "value": entry.value, "by": by}
        self.publish(f"space.{space}.{entry.key}", data, caller.pipeline if caller is not None else None)

    # -- triggers -----------------------------------------------------------------------------------

    def register(self, *, path: str, source: str, target: str | None, model: str | None, plan: Plan, who: str) -> Registration:
        """Register a pipeline with triggers (replacing an older registration of its name); durable at the commit.

        Raises InvalidRequest while shutting down, ConfigError if an agent step would have no model.
        """
        if not self.ops.accepting:
            raise InvalidRequest("the daemon is shutting down and accepts no registrations")
        new_run(plan, path=path, source=source, target=target, params={}, model=model, who=who)  # the same checks
        registration = Registration(
            pipeline=plan.name, plan=plan, triggers=list(plan.triggers), registered_at=time.time(), by=who,
            source=RunSource(path=path, source=source, source_hash=source_hash(source), target=target, model=model))
        self.broker.register(registration)
        self.mark_dirty()
        log.info("pipeline %s registered by %s: a run starts on each event matching %s", plan.name, who,
                 ", ".join(plan.triggers))
        return registration

    def pump_triggers(self) -> None:
        """Start a run for each queued event whose pipeline is below its concurrency limit."""
        if not self.ops.accepting:
            return
        for item in self.broker.startable():
            registration = self.broker.registrations.get(item.pipeline)
            if registration is None:
                continue
            src = registration.source
            run = new_run(registration.plan, path=src.path, source=src.source, target=src.target, params={},
                          model=src.model, who=f"trigger {item.topic}")
            run.source.trigger = item.as_trigger()
            self.ops.start_run(run)
            self.broker.started(item, run.id)
            self._launched.append(item)
