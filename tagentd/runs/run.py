"""`Run`: the daemon's record of one run — its machine, event log, log lines, memory and audit trail —
and `RunEntry`: the few fields of a run that stay in memory once it has finished (its line in the index).

A Run is only ever touched from the daemon's event loop. Readers that wait for
news (long-poll requests) await `Run.wait_for_news`; writers call `notify`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from functools import cached_property
from operator import attrgetter
from sys import intern
from typing import Any

import msgspec

from tagent_client.core.children import ChildLink
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch
from tagent_client.core.result import PipelineResult
from tagent_client.core.state import RunState, RunStatus, StepStatus
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import EventRecord, LogRecord, RunDetail, RunSummary, StepInfo
from tagentd.executor.interface import PipelineCode, StepAttempt

MAX_LOG_LINES = 10_000
CHILD_STARTED = "child.started"  # the audit entry that links a parent run to a child run (data: step, task, child)
MAX_EVENTS = 50_000
_SEQ = attrgetter("seq")
TRACE = "trace"  # the audit entry that keeps a run span's ids (data: trace_id, span_id, why): runs/traces.py


class RunSource(msgspec.Struct, kw_only=True):
    """What a run was started from: the file's path and text (snapshotted), its hash, and the pipeline picked."""

    path: str
    source: str
    source_hash: str
    target: str | None = None
    model: str | None = None
    trigger: Any = None
    idempotency_key: str | None = None  # the submit's (control.submit): a repeat of it returns this run
    parent: ChildLink | None = None  # a child run of a sub-pipeline step: which task of which run it reports to


class AuditEntry(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One line of a run's history: when, who (uid/pid, or "daemon"), what. Not tracked by the garbage collector
    (`gc=False`: plain data, never in a cycle; a run keeps two per step)."""

    ts: float
    who: str
    what: str
    data: dict[str, Any] = {}


_FINISHED = frozenset(status.value for status in RunStatus if status.finished)


class RunEntry(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """A run's line in the index: what listing, retention and start-up need, without the run's detail.

    `submitted_by` is who submitted the run (its first audit entry: "watcher", "uid=.. pid=..", ...);
    `trigger_id` the broker trigger that started it; `wal_seq` the WAL sequence number of the snapshot the
    entry was taken from (0 for an entry not taken from a snapshot); `idempotency_key` its submit's key;
    `parent_id` the run whose sub-pipeline step started it (a child run).
    """

    run_id: str
    pipeline: str
    status: str
    steps_done: int
    steps_total: int
    created_at: float
    finished_at: float | None = None
    path: str = ""
    source_hash: str = ""
    submitted_by: str = ""
    trigger_id: str | None = None
    wal_seq: int = 0
    idempotency_key: str | None = None
    parent_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in _FINISHED

    def shared(self) -> RunEntry:
        """The same entry with its often-repeated strings interned, so thousands of entries share them."""
        self.pipeline, self.status, self.path = intern(self.pipeline), intern(self.status), intern(self.path)
        self.source_hash, self.submitted_by = intern(self.source_hash), intern(self.submitted_by)
        return self

    def summary(self) -> RunSummary:
        return RunSummary(run_id=self.run_id, pipeline=self.pipeline, status=self.status, steps_done=self.steps_done,
                          steps_total=self.steps_total, created_at=self.created_at, finished_at=self.finished_at,
                          path=self.path, parent_id=self.parent_id)


class Run:
    """One run inside the daemon."""

    def __init__(self, source: RunSource, plan: Plan, machine: RunMachine) -> None:
        self.source = source
        self.plan = plan
        self.machine = machine
        self.events: list[EventRecord] = []
        self.logs: list[LogRecord] = []
        self.memory: dict[str, Any] = {}
        self.history: list[AuditEntry] = []
        self.announced_finish = False
        self.dirty_memory: set[str] = set()
        #: W3C traceparent of the run's open span (runs/traces.py) while traces are on; its attempts' parent.
        self.traceparent: str | None = None
        self._seq = 0
        self._log_seq = 0
        self._news = asyncio.Event()
        self._end: asyncio.Event | None = None  # made by the first `wait_for_end`, set by the notify after the finish

    @property
    def id(self) -> str:
        return self.machine.state.run_id

    @property
    def state(self) -> RunState:
        return self.machine.state

    @property
    def finished(self) -> bool:
        return self.machine.finished

    @property
    def event_seq(self) -> int:
        return self._seq

    @property
    def log_seq(self) -> int:
        return self._log_seq

    def restore_counters(self, event_seq: int, logs: list[LogRecord]) -> None:
        """After recovery: event numbering continues where it stopped; stored log lines come back."""
        self._seq = event_seq
        self.logs = list(logs)
        self._log_seq = logs[-1].seq if logs else 0

    @cached_property
    def code(self) -> PipelineCode:
        """The pipeline file the run's steps run from, as an executor's workers get it."""
        src = self.source
        return PipelineCode(path=src.path, source=src.source, source_hash=src.source_hash, target=src.target)

    def attempt(self, task: Dispatch) -> StepAttempt:
        """The attempt the engine dispatched, as plain data for the executor (tagentd.executor.interface)."""
        return StepAttempt(run_id=self.id, pipeline=self.plan.name, code=self.code, dispatch=task,
                           params=self.state.params, model=self.source.model, trigger=self.source.trigger,
                           traceparent=self.traceparent)

    def remember(self, key: str, value: Any) -> None:
        """`ctx.memory.save`: keep `value` under `key` for the rest of the run (durable on the next flush)."""
        self.memory[key] = value
        self.dirty_memory.add(key)

    # -- news --------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every long-poll waiting on this run (those waiting for its end only once its finish is announced)."""
        self._news.set()
        self._news = asyncio.Event()
        if self._end is not None and self.announced_finish:
            self._end.set()
            self._end = None

    async def wait_for_end(self, timeout: float) -> None:
        """Return once the run's finish has been announced, or after `timeout` s: the news of each commit that is not
        the end does not wake it (a `Client.wait` costs the loop nothing per commit of a running run)."""
        if timeout <= 0 or self.announced_finish:
            return
        if self._end is None:
            self._end = asyncio.Event()
        end = self._end
        try:
            await asyncio.wait_for(end.wait(), timeout)
        except TimeoutError:
            pass

    async def wait_for_news(self, timeout: float) -> None:
        if timeout <= 0:
            return
        news = self._news
        try:
            await asyncio.wait_for(news.wait(), timeout)
        except TimeoutError:
            pass

    def add_event(self, topic: str, data: dict[str, Any], ts: float) -> EventRecord:
        self._seq += 1
        record = EventRecord(seq=self._seq, ts=ts, topic=topic, data=data)
        self.events.append(record)
        if len(self.events) > MAX_EVENTS:
            del self.events[: len(self.events) - MAX_EVENTS]
        self.history.append(AuditEntry(ts=ts, who="daemon", what=topic, data=_brief(data)))
        return record

    def add_log(self, step: str, level: int, message: str, ts: float) -> None:
        self._log_seq += 1
        self.logs.append(LogRecord(seq=self._log_seq, ts=ts, step=step, level=logging.getLevelName(level), message=message))
        if len(self.logs) > MAX_LOG_LINES:
            del self.logs[: len(self.logs) - MAX_LOG_LINES]

    def audit(self, who: str, what: str, **data: Any) -> None:
        self.history.append(AuditEntry(ts=time.time(), who=who, what=what, data=data))

    def events_after(self, seq: int) -> list[EventRecord]:
        """The events numbered above `seq`: a binary search (they are kept in order), not a scan of the run's events."""
        return self.events[bisect_right(self.events, seq, key=_SEQ):] if self.events and self.events[-1].seq > seq else []

    def logs_after(self, seq: int) -> list[LogRecord]:
        """The log lines numbered above `seq`, found the same way."""
        return self.logs[bisect_right(self.logs, seq, key=_SEQ):] if self.logs and self.logs[-1].seq > seq else []

    # -- views --------------------------------------------------------------------------

    def entry(self, wal_seq: int = 0) -> RunEntry:
        """The run's index entry as of now (`wal_seq`: the snapshot it describes, if any)."""
        state = self.state
        first = self.history[0] if self.history else None
        trigger = self.source.trigger
        return RunEntry(
            run_id=self.id, pipeline=state.pipeline, status=state.status.value,
            steps_done=sum(1 for s in state.steps.values() if s.status is StepStatus.COMPLETED),  # not failed/skipped
            steps_total=len(state.steps),
            created_at=state.created_at, finished_at=state.finished_at, path=self.source.path,
            source_hash=self.source.source_hash, submitted_by=first.who if first and first.what == "submit" else "",
            trigger_id=str(trigger["id"]) if isinstance(trigger, dict) and trigger.get("id") else None, wal_seq=wal_seq,
            idempotency_key=self.source.idempotency_key,
            parent_id=self.source.parent.parent_id if self.source.parent else None,
        ).shared()

    def summary(self) -> RunSummary:
        return self.entry().summary()

    @cached_property
    def has_sub_pipelines(self) -> bool:
        """Whether a step of this run starts child runs (`pipeline=`)."""
        return any(spec.child is not None for spec in self.plan.steps)

    def children(self) -> dict[str, list[str]]:
        """Step → the child runs its sub-pipeline tasks started, in order (from the durable audit trail)."""
        found: dict[str, list[str]] = {}
        for entry in self.history:
            if entry.what == CHILD_STARTED:
                found.setdefault(entry.data["step"], []).append(entry.data["child"])
        return found

    def first_trace(self) -> tuple[str, str] | None:
        """The (trace id, span id) of the run's first span, from its durable history; None if it never had one."""
        entry = next((e for e in self.history if e.what == TRACE), None)
        return (entry.data["trace_id"], entry.data["span_id"]) if entry is not None else None

    def detail(self, with_plan: bool = False) -> RunDetail:
        """The run and each step's state; `with_plan`: also its plan as plain data, with the steps added at run time."""
        state = self.state
        children = self.children() if self.has_sub_pipelines else {}
        steps = {}
        for name, step in state.steps.items():
            duration = step.finished_at - step.started_at if step.finished_at and step.started_at else None
            steps[name] = StepInfo(
                status=step.status.value,
                attempts=step.attempts,
                started_at=step.started_at,
                finished_at=step.finished_at,
                duration_s=duration,
                error=str(step.error) if step.error and step.status is not StepStatus.COMPLETED else None,
                traceback=step.error.traceback if step.error and step.status is not StepStatus.COMPLETED else None,
                skip_reason=step.skip_reason,
                cost=step.usage.cost,
                tokens=step.usage.total_tokens,
                added_by=step.spec.added_by if step.spec is not None else None,
                compensation=step.compensation.value if step.compensation is not None else None,
                children=children.get(name, []),
            )
        return RunDetail(
            run_id=self.id, pipeline=state.pipeline, status=state.status.value, created_at=state.created_at,
            started_at=state.started_at, finished_at=state.finished_at, error=state.error, path=self.source.path,
            params=state.params, steps=steps, parent_id=self.source.parent.parent_id if self.source.parent else None,
            plan=self.plan_data() if with_plan else None, trace_id=trace[0] if (trace := self.first_trace()) else None,
        )

    def plan_data(self) -> dict[str, Any]:
        """The run's plan as plain data; the steps added at run time follow the pipeline's own."""
        plan = self.machine.plan
        declared = {spec.name for spec in plan.steps}
        added = [step.spec for name, step in self.state.steps.items() if step.spec is not None and name not in declared]
        return msgspec.to_builtins(msgspec.structs.replace(plan, steps=[*plan.steps, *added]))

    def result(self) -> PipelineResult:
        return PipelineResult.from_state(self.machine.plan, self.state, self.memory)


def _brief(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data without what its run's history already says (its run and pipeline)."""
    brief = data.copy()
    brief.pop("run_id", None)
    brief.pop("pipeline", None)
    return brief
