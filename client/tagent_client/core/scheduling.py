"""`Scheduling`: what a running run does next — which PENDING steps are decided, and which tasks are dispatched.

The part of `RunMachine` (engine.py) that looks at what is ready after a change: each candidate step is
decided (wait, skip, fail, or its tasks created) and queued tasks are dispatched in definition order, then item
order, as far as `max_concurrent_steps` allows; when no step is open the run ends, and when nothing can ever
start it fails with a diagnostic. `RunMachine` inherits it: the rules of a transition (a result, a failure, a
cancel) live there, the rules of what follows it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..define.conditions import MISSING, Condition, lookup_path
from ..define.plan import ExecutionMode, Plan, StepSpec
from . import rollback
from .events import Action, Dispatch, Emit
from .rules import READY, completed_output, upstream
from .run_index import RunIndex
from .state import DEADLOCK, Phase, RunState, RunStatus, StepState, StepStatus, TaskState, TaskStatus


class Scheduling:
    """Deciding PENDING steps and dispatching ready tasks; mixed into `RunMachine`, which sets the attributes below
    and provides the transitions scheduling ends in (`_skip`, `_fail_step`, `_complete`, `_finish`, `_cancel_run`)
    and `_ev`."""

    state: RunState
    index: RunIndex
    plan: Plan
    specs: dict[str, StepSpec]
    held: bool
    deferring: bool
    deferred: bool
    dispatch_limit: int | None
    _order: dict[str, int]
    _conditions: dict[str, Condition]

    def _advance(self, now: float) -> list[Action]:
        if self.deferring and self.state.status is RunStatus.RUNNING:
            self.deferred = True
            return []
        if self.state.status is RunStatus.ROLLING_BACK:
            return rollback.advance(self, now)
        if self.state.status is not RunStatus.RUNNING:
            return []
        out: list[Action] = []
        steps, tasks_of, specs = self.state.steps, self.index.tasks_of, self.specs
        while self.index.candidates and self.state.status is RunStatus.RUNNING:
            batch = sorted(self.index.candidates, key=self._order.__getitem__)
            self.index.candidates.clear()
            for name in batch:
                if self.state.status is not RunStatus.RUNNING:
                    break
                if steps[name].status is StepStatus.PENDING and not tasks_of[name]:
                    produced = self._resolve(specs[name], now)
                    if produced:
                        out += produced
        if self.state.status is not RunStatus.RUNNING:  # finished, or rolling back
            return out
        out += self._dispatch_ready(now)
        if self.index.open_steps == 0:
            failed = [n for n, s in self.state.steps.items() if s.status is StepStatus.FAILED and self.specs[n].required]
            status = RunStatus.FAILED if failed else RunStatus.COMPLETED
            error = "step(s) failed: " + "; ".join(f"{n} ({self.state.steps[n].error})" for n in failed) if failed else None
            return out + self._finish(status, now, error)
        if not (self.index.queued or self.index.running or self.index.waiting):
            waiting = sorted(n for n, s in self.state.steps.items() if not s.status.terminal)
            return out + self._cancel_run(f"{DEADLOCK}: steps {', '.join(waiting)} can never start (engine diagnostic; please report)", now, RunStatus.FAILED)
        return out

    def _resolve(self, spec: StepSpec, now: float) -> list[Action] | None:
        """Decide a PENDING step with no tasks: wait (None), skip, fail, or create its tasks."""
        gated = self.index.gates_of(spec.name)
        passed = self.index.passed.get(spec.name, 0)
        if passed < len(gated) and not self.state.steps[gated[passed]].status.terminal:
            return None  # the next dependency to look at has not ended: `upstream` would say WAITING
        step = self.state.steps[spec.name]
        # a condition and an `over` path read the inputs; a plain step gets them only when it is dispatched
        reads_inputs = (spec.name in self._conditions and not step.condition_passed) or (
            spec.mode is ExecutionMode.PARALLEL_MERGE and not isinstance(spec.over, list))
        if gated or reads_inputs:
            verdict, self.index.passed[spec.name] = upstream(spec, self.state.steps, gated, passed, reads_inputs)
        else:  # it waits for nothing and reads nothing (a root step, or one with only SOFT dependencies)
            verdict = READY
        if verdict.waiting:
            return None
        if verdict.skip is not None:
            return self._skip(spec.name, verdict.skip, now)
        if verdict.fail is not None:
            return self._fail_step(spec.name, verdict.fail, now)
        inputs = verdict.inputs or {}
        if spec.name in self._conditions and not step.condition_passed:
            cond = self._conditions[spec.name]
            if not cond.evaluate(self._scope(inputs)):
                return self._skip(spec.name, f"condition false: {cond.describe()}", now)
            step.condition_passed = True
            self.index.changed_steps.add(spec.name)
        if (spec.condition_is_callable or spec.condition_is_judged) and not step.condition_passed:
            self.index.add_task(spec.name, Phase.CONDITION, None)
            return []
        if spec.mode is ExecutionMode.PARALLEL_MERGE:
            items = spec.over if isinstance(spec.over, list) else lookup_path(self._scope(inputs), spec.over)
            if not isinstance(items, (list, tuple)):
                return self._fail_step(spec.name, f"over={spec.over!r} is {'missing' if items is MISSING else type(items).__name__}, not a list", now)
            step.items = list(items)
            self.index.changed_steps.add(spec.name)
            if not items:
                if spec.has_merge:
                    self.index.add_task(spec.name, Phase.MERGE, None)
                    return []
                return self._complete(spec.name, [], now)
            for index in range(len(items)):
                self.index.add_task(spec.name, Phase.RUN, index)
            return []
        self.index.add_task(spec.name, Phase.RUN, None)
        return []

    def _scope(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {**inputs, "shared": self.plan.shared_context, "params": self.state.params}

    def _dispatch_ready(self, now: float) -> list[Action]:
        room = self.plan.max_concurrent_steps - len(self.index.running) + len(self.index.lent)
        if room <= 0 or self.held:
            return []
        limit = self.dispatch_limit
        if limit is not None and limit < room:  # start(first=): the rest wait for handle_deferred
            room = limit
            self.deferred = True
        due = self.index.take_due(now)
        passed_over: list[TaskState] = []
        out: list[Action] = []
        while room > 0 and (task := self.index.next_ready(due)) is not None:  # definition order, then item order
            spec = self.specs[task.step]
            step = self.state.steps[task.step]
            if (spec.mode is ExecutionMode.SERIAL and task.phase is Phase.RUN and step.status is StepStatus.PENDING
                    and self.index.serial_active):
                passed_over.append(task)
                continue
            out += self._dispatch(task, spec, step, now)
            room -= 1
        self.index.put_back(passed_over + due)
        return out

    def _dispatch(self, task: TaskState, spec: StepSpec, step: StepState, now: float) -> list[Action]:
        announce = task.phase is Phase.RUN and (step.status is StepStatus.PENDING or task.item_index is None)
        task.attempt += 1
        task.retry_at, task.started_at = None, now
        self.index.task_to(task, TaskStatus.RUNNING)
        if task.phase is not Phase.CONDITION:
            fan_out = task.item_index is not None or task.phase is Phase.MERGE
            step.attempts = max(step.attempts, task.attempt) if fan_out else step.attempts + 1
            self.index.set_step(task.step, StepStatus.RUNNING, now)
        steps = self.state.steps
        inputs = {dep: completed_output(steps[dep]) for dep in spec.deps}
        item: Any = None
        if task.item_index is not None and step.items is not None:
            item = step.items[task.item_index]
        elif task.phase is Phase.MERGE:
            item = self.index.item_outputs(task.step)
        action = Dispatch(task=task.id, step=task.step, phase=task.phase, attempt=task.attempt, inputs=inputs,
                          item=item, item_index=task.item_index, timeout=spec.timeout, isolated=spec.isolated,
                          resources=spec.resources or None, spec=step.spec)
        if announce:  # the event's data as `_ev` makes it, without its keyword dictionaries (once per step)
            data = {"run_id": self.state.run_id, "pipeline": self.state.pipeline, "step": task.step, "attempt": task.attempt}
            return [Emit(topic="step.started", data=data), action]
        return [action]
