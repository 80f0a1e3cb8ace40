"""`RunIndex`: the run machine's derived indexes over a `RunState`, kept in step with every change.

The persisted `RunState` is the truth; these indexes (the tasks of each step; the
queued, running and waiting tasks; busy SERIAL steps; how many steps are still open;
the steps worth looking at again) let `RunMachine` handle one event in time
proportional to what it changes, not to the size of the run. Every change to a task's
or a step's status goes through here (`task_to`, `add_task`, `drop_tasks`, `set_step`),
so the indexes never drift, and what changed is noted for the store (`take_changes`).
After the machine rewrites `state` wholesale (recovery, reset) it calls `rebuild()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..define.plan import ExecutionMode, StepSpec
from .rules import task_id
from .state import STEP_TRANSITIONS, Phase, RunState, StepStatus, TaskState, TaskStatus


class RunIndex:
    """Indexes of one run's `state` for `RunMachine`; `specs` and `dependents` are the plan's, by step name."""

    def __init__(self, state: RunState, specs: Mapping[str, StepSpec], dependents: Mapping[str, list[str]]) -> None:
        """`specs` and `dependents` may be replaced later (steps added at run time); call `rebuild()` then."""
        self.state = state
        self.specs = specs
        self.dependents = dependents
        self.changed_steps: set[str] = set()
        self.changed_tasks: set[str] = set()
        self.rebuild()

    def rebuild(self) -> None:
        """Rebuild every derived index from `state` (at construction, recovery and reset)."""
        self.tasks_of: dict[str, dict[str, TaskState]] = {name: {} for name in self.state.steps}
        self.queued: dict[str, TaskState] = {}
        self.running: dict[str, TaskState] = {}
        self.waiting: dict[str, TaskState] = {}
        self.lent: set[str] = set()  # running tasks whose slot is lent while they wait (RunMachine.lend_slot)
        for task in self.state.tasks.values():
            self.tasks_of[task.step][task.id] = task
            self.file(task)
        self.serial_active = {
            n for n, s in self.state.steps.items()
            if self.specs[n].mode is ExecutionMode.SERIAL and s.status in (StepStatus.RUNNING, StepStatus.RETRYING)
        }
        self.open_steps = sum(1 for s in self.state.steps.values() if not s.status.terminal)
        #: The latest `completed_seq` handed out (a rollback compensates in reverse of it).
        self.completions = max((s.completed_seq for s in self.state.steps.values()), default=0)
        self.candidates = {n for n, s in self.state.steps.items() if s.status is StepStatus.PENDING}

    def take_changes(self) -> tuple[set[str], set[str]]:
        """Names of steps and ids of tasks changed since the last call (a task id absent from state was removed)."""
        steps, tasks = self.changed_steps, self.changed_tasks
        self.changed_steps, self.changed_tasks = set(), set()
        return steps, tasks

    def downstream(self, steps: list[str]) -> set[str]:
        """`steps` and every step that depends on one of them, directly or not."""
        todo = set(steps)
        frontier = list(steps)
        while frontier:
            for dependent in self.dependents.get(frontier.pop(), []):
                if dependent not in todo:
                    todo.add(dependent)
                    frontier.append(dependent)
        return todo

    # -- tasks -----------------------------------------------------------------------

    def file(self, task: TaskState) -> None:
        """Put `task` in the index of its status (queued, running, waiting), and in no other."""
        for index in (self.queued, self.running, self.waiting):
            index.pop(task.id, None)
        self.lent.discard(task.id)  # a lent slot ends with the attempt that lent it
        if task.status is TaskStatus.QUEUED:
            self.queued[task.id] = task
        elif task.status is TaskStatus.RUNNING:
            self.running[task.id] = task
        elif task.status is TaskStatus.WAITING_RETRY:
            self.waiting[task.id] = task

    def task_to(self, task: TaskState, status: TaskStatus) -> None:
        task.status = status
        self.file(task)
        self.changed_tasks.add(task.id)

    def add_task(self, step: str, phase: Phase, item_index: int | None) -> None:
        tid = task_id(step, phase, item_index)
        before = self.state.steps[step].attempts_before  # a reset step's attempts count on (ctx.attempt == attempts)
        task = TaskState(id=tid, step=step, phase=phase, item_index=item_index, attempt=before)
        self.state.tasks[tid] = task
        self.tasks_of[step][tid] = task
        self.file(task)
        self.changed_tasks.add(tid)

    def drop_tasks(self, step: str, phase: Phase | None = None) -> None:
        """Remove the step's tasks (only those of `phase`, if given) from `state` and every index."""
        for tid, task in list(self.tasks_of[step].items()):
            if phase is None or task.phase is phase:
                del self.state.tasks[tid]
                del self.tasks_of[step][tid]
                for index in (self.queued, self.running, self.waiting):
                    index.pop(tid, None)
                self.lent.discard(tid)
                self.changed_tasks.add(tid)

    def item_outputs(self, step: str) -> list[Any]:
        """The outputs of a PARALLEL_MERGE step's item tasks, in item order."""
        items = [t for t in self.tasks_of[step].values() if t.phase is Phase.RUN]
        return [t.output for t in sorted(items, key=lambda t: t.item_index or 0)]

    # -- steps -----------------------------------------------------------------------

    def set_step(self, name: str, status: StepStatus, now: float) -> None:
        """Move a step to `status` (AssertionError on a transition STEP_TRANSITIONS forbids), with its times."""
        step = self.state.steps[name]
        self.changed_steps.add(name)
        if status is step.status:
            return
        if status not in STEP_TRANSITIONS[step.status]:
            raise AssertionError(f"illegal step transition {step.status.value} -> {status.value} for {name!r}")
        was_open = not step.status.terminal
        step.status = status
        if self.specs[name].mode is ExecutionMode.SERIAL:
            if status in (StepStatus.RUNNING, StepStatus.RETRYING):
                self.serial_active.add(name)
            else:
                self.serial_active.discard(name)
        if status is StepStatus.RUNNING and step.started_at is None:
            step.started_at = now
        if status.terminal:
            step.finished_at = now
            if was_open:
                self.open_steps -= 1
            self.candidates.update(self.dependents[name])
