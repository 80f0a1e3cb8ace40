"""The store interface every run-state change goes through, and its in-memory implementation.

The daemon calls `created` for a new run, `changed` after every engine `Persist`,
and `await flush()` once per loop tick before it tells anyone about those
changes (group commit). A durable store makes `flush` write and fsync; the
in-memory store (`--no-durable`) makes it free and keeps nothing across restarts.
A durable store can also `release` a finished run (the daemon then keeps only
its `RunEntry`) and `read` it back whole when someone asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tagent_client.errors import NotFound
from tagentd.runs.run import Run, RunEntry


@dataclass
class Recovered:
    """What `load` found: every stored run's index entry (oldest first) and the unfinished runs, whole."""

    entries: list[RunEntry] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


class RunStore(Protocol):
    """Where runs are kept. Guarantee of a durable store: what `flush` returned for survives kill -9."""

    durable: bool
    #: Files found corrupt at load (each: what, where, where it was moved); shown by `tagentd status`.
    problems: list[str]

    def created(self, run: Run) -> None:
        """A new run: its source snapshot and plan must be kept along with its state."""

    def changed(self, run: Run) -> None:
        """The run's state changed; it must be written by the next `flush`."""

    async def flush(self) -> None:
        """Make every change reported so far durable."""

    @property
    def pending(self) -> bool:
        """Whether `flush` has anything to do: changes reported since the last one, or a flush still in flight."""

    async def compact(self) -> None:
        """At a graceful stop: leave the state so the next start reads as little as it can."""

    def load(self) -> Recovered:
        """Every stored run's entry and the unfinished runs, rebuilt (used once, at start)."""

    def read(self, run_id: str) -> Run:
        """A stored run read back whole (a finished run the daemon released); NotFound if it cannot be."""

    def release(self, run_id: str) -> RunEntry | None:
        """Stop holding a finished run whose every change is written; its entry, or None if it must stay in memory."""

    def remove(self, run_id: str) -> None:
        """Forget a finished run (retention)."""

    def close(self) -> None:
        """Flush what can be flushed synchronously and release files."""


class MemoryStore:
    """Keeps nothing: a daemon restart forgets every run. For tests and `durable = false`."""

    durable = False
    pending = False

    def __init__(self) -> None:
        self.problems: list[str] = []

    def created(self, run: Run) -> None:
        return None

    def changed(self, run: Run) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def compact(self) -> None:
        return None

    def load(self) -> Recovered:
        return Recovered()

    def read(self, run_id: str) -> Run:
        raise NotFound(f"no run {run_id!r}; list runs with 'tagent runs'", run_id=run_id)

    def release(self, run_id: str) -> RunEntry | None:
        return None  # nothing could read it back: every run stays in memory (retention bounds them)

    def remove(self, run_id: str) -> None:
        return None

    def close(self) -> None:
        return None
