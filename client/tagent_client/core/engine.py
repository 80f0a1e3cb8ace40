"""The run state machine: pure scheduling, no I/O, no clocks, no sleeping.

`RunMachine` takes a `Plan` and events (with the current time passed in) and
returns actions. The in-process runner and the daemon only carry actions out,
so every scheduling rule (docs/semantics.md) is decided here, once.

Guarantees:
- a step is dispatched as soon as its dependencies allow, never later;
- SERIAL steps of a run never overlap; at most `max_concurrent_steps` tasks run;
- events for an attempt that is no longer current are ignored (at-least-once safe);
- every step ends in exactly one terminal state, and the run always finishes:
  if nothing is running, waiting or runnable the run fails with a diagnostic.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ..define.conditions import condition_from_data
from ..define.plan import Plan, StepSpec
from . import dynamic, rerun, rollback
from .events import (
    PERSIST,
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Emit,
    Event,
    Finish,
    Persist,
    ScheduleRetry,
    StepFailed,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    WorkerLost,
)
from .judged import condition_verdict
from .result import to_builtins
from .rules import backoff_delay
from .run_index import RunIndex
from .scheduling import Scheduling
from .state import (
    FINISHED_RUN,
    ErrorInfo,
    Phase,
    RunState,
    RunStatus,
    StepState,
    StepStatus,
    TaskState,
    TaskStatus,
)

_LIVE_TASK = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING_RETRY)


class RunMachine(Scheduling):
    """One run of one plan. Feed it `start`, then `handle(event, now)`; carry out what it returns.

    Besides the persisted `state`, the machine keeps derived indexes (`index`: tasks
    per step, queued / running / waiting tasks, busy SERIAL steps, steps to look at)
    so one event costs time in proportion to what it changes, not to the size
    of the run. `take_changes()` tells a store which steps and tasks changed.
    """

    def __init__(self, plan: Plan, state: RunState, *, rng: random.Random | None = None) -> None:
        self.state = state
        self.rng = rng or random.Random()
        dependents = self._learn(dynamic.with_added(plan, state))
        self.index = RunIndex(state, self.specs, dependents)
        self.held = False
        self.deferring = self.deferred = False  # together.handle_all: scheduling waits for its last event
        self.dispatch_limit: int | None = None  # start(first=): dispatch at most that many; the rest are deferred

    def replan(self, plan: Plan) -> None:
        """Schedule from `plan` (the pipeline's steps, then those added at run time: core/dynamic.py);
        the state's steps match it. Rebuilds the derived indexes."""
        self.index.dependents = self._learn(plan)
        self.index.specs = self.specs
        self.index.rebuild()

    def _learn(self, plan: Plan) -> dict[str, list[str]]:
        """Take `plan`'s tables (specs, order, conditions); returns who depends on each step."""
        self.plan = plan
        self.specs: dict[str, StepSpec] = {s.name: s for s in plan.steps}
        self._order = {s.name: i for i, s in enumerate(plan.steps)}
        self._conditions = {s.name: condition_from_data(s.condition) for s in plan.steps if s.condition}
        dependents: dict[str, list[str]] = {s.name: [] for s in plan.steps}
        for spec in plan.steps:
            for dep in spec.deps:
                dependents[dep].append(spec.name)
        return dependents

    @classmethod
    def new(cls, plan: Plan, run_id: str, *, params: Mapping[str, Any] | None = None, now: float = 0.0,
            rng: random.Random | None = None) -> RunMachine:
        state = RunState(run_id=run_id, pipeline=plan.name, params=dict(params or {}), created_at=now,
                         steps={s.name: StepState(name=s.name) for s in plan.steps})
        return cls(plan, state, rng=rng)

    # -- public interface ----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state.status.finished

    def start(self, now: float, *, first: int | None = None) -> list[Action]:
        """Begin a new run. `first`: dispatch at most that many of the tasks ready now and put the rest off
        (`deferred`): `handle_deferred` dispatches them, in the same order, as if `start` had (a daemon sends the
        first ones to its workers while the engine works out the others)."""
        self.state.status = RunStatus.RUNNING
        self.state.started_at = self.state.started_at or now
        out: list[Action] = [Persist(), Emit(topic="run.started", data=self._ev())]
        self.dispatch_limit = first
        try:
            return out + self._advance(now)
        finally:
            self.dispatch_limit = None

    def recover(self, now: float) -> list[Action]:
        """Continue after a crash: in-flight attempts run again (attempt + 1), pending retries keep their time."""
        out: list[Action] = []
        for task in list(self.state.tasks.values()):
            if task.status is TaskStatus.RUNNING:
                task.interrupted += 1
                self.index.task_to(task, TaskStatus.QUEUED)
            elif task.status is TaskStatus.WAITING_RETRY and task.retry_at is not None:
                out.append(ScheduleRetry(task=task.id, at=task.retry_at))
        if self.state.status is not RunStatus.ROLLING_BACK:  # a rollback resumes where it stopped
            self.state.status = RunStatus.RUNNING
        self.state.started_at = self.state.started_at or now
        return [Persist(), *out, *self._advance(now)]

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event; stale or unknown events change nothing and return []."""
        if self.state.status in FINISHED_RUN:  # `self.finished`, without two property calls
            return []
        if isinstance(event, TimerFired):
            return self._timer_fired(now)
        if isinstance(event, Cancelled):
            if self.state.status is RunStatus.ROLLING_BACK:
                return []  # a rollback runs to its end
            return self._cancel_run(event.reason, now, RunStatus.CANCELLED)
        task = self.index.running.get(event.task)
        if task is None or task.attempt != event.attempt:
            return []
        if task.phase is Phase.COMPENSATE:
            return rollback.on_event(self, task, event, now)
        spec = self.specs[task.step]
        if isinstance(event, (StepSucceeded, StepFailed)) and (event.usage is not None or event.transcript is not None):
            self.state.steps[task.step].charge(task, event.usage, event.transcript, isinstance(event, StepSucceeded))
            self.index.changed_steps.add(task.step)
        if isinstance(event, StepSucceeded):
            refused = dynamic.take(self.specs, self.state, task, event.added)
            if refused is not None:
                return self._task_failed(task, ErrorInfo(type=dynamic.ERROR_TYPE, message=refused), now)
            return self._task_succeeded(task, event.output, now)
        if isinstance(event, StepFailed):
            return self._task_failed(task, event.error, now)
        if isinstance(event, StepTimedOut):
            limit = event.timeout if event.timeout is not None else spec.timeout
            msg = f"step {task.step!r} timed out after {limit:g}s (attempt {task.attempt})" if limit else f"step {task.step!r} timed out"
            return self._task_failed(task, ErrorInfo(type="StepTimeoutError", message=msg, retryable=True), now)
        if isinstance(event, WorkerLost):
            msg = f"worker running step {task.step!r} attempt {task.attempt} was lost: {event.reason}"
            return self._task_failed(task, ErrorInfo(type="WorkerLostError", message=msg, retryable=True), now)
        if isinstance(event, StepInterrupted):
            return self._task_interrupted(task, event.reason, now)
        return []

    def handle_deferred(self, now: float) -> list[Action]:
        return self._advance(now)  # the scheduling together.handle_all put off: dispatch what is ready now

    def hold(self) -> None:
        """Dispatch nothing from now on (the daemon is stopping): ready tasks stay QUEUED and due retries
        WAITING_RETRY, so the checkpoint shows them as not started; events are still handled."""
        self.held = True

    def lend_slot(self, task: str, attempt: int, lent: bool, now: float) -> list[Action]:
        """Running attempt `attempt` of `task` waits (`lent`), or no longer waits, for a dependency inside its body
        (`ctx.dependency`): while it waits its slot does not count against `max_concurrent_steps`, so what it waits
        for can start; returns the dispatches that makes. Not persisted; a stale attempt changes nothing."""
        running = self.index.running.get(task)
        if self.finished or running is None or running.attempt != attempt:
            return []
        if not lent:
            self.index.lent.discard(task)
            return []
        self.index.lent.add(task)
        return self._dispatch_ready(now)

    def next_timer(self) -> float | None:
        """The earliest pending retry time, if any."""
        return self.index.next_retry()

    def running_tasks(self) -> list[TaskState]:
        return list(self.index.running.values())

    def take_changes(self) -> tuple[set[str], set[str]]:
        """Names of steps and ids of tasks changed since the last call (a task id absent from state was removed)."""
        return self.index.take_changes()

    def reset(self, steps: list[str], now: float) -> list[Action]:
        """Run `steps` again (resume / retry): they and their dependents go back to PENDING (core/rerun.py)."""
        return rerun.reset(self, steps) + self._advance(now)

    # -- transitions -----------------------------------------------------------------

    def _task_succeeded(self, task: TaskState, output: Any, now: float) -> list[Action]:
        task.output, task.finished_at, task.error = output, now, None
        self.index.task_to(task, TaskStatus.SUCCEEDED)
        step = self.state.steps[task.step]
        spec = self.specs[task.step]
        if task.phase is Phase.CONDITION:
            self.index.drop_tasks(task.step, Phase.CONDITION)
            self.index.changed_steps.add(task.step)
            self.index.candidates.add(task.step)
            passed, reason, judged = condition_verdict(spec, output)  # a judged one is recorded, announced, acted on
            out: list[Action] = [] if judged is None else [Persist(), Emit(topic="step.condition", data=self._ev(step=task.step, **judged))]
            if passed:
                step.condition_passed = True
            else:
                out += self._skip(task.step, reason, now)
            return out + self._advance(now)
        if task.phase is Phase.RUN and task.item_index is not None:
            if self.index.items_left.get(task.step, 0) > 0:  # a count, not a look at every item
                return [PERSIST, *self._advance(now)]
            if spec.has_merge:
                self.index.add_task(task.step, Phase.MERGE, None)
                return [Persist()] + self._advance(now)
            output = self.index.item_outputs(task.step)
        return self._complete(task.step, output, now) + self._advance(now)

    def _complete(self, name: str, output: Any, now: float) -> list[Action]:
        step = self.state.steps[name]
        step.output, step.error = output, None
        added = dynamic.apply(self, name)
        self.index.completions += 1
        step.completed_seq = self.index.completions
        self.index.set_step(name, StepStatus.COMPLETED, now)
        self.index.drop_tasks(name)
        # the step's result and when it completed ride with the event (the design documents' step_completed); the
        # event's data written out, as `event_data` makes it, without its keyword dictionaries (once per step)
        state = self.state
        data = {"run_id": state.run_id, "pipeline": state.pipeline, "step": name, "attempts": step.attempts,
                "result": to_builtins(output), "timestamp": now}
        if added:
            return [PERSIST, Emit(topic="step.completed", data=data), *dynamic.announce(self, name, added)]
        return [PERSIST, Emit(topic="step.completed", data=data)]

    def _task_failed(self, task: TaskState, error: ErrorInfo, now: float) -> list[Action]:
        spec = self.specs[task.step]
        step = self.state.steps[task.step]
        task.error, task.finished_at = error, now
        failures = task.attempt - step.attempts_before - task.interrupted
        if error.retryable and failures <= spec.retry.max_retries:
            task.retry_at = now + max(backoff_delay(spec.retry, failures, self.rng), error.retry_after or 0.0)
            self.index.task_to(task, TaskStatus.WAITING_RETRY)
            if task.phase is not Phase.CONDITION:  # a condition retry leaves its step PENDING: it has not started
                self.index.set_step(task.step, StepStatus.RETRYING, now)
            ev = self._ev(step=task.step, attempt=task.attempt, error=str(error), retry_at=task.retry_at, charged=True)
            return [Persist(), Emit(topic="step.retrying", data=ev), ScheduleRetry(task=task.id, at=task.retry_at)] + self._advance(now)
        self.index.task_to(task, TaskStatus.FAILED)
        out: list[Action] = []
        for sibling in list(self.index.tasks_of[task.step].values()):
            if sibling.status in _LIVE_TASK:
                if sibling.status is TaskStatus.RUNNING:
                    out.append(CancelTask(task=sibling.id, attempt=sibling.attempt))
                self.index.task_to(sibling, TaskStatus.CANCELLED)
        step.error = error
        self.index.set_step(task.step, StepStatus.FAILED, now)
        out += [Persist(), Emit(topic="step.failed", data=self._ev(step=task.step, attempt=task.attempt, error=str(error)))]
        if self.plan.fail_fast and spec.required:
            return out + self._cancel_run(f"fail_fast: step {task.step!r} failed: {error}", now, RunStatus.FAILED)
        return out + self._advance(now)

    def _task_interrupted(self, task: TaskState, reason: str, now: float) -> list[Action]:
        """Queue the task again at once with `interrupted += 1`: the lost attempt uses none of its retries."""
        task.interrupted += 1
        task.error = ErrorInfo(type="WorkerLostError", retryable=True,
                               message=f"worker running step {task.step!r} attempt {task.attempt} was lost: {reason}")
        self.index.task_to(task, TaskStatus.QUEUED)
        ev = self._ev(step=task.step, attempt=task.attempt, error=str(task.error), retry_at=now, charged=False)
        return [Persist(), Emit(topic="step.retrying", data=ev)] + self._advance(now)

    def _skip(self, name: str, reason: str, now: float) -> list[Action]:
        step = self.state.steps[name]
        step.skip_reason = reason
        self.index.set_step(name, StepStatus.SKIPPED, now)
        return [Persist(), Emit(topic="step.skipped", data=self._ev(step=name, reason=reason))]

    def _fail_step(self, name: str, message: str, now: float) -> list[Action]:
        step = self.state.steps[name]
        step.error = ErrorInfo(type="DependencyError", message=message)
        self.index.set_step(name, StepStatus.FAILED, now)
        out: list[Action] = [Persist(), Emit(topic="step.failed", data=self._ev(step=name, attempt=0, error=message))]
        if self.plan.fail_fast and self.specs[name].required:
            out += self._cancel_run(f"fail_fast: step {name!r} failed: {message}", now, RunStatus.FAILED)
        return out

    def _cancel_run(self, reason: str, now: float, status: RunStatus) -> list[Action]:
        out: list[Action] = []
        for task in [*self.index.running.values(), *self.index.queued.values(), *self.index.waiting.values()]:
            if task.status is TaskStatus.RUNNING:
                out.append(CancelTask(task=task.id, attempt=task.attempt))
            self.index.task_to(task, TaskStatus.CANCELLED)
        for name, step in self.state.steps.items():
            if not step.status.terminal:
                step.skip_reason = reason
                self.index.set_step(name, StepStatus.CANCELLED, now)
        return out + self._finish(status, now, reason)

    def _finish(self, status: RunStatus, now: float, error: str | None = None) -> list[Action]:
        if status in (RunStatus.FAILED, RunStatus.CANCELLED):
            rolling = rollback.begin(self, status, error, now)
            if rolling is not None:
                return rolling
        return self.finish(status, now, error)

    def finish(self, status: RunStatus, now: float, error: str | None = None) -> list[Action]:
        """End the run with `status` (no rollback: core/rollback.py calls this when its compensations are done)."""
        self.state.status = status
        self.state.finished_at = now
        self.state.error = error
        data = self._ev(status=status.value, error=error)
        return [Persist(), Emit(topic="run.finished", data=data), Finish(status=status)]

    # -- scheduling ------------------------------------------------------------------------

    def _timer_fired(self, now: float) -> list[Action]:
        """Start due retries; a timer that fired early (clocks differ) is re-armed, so no retry is ever lost."""
        out = self._advance(now)
        if not self.finished and not any(isinstance(a, Dispatch) for a in out):
            due = self.next_timer()
            if due is not None and due > now:
                out.append(ScheduleRetry(task="", at=due))
        return out

    def event_data(self, **data: Any) -> dict[str, Any]:
        """An event's data: the run's id and pipeline, then `data`."""
        return {"run_id": self.state.run_id, "pipeline": self.state.pipeline, **data}

    _ev = event_data
