"""The run-level ports: what the daemon's parts may do to runs, and what they hear of them.

Next to tagentd/plumbing/ports.py's loop-level ports; these live here because they name `Run`.
`RunDriver` (tagentd/runs/driver.py) is the one implementation of `RunOps`; the broker is its
`RunObserver`. The broker, the folder watcher, the control handlers and the worker-message table
are given a `RunOps` — never the daemon.
"""

from __future__ import annotations

from typing import Any, Protocol

from tagent_client.core.events import Action
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import EventRecord
from tagentd.runs.run import Run
from tagentd.runs.table import RunTable


class RunOps(Protocol):
    """Starting, stopping and feeding runs. Only the daemon's loop calls these."""

    #: Every run the daemon knows: `live(id)` for the ones in memory, `get(id)` reads one back.
    runs: RunTable
    #: False from the moment a stop is requested: nothing new starts (runs, resumes, registrations).
    accepting: bool

    def start_run(self, run: Run) -> None:
        """Add a new run and start its machine."""

    def cancel_run(self, run: Run, reason: str) -> None:
        """Cancel an unfinished run."""

    def reset_run(self, run: Run, steps: list[str]) -> None:
        """Run `steps` of an ended run again (resume, retry); InvalidRequest while stopping."""

    def rollback_run(self, run: Run) -> list[str]:
        """Run the compensations of an ended run (`tagent rollback`); the steps compensated, [] if none;
        InvalidRequest while stopping."""

    def feed(self, run: Run, event: Any) -> None:
        """Hand a task's outcome (or another engine event) to the run's machine."""

    def changed(self, run: Run) -> None:
        """The run changed outside its machine (a log line, its memory): the next commit writes it."""

    def lend_slot(self, run: Run, task: str, attempt: int, lent: bool) -> None:
        """A running attempt waits (`lent`), or no longer waits, for a dependency (`RunMachine.lend_slot`)."""

    async def load_plan(self, path: str, source: str, target: str | None = None) -> Plan:
        """Import and validate a pipeline file in a worker; its Plan (PipelineLoadError / ValidationError)."""

    async def submit_source(self, path: str, source: str, target: str | None = None,
                            params: dict[str, Any] | None = None, model: str | None = None, who: str = "daemon", *,
                            plan: Plan | None = None, idempotency_key: str | None = None) -> Run:
        """Start a run of the pipeline file `path` whose text is `source`."""

    def expire(self, *, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False,
               at_most: int | None = None) -> list[str]:
        """Remove expired finished runs (retention); their ids."""


class RunObserver(Protocol):
    """Hears what happens to runs, in the loop turn it happens (the broker: leases, triggers, the bus)."""

    def on_event(self, run: Run, event: Any) -> None:
        """An event was fed to the run's machine (after it was handled)."""

    def on_actions(self, run: Run, actions: list[Action]) -> None:
        """The run's machine asked for `actions` (after they were carried out)."""

    def on_lifecycle(self, events: list[tuple[Run, EventRecord]]) -> None:
        """Lifecycle events, numbered and in their runs' history, about to be flushed by this commit."""


class Register(Protocol):
    """Register a pipeline that declares triggers (the broker's `register`); ConfigError, InvalidRequest."""

    def __call__(self, *, path: str, source: str, target: str | None, model: str | None, plan: Plan,
                 who: str) -> object: ...
