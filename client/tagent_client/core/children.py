"""Child runs of sub-pipeline steps (`pipeline=`): the rules every shell follows, pure, in one place.

A task of a sub-pipeline step is dispatched like any other: its attempt computes the child run's params
(in a worker, since `params=` may be user code). The shell then, instead of reporting that output, starts
the child run and reports the task's outcome only when the child has ended (`child_outcome`). The engine
sees one long attempt; no worker slot is held while the child runs.

Guarantees (the daemon's run driver and the in-process runner both rely on them):

- **One child per charged attempt.** `child_run_id` is derived from the parent run id, the task and the
  task's charged attempt number (`attempt - interrupted`). An attempt re-run after a crash or an
  interruption uses no retry, keeps that number and so names the same child: starting it again attaches
  to the child that exists. A retry (the child failed) is charged, so it starts a new child.
- **Every child ends.** When the parent's task is cancelled (its step failed, the run was cancelled or
  failed fast) or the parent run ends, the shell cancels the children `orphans` names, recursively.
  `orphans` works from the parent's durable state and each child's link, not from the `ChildLedger` (which
  only says which attempt waits for which child), so a child not yet re-attached after a crash is found too.
- **Failure names the child.** A failed child fails the attempt with a retryable `ChildRunFailed` naming
  the child run and its failed steps (the step's retry policy applies); a cancelled child fails it for good.
- **Limits.** `fan_out_problem` refuses a step with more children than the limit; the depth limit is
  checked on the plan before the run starts (define/subpipeline.depth_problem).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from ..define.binding import missing_params
from ..define.plan import Plan
from .events import Action, CancelTask, Emit, Event, Finish, StepFailed, StepSucceeded
from .result import PipelineResult, to_builtins
from .state import ErrorInfo, RunState, RunStatus, TaskState, TaskStatus

MAX_DEPTH = 5  # sub-pipelines nested deeper than this are refused (tagentd.toml: max_child_depth)
MAX_FAN_OUT = 1000  # children one step may start (tagentd.toml: max_child_fan_out)
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # the run ids' alphabet (state.new_run_id)


def charged_attempt(task: TaskState) -> int:
    """The task's attempt number, not counting re-runs that used no retry (crashes, interruptions)."""
    return task.attempt - task.interrupted


def child_run_id(parent_id: str, task: str, charged: int) -> str:
    """The id of the child run the `charged`-th attempt of `task` of run `parent_id` starts: always the same."""
    digest = int.from_bytes(hashlib.sha256(f"{parent_id}\0{task}\0{charged}".encode()).digest()[:9], "big")
    return "".join(_ALPHABET[(digest >> (5 * i)) & 31] for i in range(13))


class ChildLink(msgspec.Struct, frozen=True, kw_only=True):
    """Which task of which parent run a child run reports to (kept in the child's source, durably)."""

    parent_id: str
    step: str
    task: str
    item_index: int | None = None
    depth: int = 1  # 1: a child of a top-level run


def fan_out_problem(step: str, children: int, limit: int) -> str | None:
    """The one-line error for a step that would start more than `limit` children, else None."""
    if children <= limit:
        return None
    return (f"step {step!r} would start {children} child runs, more than the limit of {limit} per step: "
            f"split the list, or raise max_child_fan_out (tagentd.toml)")


def refusal(step: str, child: Plan, params: Any, *, items: int, depth: int, max_depth: int = MAX_DEPTH,
            max_fan_out: int = MAX_FAN_OUT) -> ErrorInfo | None:
    """Why the child of a task of `step` cannot start (too many children, nested too deep, params that are
    not a dict or leave the child's function parameters unfilled), as the attempt's error, or None.
    `items`: the step's item count (0 without `over=`); `depth`: how deep the child would be nested."""
    problem = fan_out_problem(step, items, max_fan_out)
    if problem is None and depth > max_depth:
        problem = (f"step {step!r}: a child run would be nested {depth} levels deep, more than the limit of "
                   f"{max_depth} (max_child_depth in tagentd.toml)")
    if problem is None and not isinstance(params, dict):
        problem = f"step {step!r}: the child run's params must be a dict, got {type(params).__name__}"
    if problem is None:
        unfilled = missing_params(child, params)
        if unfilled:
            problem = f"step {step!r}: child pipeline {child.name!r} cannot start: {'; '.join(unfilled)}"
    return ErrorInfo(type="ChildRunRefused", message=problem) if problem else None


def child_output(result: PipelineResult) -> Any:
    """What a completed child run gives its step: its `final_output`, or its whole `PipelineResult` (as data)
    when it has none."""
    if result.final_output is not None:
        return to_builtins(result.final_output)
    return to_builtins(result.to_dict())


def child_outcome(task: str, attempt: int, result: PipelineResult) -> Event:
    """The event that ends the parent's attempt once its child run has ended with `result`."""
    if result.status == RunStatus.COMPLETED.value:
        return StepSucceeded(task=task, attempt=attempt, output=child_output(result))
    failed = [f"{name} ({result.error_details.get(name, 'failed')})" for name in result.failed_steps]
    if result.status == RunStatus.CANCELLED.value:
        message = f"child run {result.run_id} of pipeline {result.pipeline_name!r} was cancelled: {result.error or 'cancelled'}"
        return StepFailed(task=task, attempt=attempt, error=ErrorInfo(type="ChildRunCancelled", message=message))
    detail = "; ".join(failed) if failed else (result.error or "no reason given")
    message = f"child run {result.run_id} of pipeline {result.pipeline_name!r} failed: {detail}"
    return StepFailed(task=task, attempt=attempt, error=ErrorInfo(type="ChildRunFailed", message=message, retryable=True))


class ChildLedger:
    """Which child run each running task of each parent run waits for. Pure bookkeeping, no I/O.

    `started(...)` / `waiter(child_id)` / `ended(child_id)` follow the children; the shell's memory, rebuilt
    after a crash as the parent's re-run attempts re-attach.
    """

    def __init__(self) -> None:
        self._by_child: dict[str, tuple[str, str, int]] = {}  # child id -> (parent id, task, attempt)

    def started(self, parent_id: str, task: str, attempt: int, child_id: str) -> None:
        """The parent's `task` (attempt `attempt`) now waits for `child_id`."""
        self._by_child[child_id] = (parent_id, task, attempt)

    def waiter(self, child_id: str) -> tuple[str, str, int] | None:
        """(parent id, task, attempt) waiting for `child_id`, if any."""
        return self._by_child.get(child_id)

    def ended(self, child_id: str) -> tuple[str, str, int] | None:
        """`child_id` has ended (or is being cancelled): forget it; returns who waited for it."""
        return self._by_child.pop(child_id, None)


#: What may leave a child without anyone to report to: a cancelled task, a failed step, the run's end, an
#: attempt that failed and waits to retry (the retry starts a new child), or a cancelled or failed run that
#: rolls back first (its queued and waiting tasks are cancelled with no CancelTask; Finish comes at the end).
_ORPHANING = (CancelTask, Finish)
_ORPHANING_TOPICS = ("step.failed", "step.retrying", "run.rolling_back")


def may_orphan(actions: list[Action]) -> bool:
    """Whether `actions` of a parent run may have left one of its children waited for by nobody."""
    return any(isinstance(a, _ORPHANING) or (isinstance(a, Emit) and a.topic in _ORPHANING_TOPICS) for a in actions)


def awaited_child(parent_id: str, task: TaskState) -> str | None:
    """The child run `task` waits for (running) or will re-attach to or start (queued, waiting to retry); None
    when it has ended. A re-run after a crash keeps the charged attempt, so the same child; a retry does not."""
    if task.status is TaskStatus.RUNNING:
        return child_run_id(parent_id, task.id, charged_attempt(task))
    if task.status in (TaskStatus.QUEUED, TaskStatus.WAITING_RETRY):
        return child_run_id(parent_id, task.id, task.attempt + 1 - task.interrupted)
    return None


def orphans(parent: RunState, live_children: Mapping[str, str]) -> list[str]:
    """Of the parent's unfinished children (child id -> its task), those nobody waits for: the parent has
    finished, or the child's task has ended (succeeded, failed, cancelled) or moved on to a retry, which
    starts a child of its own.

    Works from the durable state only, so it also finds a child the crashed shell had not re-attached yet."""
    if parent.status.finished:
        return list(live_children)
    return [child for child, task in live_children.items()
            if (state := parent.tasks.get(task)) is None or awaited_child(parent.run_id, state) != child]
