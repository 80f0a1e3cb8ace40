"""Who pays when a worker dies: the verdict for each step it was running, and which steps must run alone.

A worker runs up to `worker_concurrency` steps at once. When it dies (a segfault, `os._exit`, kill -9,
a sync step that would not stop), usually one of them caused it and the others are bystanders — and
from outside, the pool cannot tell which, unless a step was running alone. So (docs/semantics.md,
"When a worker dies"):

- a step that ran past its timeout and made the pool (or the worker itself, exit 70) end the worker is
  charged with the timeout, like any timeout; the steps next to it are interrupted;
- a step running alone in a worker started for it (`isolated=True`, or quarantined) caused the death:
  `WorkerLost`, charged to its retries — or, if it was quarantined, a failure that is not retried,
  "this step killed its worker (exit 3)";
- any other step is interrupted (`StepInterrupted`): it runs again at once, using none of its retries,
  as after a daemon crash. Every step in flight on a worker that died for an unknown reason is
  counted; a step counted `QUARANTINE_AFTER` times is quarantined: its next attempt runs alone.

A step's count is cleared when one of its attempts reports a result (success or an ordinary
failure): that attempt did not kill its worker. So a quarantined step that survives running alone
goes back to the shared workers.

Guarantees: every step in flight gets exactly one verdict; a bystander is never charged.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable

from tagent_client.core.events import Dispatch, Event, StepFailed, StepInterrupted, StepTimedOut, WorkerLost
from tagent_client.core.state import ErrorInfo

QUARANTINE_AFTER = 2  # worker deaths a step may be in flight for before it runs alone
STUCK_WINDOW = 30.0   # a worker ending this long after a step's timeout (default) ended because of that step

#: the pool's counter (`tagentd status --json` stats) for each kind of verdict on a step whose worker died
VERDICT_STATS = {"StepInterrupted": "steps_interrupted", "WorkerLost": "steps_lost_alone",
                 "StepFailed": "steps_killed_their_worker"}

TaskKey = tuple[str, str]  # (run_id, task id)
Verdict = tuple[str, Event]  # (run_id, the event the run's machine is fed)


def how_it_ended(code: int) -> str:
    """A process's exit status in a few characters: 'exit 3', 'SIGSEGV', 'SIGKILL'."""
    if code >= 0:
        return f"exit {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Cause(enum.Enum):
    """Why a worker ended, as far as the pool knows."""

    UNKNOWN = "unknown"  # it crashed, was killed from outside, or stopped heartbeating
    TIMEOUT = "timeout"  # a step ran past its timeout: the pool killed the worker, or it exited 70
    POOL = "pool"        # the pool stopped it, or killed it for a reason of its own (a slow import)


class DeathLedger:
    """Counts, per task, the worker deaths it was in flight for, and turns a death into one verdict per step."""

    def __init__(self, quarantine_after: int = QUARANTINE_AFTER, stuck_window: float = STUCK_WINDOW) -> None:
        self.quarantine_after = quarantine_after
        self.stuck_window = stuck_window
        self.deaths: dict[TaskKey, int] = {}
        self._timeouts: dict[int, dict[TaskKey, float]] = {}  # per worker id: steps that timed out there, and when

    def quarantined(self, run_id: str, task: str) -> bool:
        return self.deaths.get((run_id, task), 0) >= self.quarantine_after

    def runs_alone(self, run_id: str, task: Dispatch) -> bool:
        """Whether this attempt must run alone in a worker started for it: isolated=True, or quarantined."""
        return task.isolated or self.quarantined(run_id, task.task)

    def timed_out(self, worker: int, key: TaskKey, now: float) -> None:
        """A step on `worker` ran past its timeout: if the worker ends soon, that step is why."""
        recent = self._timeouts.setdefault(worker, {})
        recent[key] = now
        for old in [k for k, at in recent.items() if at < now - self.stuck_window]:
            del recent[old]

    def overran(self, worker: int, run_id: str, task: Dispatch, *, alone: bool, now: float) -> Event:
        """The verdict for a step the pool kills its worker for, because it ran past its timeout plus grace."""
        self.timed_out(worker, (run_id, task.task), now)
        if alone and self.quarantined(run_id, task.task):
            return self._killed_its_worker(task, "timeout", self.deaths[(run_id, task.task)])
        return StepTimedOut(task=task.task, attempt=task.attempt, timeout=task.timeout)

    def died(self, worker: int, jobs: Iterable[tuple[str, Dispatch]], *, cause: Cause, how: str, where: str,
             alone: bool, now: float) -> list[Verdict]:
        """The verdicts for the steps still in flight on worker number `worker`, which ended.

        `how` is how it ended ('exit 3'); `where` names it ('worker 4 (pid 123)'); `alone` says it was started
        for one step. With a known cause the steps in flight are bystanders; the steps whose timeout caused
        it (charged already, by their timeout) are counted.
        """
        jobs = list(jobs)
        recent = self._timeouts.pop(worker, {})
        if cause is not Cause.UNKNOWN:
            if cause is Cause.TIMEOUT:
                for key, at in recent.items():
                    if at >= now - self.stuck_window:
                        self.deaths[key] = self.deaths.get(key, 0) + 1
            reason = f"{where} ended ({how}) because of another step; not counted against this step's retries"
            return [(run_id, StepInterrupted(task=t.task, attempt=t.attempt, reason=reason)) for run_id, t in jobs]
        verdicts: list[Verdict] = []
        for run_id, task in jobs:
            key = (run_id, task.task)
            before = self.deaths.get(key, 0)
            self.deaths[key] = before + 1
            if alone and before >= self.quarantine_after:
                verdicts.append((run_id, self._killed_its_worker(task, how, before)))
            elif alone:
                verdicts.append((run_id, WorkerLost(task=task.task, attempt=task.attempt,
                                                    reason=f"{where}, running this step alone, ended: {how}")))
            else:
                then = "; it runs alone next" if before + 1 >= self.quarantine_after else ""
                reason = (f"{where} ended ({how}) with {len(jobs)} step(s) in flight; "
                          f"not counted against this step's retries{then}")
                verdicts.append((run_id, StepInterrupted(task=task.task, attempt=task.attempt, reason=reason)))
        return verdicts

    def forget(self, run_id: str, task: str | None = None) -> None:
        """Drop the counts of one task (an attempt reported a result) or of every task of a run (`task` None)."""
        if task is not None:
            self.deaths.pop((run_id, task), None)
            return
        for key in [k for k in self.deaths if k[0] == run_id]:
            del self.deaths[key]

    @staticmethod
    def _killed_its_worker(task: Dispatch, how: str, deaths: int) -> StepFailed:
        message = (f"this step killed its worker ({how}): it ran alone in a fresh worker after {deaths} worker(s) "
                   f"died with it in flight, so it is not retried; see docs/operations.md, 'A step that kills its worker'")
        return StepFailed(task=task.task, attempt=task.attempt,
                          error=ErrorInfo(type="WorkerLostError", message=message, retryable=False))
