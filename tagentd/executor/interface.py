"""The `Executor` interface: what the daemon asks of the place where steps run.

The daemon's engine decides *what* runs: each `Dispatch` action is one attempt of one task of a run. An
executor decides *where and when*: it holds attempts until it has a free slot, runs each one in a worker
that has the pipeline's code, and reports what became of it. The local process pool
(tagentd.executor.local) is the first implementation; the Ray executor (tagentd.executor.ray) is the second. The daemon,
submission, stopping and the status views use an executor only through this interface, and an executor
knows nothing of the daemon's `Run`: a `StepAttempt` carries all it needs, as plain data.

An executor is given two callbacks when it is made, both `(run_id, event)` with an engine event for the
run's machine: `on_result` for what a worker reported, and `on_lost` for an attempt that was lost.

Guarantees every implementation gives:

- **At most once.** An attempt given to `dispatch` is sent to at most one worker, once. A send that no
  worker received (the worker was already gone) puts it back at the head of its line; an executor never
  runs an attempt again on its own.
- **Every attempt sent is reported.** Either with the result its worker sent (`on_result`: StepSucceeded,
  StepFailed or StepTimedOut), or as lost (`on_lost`): its worker died, stopped answering, or the step ran
  past its timeout plus the grace period (the executor then kills the worker). The lost verdict is an engine
  event that says who pays: StepInterrupted (a bystander of another step's crash: it runs again using none
  of its retries), WorkerLost (it ran alone, so it caused the crash: charged to its retries), StepTimedOut
  (it overran its timeout), or a StepFailed that is not retryable (it killed its worker each time, even
  running alone). A worker may report a result more than once (it re-sends until acknowledged), and a
  cancelled attempt may still report; the engine ignores results of attempts it no longer waits for.
- **The engine decides retries, not the executor.** After a lost attempt the engine dispatches a new
  attempt (a new number) or fails the step, by the step's retry policy and the verdict.
- **`cancel` and `forget_run` win.** An attempt cancelled before it was sent is never sent; one already
  running is told to stop.
- **`hold` stops dispatch.** Nothing is sent after it; what waits stays waiting (the daemon checkpoints
  it as not started, and runs it after the next start). `stop` stops every worker, after waiting at most
  the given time for the attempts in flight.
- **Pipeline code runs only in workers.** `load` imports and validates a pipeline file in a worker, never
  in the daemon's process; workers get code by content (`PipelineCode`), never by path alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from tagent_client.core.events import Dispatch, Event
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import ClusterInfo, WorkerInfo
from tagentd.worker import wire

AttemptKey = tuple[str, str, int]  # (run_id, task id, attempt number): one attempt, everywhere
Report = Callable[[str, Event], None]  # (run_id, the event to feed the run's machine)


class PipelineCode(msgspec.Struct, frozen=True, kw_only=True):
    """A pipeline file as workers get it: its text and content hash, not only its path (no shared files)."""

    path: str  # where it was read; for messages, and the folder its sibling imports come from
    source: str  # the file's text, as it was when the run was submitted
    source_hash: str  # sha256 of `source`: workers keep imported code by it
    target: str | None = None  # which pipeline of the file (None: the only one)


class StepAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one task of one run: everything an executor needs to run it."""

    run_id: str
    pipeline: str  # the pipeline's name, for what `tagentd status` shows
    code: PipelineCode
    dispatch: Dispatch  # the engine's action: task, step, attempt, inputs, item, timeout, isolated
    params: dict[str, Any]  # the run's parameters
    model: str | None = None  # the run's default model for agent steps
    trigger: Any = None  # the event that started the run, if a trigger did
    traceparent: str | None = None  # W3C traceparent of the run's span when traces are on: the attempt's parent

    @property
    def key(self) -> AttemptKey:
        return (self.run_id, self.dispatch.task, self.dispatch.attempt)


class RunningAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt in flight on a worker, as the stop report and the broker's registry show it."""

    run_id: str
    pipeline: str
    step: str
    task: str
    attempt: int
    worker: int  # the id of the worker running it (as in `workers()`)
    elapsed_s: float  # since it was sent


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """How much more an executor can take now."""

    slots: int  # attempts its ready workers can run at once
    free: int  # of those, slots not in use: how many more attempts it can send now
    in_flight: int  # attempts sent and not yet reported
    queued: int  # attempts waiting for a slot

    @property
    def saturated(self) -> bool:
        """True when a new attempt would have to wait."""
        return self.free <= 0


@runtime_checkable
class Executor(Protocol):
    """Where steps run. Every method is called on the daemon's event loop."""

    # -- lifecycle

    def start(self) -> None:
        """Begin making workers ready (returns at once; workers come up while the daemon recovers)."""

    async def supervise(self) -> None:
        """Watch the workers forever: find lost attempts, replace workers, send what waits. The daemon runs it."""

    def hold(self) -> None:
        """Dispatch nothing from now on; attempts waiting stay waiting (a stop began)."""

    async def stop(self, wait_for_steps: float) -> None:
        """Hold, wait up to `wait_for_steps` seconds for the attempts in flight, then stop every worker."""

    def kill_now(self) -> None:
        """Kill every worker at once, without waiting (the daemon is about to exit without a last commit)."""

    # -- work

    def dispatch(self, attempt: StepAttempt) -> None:
        """Take an attempt: it is sent when a slot is free (`pump`), at most once."""

    def pump(self) -> int:
        """Send waiting attempts to free slots now; how many were sent. Called after each batch of dispatches and
        of worker messages: what one worker is sent in one call (its tasks, the acknowledgements of its results)
        leaves as one message."""

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        """Drop that attempt if it waits; tell its worker to stop it if it runs. Nothing is reported for it."""

    def forget_run(self, run_id: str) -> None:
        """The run ended or was removed: drop its waiting attempts and whatever the executor kept about it."""

    async def load(self, code: PipelineCode) -> Plan:
        """Import and validate a pipeline file in a worker (never in the daemon) and return its Plan.

        Raises PipelineLoadError (one line: `path:line: reason`, or why no worker could load it in time)
        or PipelineValidationError.
        """

    def on_worker_message(self, identity: bytes, msg: wire.FromWorker) -> bool:
        """A message that came in on the workers' socket. True when it is dealt with: it was the executor's
        own (a worker's hello, heartbeat, load answer, result, model-request permit) or its sender is not one
        of its workers (it is refused). False: it is a step's request for the daemon (log lines, memory,
        progress, the broker), which the daemon answers."""

    # -- views

    def capacity(self) -> Capacity:
        """Slots, free slots, attempts in flight and waiting."""

    def running(self) -> list[RunningAttempt]:
        """The attempts in flight now."""

    def workers(self) -> list[WorkerInfo]:
        """Each worker: id, pid, state, steps running, capacity, steps completed, when it started."""

    def stats(self) -> dict[str, int]:
        """Counters since the daemon started (workers spawned and lost, steps dispatched, verdicts), by name."""

    def cluster(self) -> ClusterInfo | None:
        """The cluster its workers run on (nodes, resources, workers and steps per node); None: this machine."""
