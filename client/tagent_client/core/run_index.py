"""`RunIndex`: the run machine's derived indexes over a `RunState`, kept in step with every change.

The persisted `RunState` is the truth; these indexes (the tasks of each step; the
queued, running and waiting tasks, and the order they are dispatched in; busy SERIAL
steps; how many steps are still open; how many of each step's dependencies have passed
and how many of its items are not done yet; the steps worth looking at again) let
`RunMachine` handle one event in time proportional to what it changes, not to the size
of the run (nor to the number of a step's dependencies or items). Every change to a task's
or a step's status goes through here (`task_to`, `add_task`, `drop_tasks`, `set_step`),
so the indexes never drift, and what changed is noted for the store (`take_changes`).
After the machine rewrites `state` wholesale (recovery, reset) it calls `rebuild()`.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from ..define.plan import ExecutionMode, StepSpec
from .rules import gates, task_id
from .state import STEP_TRANSITIONS, TERMINAL_STEP, Phase, RunState, StepStatus, TaskState, TaskStatus


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
        self.order = {name: i for i, name in enumerate(self.specs)}  # definition order: the dispatch order
        #: Heaps of (step order, item index, tie, task id): queued tasks, and (retry time, ...) of waiting ones.
        #: Entries of tasks that have left since are dropped when they reach the top (`_top`).
        self.ready: list[tuple[int, int, int, str]] = []
        self.serial_ready: list[tuple[int, int, int, str]] = []  # queued tasks that would start a SERIAL step
        self.retries: list[tuple[float, int, int, int, str]] = []
        self._pushes = 0
        #: Per step: its non-SOFT dependencies in order, and how many of them are known to have passed.
        self.gates: dict[str, list[str]] = {}
        self.passed: dict[str, int] = {}
        #: Per PARALLEL_MERGE step with items: how many of its item tasks have not succeeded.
        self.items_left: dict[str, int] = {}
        for task in self.state.tasks.values():
            self.tasks_of[task.step][task.id] = task
            self.file(task)
            self._count_item(task, 1)
        self.serial_active = {
            n for n, s in self.state.steps.items()
            if self.specs[n].mode is ExecutionMode.SERIAL and s.status in (StepStatus.RUNNING, StepStatus.RETRYING)
        }
        self.open_steps = sum(1 for s in self.state.steps.values() if not s.status.terminal)
        #: The latest `completed_seq` handed out (a rollback compensates in reverse of it).
        self.completions = max((s.completed_seq for s in self.state.steps.values()), default=0)
        #: PENDING steps worth a look: not those whose first dependency to wait for is still open (the scheduler would
        #: only find that they wait); they become candidates when a dependency of theirs ends (`set_step`).
        self.candidates = {n for n, s in self.state.steps.items() if s.status is StepStatus.PENDING and self._may_start(n)}

    def gates_of(self, name: str) -> list[str]:
        """The dependencies step `name` waits for, in the order they are looked at (`rules.gates`), made once."""
        gated = self.gates.get(name)
        if gated is None:
            gated = self.gates[name] = gates(self.specs[name])
        return gated

    def _may_start(self, name: str) -> bool:
        """Whether PENDING step `name` may be ready: it waits for nothing, or the first it waits for has ended."""
        spec = self.specs.get(name)
        if spec is None or not spec.deps:
            return True
        gated = self.gates_of(name)
        first = self.state.steps.get(gated[0]) if gated else None
        return first is None or first.status.terminal

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
        self._enter(task)

    def _enter(self, task: TaskState) -> None:
        """Add `task`, which is in none of them, to the index of its status."""
        status = task.status
        if status is TaskStatus.RUNNING:  # the commonest, then QUEUED: `_key` and `_push` written out for them
            self.running[task.id] = task
        elif status is TaskStatus.QUEUED:
            queued = self.queued
            queued[task.id] = task
            heap = self.serial_ready if self._waits_for_serial(task) else self.ready
            self._pushes += 1
            heapq.heappush(heap, (self.order[task.step], task.item_index or 0, self._pushes, task.id))
            if len(heap) > 2 * len(queued) + 64:  # mostly entries of tasks that left: keep the heaps in proportion
                self._reheap()
        elif status is TaskStatus.WAITING_RETRY:
            self.waiting[task.id] = task
            if task.retry_at is not None:
                self._push(self.retries, (task.retry_at, *self._key(task), task.id), len(self.waiting))

    def task_to(self, task: TaskState, status: TaskStatus) -> None:
        """Move `task` to `status`: out of the index of the status it had (only that one: a task is in the index of
        its status and no other), into that of the new one."""
        if task.item_index is not None:
            self._count_item(task, -1)
        self._leave(task)
        task.status = status
        if task.item_index is not None:
            self._count_item(task, 1)
        self._enter(task)
        self.changed_tasks.add(task.id)

    def _leave(self, task: TaskState) -> None:
        """Take `task` out of the index of its status (a task is in that one and no other)."""
        was = task.status
        if was is TaskStatus.RUNNING:
            self.running.pop(task.id, None)
            self.lent.discard(task.id)  # a lent slot ends with the attempt that lent it (only running ones lend)
        elif was is TaskStatus.QUEUED:
            self.queued.pop(task.id, None)  # its heap entry goes stale and is dropped when it reaches the top
        elif was is TaskStatus.WAITING_RETRY:
            self.waiting.pop(task.id, None)

    def _count_item(self, task: TaskState, sign: int) -> None:
        """Count `task` into (`sign` 1) or out of (-1) `items_left`, if it is an item task that has not succeeded."""
        if task.item_index is not None and task.phase is Phase.RUN and task.status is not TaskStatus.SUCCEEDED:
            self.items_left[task.step] = self.items_left.get(task.step, 0) + sign

    # -- dispatch order ----------------------------------------------------------------

    def _key(self, task: TaskState) -> tuple[int, int, int]:
        self._pushes += 1
        return self.order[task.step], task.item_index or 0, self._pushes

    def _waits_for_serial(self, task: TaskState) -> bool:
        """Whether `task` would start a SERIAL step: it waits while another SERIAL step is busy."""
        return (task.phase is Phase.RUN and self.specs[task.step].mode is ExecutionMode.SERIAL
                and self.state.steps[task.step].status is StepStatus.PENDING)

    def _push(self, heap: list[Any], entry: tuple[Any, ...], live: int) -> None:
        heapq.heappush(heap, entry)
        if len(heap) > 2 * live + 64:  # mostly entries of tasks that left: keep the heaps in proportion
            self._reheap()

    def _reheap(self) -> None:
        self.ready, self.serial_ready, self.retries = [], [], []
        for task in self.queued.values():
            (self.serial_ready if self._waits_for_serial(task) else self.ready).append((*self._key(task), task.id))
        self.retries = [(t.retry_at, *self._key(t), t.id) for t in self.waiting.values() if t.retry_at is not None]
        for heap in (self.ready, self.serial_ready, self.retries):
            heapq.heapify(heap)

    def _top(self, heap: list[Any], live: Mapping[str, TaskState], retry: bool = False) -> TaskState | None:
        """The task at the top of `heap` that is still in `live` (as of its entry), dropping stale entries above it."""
        while heap:
            entry = heap[0]
            task = live.get(entry[-1])
            if task is not None and (not retry or task.retry_at == entry[0]):
                return task
            heapq.heappop(heap)
        return None

    def next_retry(self) -> float | None:
        """The earliest retry time of a waiting task, if any."""
        task = self._top(self.retries, self.waiting, retry=True)
        return None if task is None else task.retry_at

    def take_due(self, now: float) -> list[TaskState]:
        """The waiting tasks whose retry time has come, in dispatch order, taken off their heap: hand them to
        `next_ready`, then `put_back` what is left of the list."""
        due: list[TaskState] = []
        if not self.waiting:  # nothing waits for a retry (the usual case)
            return due
        while (task := self._top(self.retries, self.waiting, retry=True)) is not None and (task.retry_at or 0.0) <= now:
            due.append(task)
            heapq.heappop(self.retries)
        due.sort(key=lambda t: (self.order[t.step], t.item_index or 0))
        return due

    def next_ready(self, due: list[TaskState]) -> TaskState | None:
        """The next task to dispatch, in dispatch order (definition order, then item order): a queued one, one of
        `due` (taken from the list), or one that starts a SERIAL step if no SERIAL step is busy; taken off its heap.
        A task handed out and not dispatched must be `put_back`. Costs O(log n), whatever is queued."""
        best: TaskState | None = None
        heaps = [self.ready] if self.serial_active else [self.ready, self.serial_ready]
        source: list[Any] | None = None
        for heap in heaps:
            task = self._top(heap, self.queued)
            if task is not None and (best is None or heap[0] < source[0]):  # type: ignore[index]
                best, source = task, heap
        if due and (best is None or self._rank(due[0]) < self._rank(best)):
            return due.pop(0)
        if source is not None:
            heapq.heappop(source)
        return best

    def _rank(self, task: TaskState) -> tuple[int, int]:
        return self.order[task.step], task.item_index or 0

    def put_back(self, tasks: list[TaskState]) -> None:
        """Tasks `take_due` / `next_ready` handed out that were not dispatched: back on their heap."""
        for task in tasks:
            if task.status is TaskStatus.QUEUED or task.status is TaskStatus.WAITING_RETRY:
                self.file(task)

    def add_task(self, step: str, phase: Phase, item_index: int | None) -> None:
        tid = task_id(step, phase, item_index)
        before = self.state.steps[step].attempts_before  # a reset step's attempts count on (ctx.attempt == attempts)
        task = TaskState(id=tid, step=step, phase=phase, item_index=item_index, attempt=before)
        replaces = tid in self.state.tasks
        self.state.tasks[tid] = task
        self.tasks_of[step][tid] = task
        if replaces:  # an old task of that id may still be in an index
            self.file(task)
        else:
            self._enter(task)
        if item_index is not None:
            self._count_item(task, 1)
        self.changed_tasks.add(tid)

    def drop_tasks(self, step: str, phase: Phase | None = None) -> None:
        """Remove the step's tasks (only those of `phase`, if given) from `state` and every index."""
        tasks_of = self.tasks_of[step]
        for tid, task in list(tasks_of.items()):
            if phase is None or task.phase is phase:
                if task.item_index is not None:
                    self._count_item(task, -1)
                del self.state.tasks[tid]
                del tasks_of[tid]
                self._leave(task)
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
        was = step.status
        if status is was:
            return
        if status not in STEP_TRANSITIONS[was]:
            raise AssertionError(f"illegal step transition {was.value} -> {status.value} for {name!r}")
        step.status = status
        if self.specs[name].mode is ExecutionMode.SERIAL:
            if status in (StepStatus.RUNNING, StepStatus.RETRYING):
                self.serial_active.add(name)
            else:
                self.serial_active.discard(name)
        if status is StepStatus.RUNNING and step.started_at is None:
            step.started_at = now
        if status in TERMINAL_STEP:
            step.finished_at = now
            if was not in TERMINAL_STEP:
                self.open_steps -= 1
            self.candidates.update(self.dependents[name])
