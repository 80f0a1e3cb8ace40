"""`RunDriver`: the loop's only writer of run state, and the run store's part in the group commit.

It feeds each run's machine (a task's outcome, a timer, a cancel) and carries out the actions the
machine returns: dispatches and cancels go to the executor, state changes to the run store,
lifecycle events wait for the next commit. It is the `RunOps` (tagentd/runs/ports.py) the broker,
the watcher and the control handlers are given, and it tells its `RunObserver` (the broker) what
happened.

Guarantees, as a `CommitParticipant` (tagentd/plumbing/ports.py):
- any action means the run's state moved, so the store hears of it: nothing is announced that
  the next flush does not write;
- `prepare` numbers this turn's lifecycle events and enters them in their runs' history *before*
  the flush (so the flush writes them too) and hands them to the observer (triggers they match
  are queued in the same commit);
- only `committed` announces them: `announced_finish` (what `tagent status --follow` waits for),
  the finished-run bookkeeping, and each touched run's waiters; `failed` keeps them for the next
  commit, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tagent_client.core import rollback, together
from tagent_client.core.events import (
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Emit,
    Event,
    Finish,
    Persist,
    ScheduleRetry,
    TimerFired,
)
from tagent_client.core.state import Compensation, StepStatus
from tagent_client.define.plan import Plan
from tagent_client.define.subpipeline import depth_problem
from tagent_client.errors import InvalidRequest, PipelineValidationError
from tagent_client.wire.protocol import EventRecord
from tagentd.executor.interface import Executor
from tagentd.plumbing.ports import Committed, MarkDirty
from tagentd.runs import retention
from tagentd.runs import submission as submit
from tagentd.runs.children import ChildRuns
from tagentd.runs.ports import RunObserver
from tagentd.runs.run import Run
from tagentd.runs.store import RunStore
from tagentd.runs.table import RunTable
from tagentd.runs.traces import RunTraces
from tagentd.settings.config import Settings

log = logging.getLogger("tagentd")

RETENTION_EVERY_S = 3600.0
#: A starting run's tasks dispatched, and sent, before the engine works out the others (`RunMachine.start`'s
#: `first`), so the workers start on them while the daemon plans the rest. 200 x 0.5 s waits on 2 workers,
#: A/B in pairs: 32 beat 16 and 64 (the first frames of each worker, 8 + 8 tasks, then the rest), 8 was worse.
FIRST_DISPATCHES = 32
Announced = list[tuple[Run, EventRecord]]


class _Unobserved:
    """The observer until one is given: hears nothing."""

    def on_event(self, run: Run, event: Any) -> None:
        return None

    def on_actions(self, run: Run, actions: list[Action]) -> None:
        return None

    def on_lifecycle(self, events: Announced) -> None:
        return None


class RunDriver:
    """Starts, feeds and stops runs; numbers and announces their events around each commit."""

    #: Where steps run; given by the daemon once the executor exists (before any run starts).
    executor: Executor
    #: The runs' spans when traces are on (`otlp_endpoint`); None: off, and no span is made.
    traces: RunTraces | None = None

    def __init__(self, *, settings: Settings, runs: RunTable, store: RunStore, stats: dict[str, Any],
                 mark_dirty: MarkDirty, committed: Committed) -> None:
        self.settings = settings
        self.runs = runs
        self.store = store
        self.stats = stats
        self.mark_dirty = mark_dirty
        self.wait_committed = committed
        self.accepting = True
        self.observer: RunObserver = _Unobserved()
        self.submit_keys = submit.SubmitKeys()  # which run each submit's idempotency key started, while the run is kept
        self.plans = submit.SharedPlans()  # the runs of one file share its Plan (encoded once for the run store)
        self._emits: list[tuple[Run, str, dict[str, Any]]] = []
        self._held: dict[Run, list[Event]] | None = None  # results waiting for the end of results_together
        self._unpublished: Announced = []
        self.children = ChildRuns(settings=settings, runs=runs, start=self.start_run, feed=self.feed,
                                  cancel=self.cancel_run)

    def observe(self, observer: RunObserver) -> None:
        """Tell `observer` of every event, action and lifecycle event from now on."""
        self.observer = observer

    # -- RunOps --------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        if self.traces is not None:
            self.traces.opened(run, "started")  # the run's trace is chosen now, kept in its history
        self.runs.add(run)
        self.store.created(run)
        now = time.time()
        self.apply(run, run.machine.start(now, first=FIRST_DISPATCHES))
        if run.machine.deferred:  # the first tasks leave now; workers start them while the engine does the rest
            run.machine.deferred = False
            self.executor.pump()
            self.apply(run, run.machine.handle_deferred(now))
        self.executor.pump()

    def cancel_run(self, run: Run, reason: str) -> None:
        self.apply(run, run.machine.handle(Cancelled(reason=reason), time.time()))

    def reset_run(self, run: Run, steps: list[str]) -> None:
        if not self.accepting:
            raise InvalidRequest(f"the daemon is stopping; resume or retry run {run.id} after the next start")
        run.announced_finish = False
        self.runs.reopened(run)
        if self.traces is not None:
            self.traces.opened(run, "reopened")
        self.apply(run, run.machine.reset(steps, time.time()))
        self.executor.pump()

    def rollback_run(self, run: Run) -> list[str]:
        """Start compensating an ended run (`tagent rollback`); the steps to compensate, [] if none."""
        if not self.accepting:
            raise InvalidRequest(f"the daemon is stopping; roll back run {run.id} after the next start")
        done = run.state.steps
        steps = sorted((n for n, s in done.items() if s.status is StepStatus.COMPLETED
                        and run.machine.specs[n].has_compensation and s.compensation is not Compensation.SUCCEEDED),
                       key=lambda n: -done[n].completed_seq)  # the order they run in: latest completion first
        if not steps:
            return []
        run.announced_finish = False
        self.runs.reopened(run)
        if self.traces is not None:
            self.traces.opened(run, "reopened")
        self.apply(run, rollback.on_demand(run.machine, time.time()) or [])
        self.executor.pump()
        return steps

    def recover(self, run: Run) -> None:
        """Drive an unfinished run found on disk at start-up: what its machine asks for after a restart."""
        if self.traces is not None:
            self.traces.opened(run, "recovered")
            self.store.changed(run)
        self.apply(run, run.machine.recover(time.time()))

    def feed(self, run: Run, event: Any) -> None:
        self.apply(run, run.machine.handle(event, time.time()))
        self.observer.on_event(run, event)

    def changed(self, run: Run) -> None:
        self.store.changed(run)

    def lend_slot(self, run: Run, task: str, attempt: int, lent: bool) -> None:
        self.apply(run, run.machine.lend_slot(task, attempt, lent, time.time()))
        self.executor.pump()

    def apply(self, run: Run, actions: list[Action]) -> None:
        """Carry out the engine's actions for `run` (Emits wait for the next commit).

        Any action means the run's state moved (a Dispatch without a Persist still started an attempt), so the
        store hears of it: nothing is announced that the next flush does not write.
        """
        loop = asyncio.get_running_loop()
        if actions:
            self.store.changed(run)  # what a Persist asks for: done once for all of them
        for action in actions:
            kind = type(action)  # the engine's actions are final classes: by type, the commonest first
            if kind is Emit:
                self._emits.append((run, action.topic, action.data))
            elif kind is Dispatch:
                self.executor.dispatch(run.attempt(action))
            elif kind is Persist:
                pass
            elif isinstance(action, CancelTask):
                self.executor.cancel(run.id, action.task, action.attempt)
            elif isinstance(action, ScheduleRetry):
                loop.call_later(max(0.0, action.at - time.time()), self._timer, run.id)
            elif isinstance(action, Finish):
                self.executor.forget_run(run.id)
                if self.traces is not None:
                    self.traces.finished(run)
        if actions:
            self.mark_dirty()
            self.observer.on_actions(run, actions)
            self.children.after(run, actions)  # children nobody waits for any more are cancelled
            if run.source.parent is not None and any(isinstance(a, Finish) for a in actions):
                self.children.ended(run)  # a child's end is its parent's attempt's outcome, in this same turn

    def _timer(self, run_id: str) -> None:
        run = self.runs.live(run_id)
        if run is not None and not run.finished:
            self.feed(run, TimerFired())
            self.executor.pump()

    def on_attempt(self, run_id: str, event: Event) -> None:
        """What became of an attempt, from the executor: its result, or the verdict on it once lost (kept for the
        end of `results_together` when inside it)."""
        run = self.runs.live(run_id)
        if run is None:
            return
        task = self.children.waiting_task(run, event)
        if task is not None:  # a sub-pipeline attempt computed its child's params: start the child, wait for it
            self._feed_held(run)  # what came before it, first
            self.children.start(run, task, event.output)
            self.store.changed(run)  # the link (an audit entry) is written with the child's Created record
            self.mark_dirty()
            self.executor.pump()
            return
        if self._held is not None:
            self._held.setdefault(run, []).append(event)
            return
        self.feed(run, event)

    @contextmanager
    def results_together(self) -> Iterator[Callable[[], None]]:
        """While inside, attempts' results (`on_attempt`) wait, in order, per run; on the way out, or when the
        function it gives is called (before anything else that concerns runs is handled: a step's broker call, a
        log line), each run's machine takes its results together (core/together.py): one look at what is ready per
        run and batch of results (what workers sent in one loop turn), not one per result. Nothing else sees a run
        between a result's arrival and its handling; its dispatches leave in the same turn."""
        if self._held is not None:  # inside another: that one feeds them
            yield self._feed_all_held
            return
        self._held = {}
        try:
            yield self._feed_all_held
        finally:
            self._feed_all_held()
            self._held = None

    def _feed_all_held(self) -> None:
        if self._held:
            for run in list(self._held):
                self._feed_held(run)

    def _feed_held(self, run: Run) -> None:
        events = self._held.pop(run, None) if self._held is not None else None
        if not events:
            return
        try:
            self.apply(run, together.handle_all(run.machine, events, time.time()))
            for event in events:
                self.observer.on_event(run, event)
        except Exception:  # noqa: BLE001 - one run's failure must not keep the others' results from their runs
            log.exception("results of run %s could not be applied", run.id)

    async def load_plan(self, path: str, source: str, target: str | None = None) -> Plan:
        return self.plans.same(await submit.load_plan(self.executor, path, source, target), source, target)

    async def submit_source(self, path: str, source: str, target: str | None = None, params: dict[str, Any] | None = None,
                            model: str | None = None, who: str = "daemon", *, plan: Plan | None = None,
                            idempotency_key: str | None = None) -> Run:
        """Start a run of the pipeline file `path` whose text is `source` (`tagent submit` and the folder watcher).

        The file is loaded in a worker unless `plan` is given (a declarative file, read without Python).
        Raises InvalidRequest while shutting down, PipelineLoadError / PipelineValidationError for a bad
        file, ConfigError for an agent step without a model.
        """
        if not self.accepting:
            raise InvalidRequest("the daemon is shutting down and accepts no new runs")
        if plan is None:
            plan = await self.load_plan(path, source, target)
        too_deep = depth_problem(plan, self.settings.max_child_depth)
        if too_deep:
            raise PipelineValidationError(plan.name, [f"{path}: {too_deep}"])
        run = submit.new_run(plan, path=path, source=source, target=target, params=params,
                             model=model or self.settings.model, who=who, idempotency_key=idempotency_key)
        self.start_run(run)
        return run

    # -- retention -----------------------------------------------------------------------------------

    def expire(self, *, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False,
               at_most: int | None = None) -> list[str]:
        """Remove expired finished runs (see retention.py), the oldest `at_most` of them if given; returns their ids."""
        age = self.settings.retention_days * 86400 if max_age_s is None else max_age_s
        limit = self.settings.retention_max_runs if max_runs is None else max_runs
        doomed = self.runs.expire(now=time.time(), max_age_s=age, max_runs=limit, dry_run=dry_run, at_most=at_most)
        if doomed and not dry_run:
            for run_id in doomed:
                self.executor.forget_run(run_id)
                self.submit_keys.forget(run_id)
            self.mark_dirty()
        return doomed

    async def retention_loop(self) -> None:
        """Apply the retention limits now and every RETENTION_EVERY_S."""
        while True:
            while len(self.expire(at_most=retention.BATCH)) == retention.BATCH:
                await self.wait_committed()  # a backlog (say, after lowering a limit) goes one batch per commit
            await asyncio.sleep(RETENTION_EVERY_S)

    # -- the group commit ----------------------------------------------------------------------------

    def prepare(self) -> Announced:
        """Number this turn's lifecycle events and enter them in their runs' history; the observer hears of them."""
        now = time.time()
        emitted = [(run, run.add_event(topic, data, now)) for run, topic, data in self._emits]
        self._emits.clear()
        self.observer.on_lifecycle(emitted)  # the runs they trigger are queued in this same commit
        events, self._unpublished = self._unpublished + emitted, []
        return events

    def flush(self, events: Announced) -> Awaitable[None] | None:
        """The run store's flush, or None when it has nothing to write (the commit then awaits only the others')."""
        return self.store.flush() if self.store.pending else None

    def all_written(self) -> bool:
        """Whether every change of the runs is on disk: none waits for the next flush and none is being written."""
        return not (self._emits or self.store.pending)

    def committed(self, events: Announced) -> None:
        """The events are on disk: announce finishes, wake each touched run's waiters, apply the run limits."""
        touched: set[Run] = set()
        for run, record in events:
            if record.topic == "run.finished":
                run.announced_finish = True
                self.runs.finished(run)
            touched.add(run)
        self.stats["events_published"] += len(events)
        for run in touched:
            run.notify()
        self.runs.trim()  # finished runs beyond the cache leave memory, now that all of them is on disk
        if 0 < self.settings.retention_max_runs < self.runs.finished_count:
            self.expire(at_most=retention.BATCH)  # a big backlog goes over several commits

    def failed(self, events: Announced) -> None:
        self._unpublished[:0] = events
