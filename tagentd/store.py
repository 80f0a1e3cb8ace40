"""The store interface every run-state change goes through, and its in-memory implementation.

The daemon calls `created` for a new run, `changed` after every engine `Persist`,
and `await flush()` once per loop tick before it tells anyone about those
changes (group commit). A durable store makes `flush` write and fsync; the
in-memory store (`--no-durable`) makes it free and keeps nothing across restarts.
"""

from __future__ import annotations

from typing import Protocol

from .runs import Run


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

    def load(self) -> list[Run]:
        """Every stored run, rebuilt (used once, at start)."""

    def remove(self, run_id: str) -> None:
        """Forget a finished run (retention)."""

    def close(self) -> None:
        """Flush what can be flushed synchronously and release files."""


class MemoryStore:
    """Keeps nothing: a daemon restart forgets every run. For tests and `durable = false`."""

    durable = False

    def __init__(self) -> None:
        self.problems: list[str] = []

    def created(self, run: Run) -> None:
        return None

    def changed(self, run: Run) -> None:
        return None

    async def flush(self) -> None:
        return None

    def load(self) -> list[Run]:
        return []

    def remove(self, run_id: str) -> None:
        return None

    def close(self) -> None:
        return None
