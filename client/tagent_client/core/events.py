"""The engine's vocabulary: events in, actions out.

Events report what happened to a task (one unit of work of a step) or to the
run. Actions tell the shell (the in-process runner or the daemon) what to do.
Both are msgspec Structs so the daemon can journal and forward them unchanged.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..define.plan import StepSpec
from .state import ErrorInfo, Phase, RunStatus, Usage

# -- events -----------------------------------------------------------------------


class StepSucceeded(msgspec.Struct, tag=True, kw_only=True):
    """Attempt `attempt` of task `task` returned `output`; an agent attempt adds its `transcript` (see StepState).
    `added` holds the steps the attempt added with `ctx.add_step` (core/dynamic.py): they travel, and are
    made durable, with the result."""

    task: str
    attempt: int
    output: Any = None
    usage: Usage | None = None
    started_at: float | None = None
    transcript: dict[str, Any] | None = None
    added: list[StepSpec] = []


class StepFailed(msgspec.Struct, tag=True, kw_only=True):
    """Attempt `attempt` of task `task` raised; `error.retryable` says whether a retry may help."""

    task: str
    attempt: int
    error: ErrorInfo
    usage: Usage | None = None
    started_at: float | None = None
    transcript: dict[str, Any] | None = None


class StepTimedOut(msgspec.Struct, tag=True, kw_only=True):
    """Attempt `attempt` of task `task` ran past its step's timeout (always retryable)."""

    task: str
    attempt: int
    timeout: float | None = None


class WorkerLost(msgspec.Struct, tag=True, kw_only=True):
    """The process running attempt `attempt` of task `task` died (always retryable)."""

    task: str
    attempt: int
    reason: str = "worker process exited"


class StepInterrupted(msgspec.Struct, tag=True, kw_only=True):
    """Attempt `attempt` of task `task` was cut short through no fault of its own (its worker died for another
    step's reason); it runs again at once, and, as after a daemon crash, the lost attempt uses none of its retries."""

    task: str
    attempt: int
    reason: str = "its worker process ended"


class TimerFired(msgspec.Struct, tag=True, kw_only=True):
    """Time passed; retries that are due start."""


class Cancelled(msgspec.Struct, tag=True, kw_only=True):
    """Someone cancelled the run."""

    reason: str = "cancelled by request"


Event = StepSucceeded | StepFailed | StepTimedOut | WorkerLost | StepInterrupted | TimerFired | Cancelled

# -- actions --------------------------------------------------------------------------


class Dispatch(msgspec.Struct, tag=True, kw_only=True):
    """Run attempt `attempt` of task `task` now.

    `inputs` maps each dependency name to its output (None for a SOFT dependency
    that has not completed). For a PARALLEL_MERGE item, `item` is the item and
    `item_index` its position; for a MERGE task, `item` is the list of item outputs.
    `timeout`, `isolated` (run alone, in a worker of its own) and `resources` are the step's. For a step added at run
    time, `spec` is its StepSpec (the pipeline file does not define it). For a COMPENSATE task, `item` is
    the step's output.
    """

    task: str
    step: str
    phase: Phase
    attempt: int
    inputs: dict[str, Any]
    item: Any = None
    item_index: int | None = None
    timeout: float | None = None
    isolated: bool = False
    resources: dict[str, float] | None = None  # the step's placement on a cluster (None: anywhere)
    spec: StepSpec | None = None


class CancelTask(msgspec.Struct, tag=True, kw_only=True):
    """Stop attempt `attempt` of task `task` if it is still running; its result no longer matters."""

    task: str
    attempt: int


class ScheduleRetry(msgspec.Struct, tag=True, kw_only=True):
    """Deliver a TimerFired at or after wall-clock time `at` (seconds since the epoch)."""

    task: str
    at: float


class Persist(msgspec.Struct, tag=True, kw_only=True):
    """Make the run state durable before carrying out any Emit that follows."""


#: A Persist (it has no fields): what the engine's busiest transitions hand out, rather than a new one each time.
PERSIST = Persist()


class Emit(msgspec.Struct, tag=True, kw_only=True):
    """Publish a lifecycle event (`run.started`, `step.completed`, ...)."""

    topic: str
    data: dict[str, Any]


class Finish(msgspec.Struct, tag=True, kw_only=True):
    """The run ended with `status`; build the result from the machine."""

    status: RunStatus


Action = Dispatch | CancelTask | ScheduleRetry | Persist | Emit | Finish
