"""Run state as plain data: what the engine owns and the store checkpoints.

Every type here is a msgspec Struct, so a whole `RunState` encodes to msgpack
and back without loss (step outputs must themselves be msgpack-able, or
pydantic models, which encode as their JSON-mode dump).
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any

import msgspec

from ..define.plan import StepSpec

STATE_FORMAT = 1

_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_run_id(now: float | None = None) -> str:
    """A short id that sorts by creation time: 9 chars of milliseconds + 4 random chars."""
    ms = int((time.time() if now is None else now) * 1000)
    stamp = "".join(_ID_ALPHABET[(ms >> (5 * i)) & 31] for i in reversed(range(9)))
    rand = int.from_bytes(os.urandom(3), "big")
    return stamp + "".join(_ID_ALPHABET[(rand >> (5 * i)) & 31] for i in range(4))


#: How the run's error starts when no step could make progress (reported as `PipelineDeadlockError`).
DEADLOCK = "no progress possible"


class RunStatus(str, enum.Enum):
    """Lifecycle of a run. COMPLETED, FAILED, CANCELLED, ROLLED_BACK and ROLLBACK_FAILED are final.

    ROLLING_BACK: the run failed or was cancelled (or `tagent rollback` asked) and the compensations of
    its completed steps are running (core/rollback.py); it ends ROLLED_BACK, or ROLLBACK_FAILED if one failed.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_RUN


#: The final run statuses (`RunStatus.finished`), for the engine's busiest check.
FINISHED_RUN = _FINISHED_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED,
                                          RunStatus.ROLLED_BACK, RunStatus.ROLLBACK_FAILED})


class StepStatus(str, enum.Enum):
    """Lifecycle of a step. COMPLETED, FAILED, SKIPPED and CANCELLED are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_STEP


#: The terminal step statuses (`StepStatus.terminal`), for the engine's busiest checks.
TERMINAL_STEP = _TERMINAL_STEP = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED,
                                            StepStatus.CANCELLED})

#: The one place that says which step transitions are legal.
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}),
    StepStatus.RUNNING: frozenset({StepStatus.RETRYING, StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED}),
    StepStatus.RETRYING: frozenset({StepStatus.RUNNING, StepStatus.FAILED, StepStatus.CANCELLED}),
    StepStatus.COMPLETED: frozenset({StepStatus.PENDING}),
    StepStatus.FAILED: frozenset({StepStatus.PENDING}),
    StepStatus.SKIPPED: frozenset({StepStatus.PENDING}),
    StepStatus.CANCELLED: frozenset({StepStatus.PENDING}),
}


class Phase(str, enum.Enum):
    """What a task computes for its step: the step itself, its callable condition, its merge, or its
    compensation (run during a rollback, after the step completed)."""

    RUN = "run"
    CONDITION = "condition"
    MERGE = "merge"
    COMPENSATE = "compensate"


class TaskStatus(str, enum.Enum):
    """Lifecycle of one unit of work (a step attempt, one PARALLEL_MERGE item, a merge)."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Usage(msgspec.Struct, kw_only=True):
    """LLM usage of a step attempt (or a sum of them). Function steps have all zeros."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    tool_calls: int = 0
    cost: float = 0.0

    def add(self, other: Usage | None) -> Usage:
        if other is None:
            return self
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            requests=self.requests + other.requests,
            tool_calls=self.tool_calls + other.tool_calls,
            cost=self.cost + other.cost,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ErrorInfo(msgspec.Struct, kw_only=True):
    """Why an attempt failed: exception type name, one-line message, whether retrying may help, and the least
    wait before a retry the error asked for (`retry_after` seconds: an open circuit breaker's time to half-open)."""

    type: str
    message: str
    retryable: bool = False
    traceback: str | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class TaskState(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """One unit of work of a step. `attempt` is the number of its latest attempt (counting on from its step's
    `attempts_before`); `interrupted` of its attempts were cut by a crash. Like StepState, not tracked by the
    garbage collector (see there)."""

    id: str
    step: str
    phase: Phase = Phase.RUN
    item_index: int | None = None
    status: TaskStatus = TaskStatus.QUEUED
    attempt: int = 0
    interrupted: int = 0
    retry_at: float | None = None
    output: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: Steps this task's latest successful attempt added (`ctx.add_step`), applied when its step completes.
    added: list[StepSpec] = []


class Compensation(str, enum.Enum):
    """Where a completed step's compensation stands in a rollback."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


MAX_TRANSCRIPTS = 5


class StepState(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """A step's progress within one run.

    Not tracked by the garbage collector (`gc=False`): it never takes part in a reference cycle (its output is
    the step's data, which cannot refer to the run's state), and the daemon holds one per step of every run it
    keeps, which full collections would otherwise walk again and again.

    `attempts` counts the step's attempts over the whole run, across resume and
    retry; `attempts_before` is how many it had when it was last reset (its tasks
    number their attempts on from there, so `ctx.attempt` and `attempts` agree).
    `transcript` holds the last MAX_TRANSCRIPTS agent attempts, oldest first, each
    `{attempt, item, status, model, messages}` (messages: see tagent_client.run.transcript).
    A step added at run time holds its `spec` (whose `added_by` names the step that added it) and
    `added_seq` (its place among the added steps). `completed_seq` orders completions (1, 2, ...; 0: not
    completed), so a rollback runs compensations in reverse; `compensation` and `compensation_error`
    record that step's compensation in a rollback.
    """

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    attempts_before: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    skip_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    items: list[Any] | None = None
    condition_passed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    transcript: list[dict[str, Any]] = []
    spec: StepSpec | None = None
    added_seq: int = 0
    completed_seq: int = 0
    compensation: Compensation | None = None
    compensation_error: ErrorInfo | None = None

    def charge(self, task: TaskState, usage: Usage | None, transcript: dict[str, Any] | None, succeeded: bool) -> None:
        """Count a finished attempt's token usage and keep its transcript (the last MAX_TRANSCRIPTS)."""
        self.usage = self.usage.add(usage)
        if transcript is not None:
            entry = {**transcript, "attempt": task.attempt, "item": task.item_index,
                     "status": "succeeded" if succeeded else "failed", "phase": task.phase.value}
            self.transcript = [*self.transcript, entry][-MAX_TRANSCRIPTS:]


class RunState(msgspec.Struct, kw_only=True):
    """Everything the engine knows about one run; rebuilding a machine from it resumes the run."""

    format: int = STATE_FORMAT
    run_id: str
    pipeline: str
    status: RunStatus = RunStatus.PENDING
    params: dict[str, Any] = {}
    steps: dict[str, StepState] = {}
    tasks: dict[str, TaskState] = {}
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    #: The status the run had when its rollback began (failed, cancelled, completed); None: never rolled back.
    rolled_back_from: RunStatus | None = None
