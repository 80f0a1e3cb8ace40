"""Compensation: undoing completed steps (docs/semantics.md, "Compensation").

When a run is about to end FAILED or CANCELLED and some of its COMPLETED steps declare a
compensation (`compensate=`), the run goes ROLLING_BACK instead (`begin`); `tagent rollback` does
the same for a finished run (`on_demand`). Guarantees:

- only COMPLETED steps are compensated, each in reverse order of completion (`completed_seq`),
  one at a time, each as a task of its own (phase COMPENSATE) with the step's `compensate_timeout`
  and `compensate_retries` (backoff as the step's `retry`);
- a compensation whose success is recorded never runs again: a crash during the rollback resumes it
  with the compensation that was running (at least once, like any attempt) and those after it;
- a compensation that fails for good is recorded (`StepState.compensation_error`), the others
  still run, and the run ends ROLLBACK_FAILED with the reason; otherwise it ends ROLLED_BACK.
  The run's `error` keeps why it failed; `rolled_back_from` what its status was.
- cancelling a run that is rolling back changes nothing: the rollback runs to its end.
"""

from __future__ import annotations

from .events import (
    Action,
    Dispatch,
    Emit,
    Event,
    Persist,
    ScheduleRetry,
    StepFailed,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    WorkerLost,
)
from .machine_view import MachineView
from .rules import backoff_delay, task_id
from .state import Compensation, ErrorInfo, Phase, RunStatus, StepStatus, TaskState, TaskStatus


def compensable(machine: MachineView) -> list[str]:
    """Completed steps with a compensation still to run, latest completion first."""
    found = [(step.completed_seq, name) for name, step in machine.state.steps.items()
             if step.status is StepStatus.COMPLETED and machine.specs[name].has_compensation
             and step.compensation in (None, Compensation.PENDING)]
    return [name for _, name in sorted(found, reverse=True)]


def begin(machine: MachineView, status: RunStatus, error: str | None, now: float) -> list[Action] | None:
    """Start rolling back a run that would end with `status`; None when no step has anything to undo."""
    todo = compensable(machine)
    if not todo:
        return None
    state = machine.state
    state.rolled_back_from = status
    state.status = RunStatus.ROLLING_BACK
    state.error, state.finished_at = error, None
    for name in todo:
        state.steps[name].compensation = Compensation.PENDING
        machine.index.changed_steps.add(name)
    data = machine.event_data(status=status.value, steps=todo, error=error)
    return [Persist(), Emit(topic="run.rolling_back", data=data), *advance(machine, now)]


def on_demand(machine: MachineView, now: float) -> list[Action] | None:
    """`tagent rollback`: compensate a finished run's completed steps (after ROLLBACK_FAILED: those whose
    compensation failed, again); None when there is nothing to compensate."""
    state = machine.state
    for name, step in state.steps.items():
        if step.compensation is Compensation.FAILED:
            step.compensation, step.compensation_error = None, None
            machine.index.changed_steps.add(name)
    origin = state.rolled_back_from or state.status
    return begin(machine, origin, state.error, now)


def _live(machine: MachineView) -> TaskState | None:
    for tasks in (machine.index.running, machine.index.queued, machine.index.waiting):
        for task in tasks.values():
            if task.phase is Phase.COMPENSATE:
                return task
    return None


def advance(machine: MachineView, now: float) -> list[Action]:
    """Run the next compensation, or end the run once none is left."""
    task = _live(machine)
    if task is None:
        todo = compensable(machine)
        if not todo:
            return _finish(machine, now)
        machine.index.add_task(todo[0], Phase.COMPENSATE, None)
        task = machine.state.tasks[task_id(todo[0], Phase.COMPENSATE)]
        task.attempt = 0  # a compensation counts its own attempts
    if machine.held or task.status is TaskStatus.RUNNING:
        return []
    if task.status is TaskStatus.WAITING_RETRY and (task.retry_at is None or task.retry_at > now):
        return []
    return [_dispatch(machine, task, now)]


def _dispatch(machine: MachineView, task: TaskState, now: float) -> Dispatch:
    step = machine.state.steps[task.step]
    spec = machine.specs[task.step]
    task.attempt += 1
    task.retry_at, task.started_at = None, now
    machine.index.task_to(task, TaskStatus.RUNNING)
    return Dispatch(task=task.id, step=task.step, phase=Phase.COMPENSATE, attempt=task.attempt, inputs={},
                    item=step.output, timeout=spec.compensate_timeout, spec=step.spec)


def on_event(machine: MachineView, task: TaskState, event: Event, now: float) -> list[Action]:
    """The outcome of a compensation attempt (a current one: the machine checked)."""
    step = machine.state.steps[task.step]
    spec = machine.specs[task.step]
    if isinstance(event, (StepSucceeded, StepFailed)) and event.usage is not None:
        step.usage = step.usage.add(event.usage)  # an agent compensation's tokens count to its step
    if isinstance(event, StepSucceeded):
        step.compensation, step.compensation_error = Compensation.SUCCEEDED, None
        return _done(machine, task, "step.compensated", now, attempt=task.attempt)
    if isinstance(event, StepInterrupted):
        task.interrupted += 1
        machine.index.task_to(task, TaskStatus.QUEUED)
        return [Persist(), *advance(machine, now)]
    if isinstance(event, StepFailed):
        error = event.error
    elif isinstance(event, StepTimedOut):
        limit = event.timeout if event.timeout is not None else spec.compensate_timeout
        error = ErrorInfo(type="StepTimeoutError", retryable=True,
                          message=f"compensation of step {task.step!r} timed out after {limit or 0:g}s (attempt {task.attempt})")
    elif isinstance(event, WorkerLost):
        error = ErrorInfo(type="WorkerLostError", retryable=True,
                          message=f"worker running the compensation of step {task.step!r} was lost: {event.reason}")
    else:
        return []
    task.error, task.finished_at = error, now
    failures = task.attempt - task.interrupted
    if error.retryable and failures <= spec.compensate_retries:
        task.retry_at = now + backoff_delay(spec.retry, failures, machine.rng)
        machine.index.task_to(task, TaskStatus.WAITING_RETRY)
        data = machine.event_data(step=task.step, attempt=task.attempt, error=str(error), retry_at=task.retry_at)
        return [Persist(), Emit(topic="step.compensation_retrying", data=data), ScheduleRetry(task=task.id, at=task.retry_at)]
    step.compensation, step.compensation_error = Compensation.FAILED, error
    return _done(machine, task, "step.compensation_failed", now, attempt=task.attempt, error=str(error))


def _done(machine: MachineView, task: TaskState, topic: str, now: float, **data: object) -> list[Action]:
    machine.index.changed_steps.add(task.step)
    machine.index.drop_tasks(task.step, Phase.COMPENSATE)
    return [Persist(), Emit(topic=topic, data=machine.event_data(step=task.step, **data)), *advance(machine, now)]


def _finish(machine: MachineView, now: float) -> list[Action]:
    state = machine.state
    failed = [(name, step.compensation_error) for name, step in state.steps.items()
              if step.compensation is Compensation.FAILED]
    if not failed:
        return machine.finish(RunStatus.ROLLED_BACK, now, state.error)
    reason = "rollback failed: " + "; ".join(f"compensation of {name} ({error})" for name, error in failed)
    return machine.finish(RunStatus.ROLLBACK_FAILED, now, f"{state.error}; {reason}" if state.error else reason)
