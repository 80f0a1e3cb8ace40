"""Child runs in the daemon: a sub-pipeline task's attempt starts (or re-attaches to) a child run, and the
child's end becomes that attempt's outcome. The rules are `tagent_client.core.children`; this is the shell.

Guarantees:
- **Idempotent start.** The child's id comes from the parent run, the task and its charged attempt
  (`child_run_id`), so the attempt re-run after a kill -9 (the parent's task was RUNNING in its checkpoint)
  finds the child it started and waits for it, or takes its result at once if it has ended; nothing is
  started twice. The child (its `Created` record, with its `ChildLink`) and the parent's `child.started`
  audit entry are written by the same group commit: both runs know of the link, or neither.
- **No worker slot.** The attempt that computed the child's params has ended; the parent waits in the
  ledger, not in a worker.
- **No orphans.** When the parent's task is cancelled or the parent run ends, its children are cancelled
  (and theirs, recursively); a child's end is fed to its parent in the same turn, so in the same commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tagent_client.core.children import (
    ChildLedger,
    ChildLink,
    charged_attempt,
    child_outcome,
    child_run_id,
    may_orphan,
    orphans,
    refusal,
)
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Action, StepFailed, StepSucceeded
from tagent_client.core.state import Phase, TaskState, TaskStatus
from tagent_client.errors import NotFound
from tagentd.runs.run import CHILD_STARTED, Run, RunSource
from tagentd.runs.table import RunTable
from tagentd.settings.config import Settings


class ChildRuns:
    """The daemon's child runs: started from a sub-pipeline attempt's params, fed back to the parent when they end."""

    def __init__(self, *, settings: Settings, runs: RunTable, start: Callable[[Run], None],
                 feed: Callable[[Run, Any], None], cancel: Callable[[Run, str], None]) -> None:
        self.settings = settings
        self.runs = runs
        self.ledger = ChildLedger()
        self._start = start
        self._feed = feed
        self._cancel = cancel

    def waiting_task(self, parent: Run, event: Any) -> TaskState | None:
        """The sub-pipeline task whose current attempt `event` (a success: the child's params) is about, if any."""
        if not isinstance(event, StepSucceeded) or not parent.has_sub_pipelines:
            return None
        task = parent.state.tasks.get(event.task)
        if task is None or task.status is not TaskStatus.RUNNING or task.attempt != event.attempt:
            return None
        if task.phase is not Phase.RUN or parent.machine.specs[task.step].child is None:
            return None
        return task

    def start(self, parent: Run, task: TaskState, params: Any) -> None:
        """Start the child of `task`'s current attempt with `params`, or re-attach to it if it exists."""
        child_id = child_run_id(parent.id, task.id, charged_attempt(task))
        try:
            child = self.runs.get(child_id)
        except NotFound:  # its snapshot is lost (reported in checkpoint_problems): start it afresh
            child = None
        if child is None:
            spec = parent.machine.specs[task.step]
            assert spec.child is not None
            error = refusal(task.step, spec.child, params, items=len(parent.state.steps[task.step].items or ()),
                            depth=(parent.source.parent.depth if parent.source.parent else 0) + 1,
                            max_depth=self.settings.max_child_depth, max_fan_out=self.settings.max_child_fan_out)
            if error is not None:
                self._feed(parent, StepFailed(task=task.id, attempt=task.attempt, error=error))
                return
            child = self._new_child(parent, task, child_id, params)
            parent.audit("daemon", CHILD_STARTED, step=task.step, task=task.id, child=child_id)
            self.ledger.started(parent.id, task.id, task.attempt, child_id)
            self._start(child)
            return
        self.ledger.started(parent.id, task.id, task.attempt, child_id)
        if child.finished:
            self.ended(child)

    def ended(self, child: Run) -> None:
        """`child` has finished: feed its outcome to the parent attempt waiting for it (if one still is)."""
        waiter = self.ledger.ended(child.id)
        if waiter is None:
            return
        parent = self.runs.live(waiter[0])
        if parent is not None:
            self._feed(parent, child_outcome(waiter[1], waiter[2], child.result()))

    def after(self, run: Run, actions: list[Action]) -> None:
        """Cancel the children `run`'s actions leave waiting for nobody (a cancelled task, the run's end)."""
        if not run.has_sub_pipelines or not may_orphan(actions):
            return
        live = {c.id: c.source.parent.task for c in self.runs.active()
                if c.source.parent is not None and c.source.parent.parent_id == run.id and not c.finished}
        for child_id in orphans(run.state, live):
            self.ledger.ended(child_id)  # nobody is told of its end
            child = self.runs.live(child_id)
            if child is not None and not child.finished:
                self._cancel(child, f"parent run {run.id} no longer waits for it ({run.state.status.value})")

    def _new_child(self, parent: Run, task: TaskState, child_id: str, params: dict[str, Any]) -> Run:
        spec = parent.machine.specs[task.step]
        assert spec.child is not None
        src = parent.source
        link = ChildLink(parent_id=parent.id, step=task.step, task=task.id, item_index=task.item_index,
                         depth=(src.parent.depth if src.parent else 0) + 1)
        # the child runs from the parent's file: its target names the path from the parent's pipeline to it
        target = f"{src.target or parent.plan.name}/{task.step}"
        machine = RunMachine.new(spec.child, child_id, params=params, now=time.time())
        child = Run(RunSource(path=src.path, source=src.source, source_hash=src.source_hash, target=target,
                              model=src.model, trigger=src.trigger, parent=link), spec.child, machine)
        child.audit("daemon", "child.of", parent=parent.id, step=task.step, task=task.id)
        return child
