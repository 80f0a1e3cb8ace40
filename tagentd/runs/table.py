"""`RunTable`: every run the daemon knows, in creation order, and which of them are in memory.

Unfinished runs are always in memory (a `Run`). A finished run stays in memory
while it is among the `cache_size` most recently used finished runs and, together
with the more recently used ones, holds at most `cache_steps` steps (so a few
10,000-step runs do not pin gigabytes; the most recently used one always stays);
beyond that, once the store has written all of it and released it, only its `RunEntry`
stays (a few hundred bytes), and `get` reads the run back from the store when
someone asks for it. A store that cannot read runs back (`durable = false`)
keeps every run in memory; retention is then what bounds them.

A run's events (`tagent watch`, `--follow`) live only in memory: a run read back
from disk has its state, outputs, history and logs, but no event list.

Listing is paged: `newest(limit, before=RUN)` lists the runs created before RUN,
newest first, starting from RUN's place in the table (no walk over the newer
runs), so every page costs what it returns however long the history is. Runs
created meanwhile never shift a page (they come before the first one), so paging
with the last id of each page sees every run that exists throughout exactly once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from itertools import islice

from tagent_client.errors import NotFound
from tagent_client.wire.protocol import RunSummary
from tagentd.runs import retention
from tagentd.runs.run import Run, RunEntry
from tagentd.runs.store import Recovered, RunStore

#: Steps the finished runs in memory may hold together (a run holds ~5 KB per step: state, events, history).
CACHE_STEPS = 50_000


class RunTable:
    """Every run by id, in creation order: the Run if it is in memory, else its RunEntry."""

    def __init__(self, store: RunStore, cache_size: int, cache_steps: int = CACHE_STEPS) -> None:
        self._store = store
        self.cache_size = cache_size
        self.cache_steps = cache_steps
        self._weights: dict[str, int] = {}  # finished run in memory -> its steps when it joined the cache
        self._cached_steps = 0
        self._rows: dict[str, Run | RunEntry] = {}
        self._active: dict[str, Run] = {}  # unfinished (or not yet announced as finished)
        self._cache: collections.OrderedDict[str, Run] = collections.OrderedDict()  # finished, least recent first
        self._finished: dict[str, float] = {}  # every finished run's finish time, oldest first (for retention)
        self._order: list[str | None] = []  # every run id in creation order; None where a run was removed
        self._place: dict[str, int] = {}  # run id -> its index in _order
        self.reads = 0

    def restore(self, recovered: Recovered) -> None:
        """Start from what the store loaded: every run's entry, the unfinished runs whole."""
        for entry in recovered.entries:
            self._rows[entry.run_id] = entry
        for run in recovered.runs:
            self._rows[run.id] = run
            self._active[run.id] = run
        self._finished = dict(retention.oldest_first(recovered.entries))
        self._order = list(self._rows)
        self._place = {run_id: i for i, run_id in enumerate(self._order)}

    def add(self, run: Run) -> None:
        if run.id not in self._place:
            self._place[run.id] = len(self._order)
            self._order.append(run.id)
        self._rows[run.id] = run
        self._active[run.id] = run

    def live(self, run_id: str) -> Run | None:
        """The run if it is in memory (exact id): what worker messages and timers are about."""
        row = self._rows.get(run_id)
        return row if isinstance(row, Run) else None

    def get(self, run_id: str) -> Run | None:
        """The run `run_id` (or the only one whose id starts with it, 4+ characters), read back if need be.

        None if there is no such run; NotFound (and the run is forgotten) if its stored record is lost.
        """
        row = self._rows.get(run_id)
        if row is None and len(run_id) >= 4:
            matches = [rid for rid in self._rows if rid.startswith(run_id)]
            if len(matches) == 1:
                run_id = matches[0]
                row = self._rows[run_id]
        if row is None or isinstance(row, Run):
            if run_id in self._cache:
                self._cache.move_to_end(run_id)
            return row
        try:
            run = self._store.read(run_id)
        except NotFound:
            self.remove(run_id)
            raise
        self.reads += 1
        self._rows[run_id] = run
        self._cache_put(run)  # trimmed after the next commit, never before the caller is done with it
        return run

    def finished(self, run: Run) -> None:
        """`run` ended and said so: it joins the finished runs in memory, as the most recently used."""
        if not run.finished or self._rows.get(run.id) is not run:
            return
        self._active.pop(run.id, None)
        self._cache_put(run)
        self._finished.pop(run.id, None)
        self._finished[run.id] = run.state.finished_at or time.time()

    def reopened(self, run: Run) -> None:
        """`run` runs again (resume, retry): it stays in memory until it has finished again."""
        self._cache_drop(run.id)
        self._finished.pop(run.id, None)
        self._active[run.id] = run

    def trim(self) -> None:
        """Let the least recently used finished runs beyond `cache_size` leave memory (call after a commit)."""
        if not self._store.durable:
            return
        for run_id in self._beyond_budget():
            entry = self._store.release(run_id)
            if entry is not None:  # else it has unwritten changes: it goes at a later commit
                self._cache_drop(run_id)
                self._rows[run_id] = entry

    def _beyond_budget(self) -> list[str]:
        """The least recently used finished runs beyond `cache_size` runs or `cache_steps` steps (never the most
        recently used one); walks only those."""
        runs_over, steps_over = len(self._cache) - self.cache_size, self._cached_steps - self.cache_steps
        doomed: list[str] = []
        for run_id in islice(self._cache, max(0, len(self._cache) - 1)):
            if runs_over <= 0 and steps_over <= 0:
                break
            doomed.append(run_id)
            runs_over -= 1
            steps_over -= self._weights[run_id]
        return doomed

    def _cache_put(self, run: Run) -> None:
        """`run` joins the finished runs in memory as the most recently used (counted by its steps)."""
        self._cache_drop(run.id)
        self._cache[run.id] = run
        self._weights[run.id] = len(run.state.steps)
        self._cached_steps += self._weights[run.id]

    def _cache_drop(self, run_id: str) -> None:
        if self._cache.pop(run_id, None) is not None:
            self._cached_steps -= self._weights.pop(run_id)

    def expire(self, *, now: float, max_age_s: float, max_runs: int, dry_run: bool = False,
               at_most: int | None = None) -> list[str]:
        """Remove the finished runs retention says to (from here and from the store); their ids, oldest first."""
        doomed = retention.expired(self.finished_oldest_first(), self.finished_count, now=now, max_age_s=max_age_s,
                                   max_runs=max_runs, at_most=at_most)
        for run_id in [] if dry_run else doomed:
            self.remove(run_id)
            self._store.remove(run_id)
        return doomed

    def remove(self, run_id: str) -> None:
        """Forget the run here (the store keeps it: see `expire`)."""
        self._rows.pop(run_id, None)
        self._active.pop(run_id, None)
        self._cache_drop(run_id)
        self._finished.pop(run_id, None)
        place = self._place.pop(run_id, None)
        if place is not None:
            self._order[place] = None
            if len(self._order) > 2 * len(self._place) + 1024:  # mostly holes: close them (amortized O(1))
                self._order = [rid for rid in self._order if rid is not None]
                self._place = {rid: i for i, rid in enumerate(self._order)}

    def newest(self, limit: int, status: str | None = None, before: str | None = None) -> list[RunSummary]:
        """The newest `limit` runs (in `status`, if given), newest first; with `before` (a run id, e.g. the last
        of the previous page), only runs created before that run.

        Costs the runs it looks at from `before`'s place on. A `before` no longer in the table (retention
        removed it) is placed by its id, which sorts by creation time.
        """
        start = self._place.get(before, -1) if before is not None else len(self._order)
        if start < 0:
            start = self._place_of_missing(before or "")
        out = []
        for i in range(start - 1, -1, -1):
            run_id = self._order[i]
            row = self._rows.get(run_id) if run_id is not None else None
            if row is None:
                continue
            if status and (row.state.status.value if isinstance(row, Run) else row.status) != status:
                continue
            out.append(row.summary())
            if len(out) >= limit:
                break
        return out

    def _place_of_missing(self, run_id: str) -> int:
        """Where a run id not in the table would stand: after the newest run whose id sorts before it."""
        for i in range(len(self._order) - 1, -1, -1):
            known = self._order[i]
            if known is not None and known < run_id:
                return i + 1
        return 0

    def entries(self) -> Iterator[RunEntry]:
        """Every run's entry, oldest first (for those in memory: as of now)."""
        for row in list(self._rows.values()):
            yield row.entry() if isinstance(row, Run) else row

    def active(self) -> list[Run]:
        """The unfinished runs."""
        return [run for run in self._active.values() if not run.finished]

    def finished_oldest_first(self) -> Iterator[tuple[str, float]]:
        """Every finished run's (id, finish time), oldest first."""
        return iter(self._finished.items())

    @property
    def finished_count(self) -> int:
        return len(self._finished)

    def census(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """Runs by status (every run the daemon knows) and steps by status (those of the runs in memory: every
        unfinished run and the recently finished ones in the cache), for a metrics scrape: O(runs + their steps)."""
        runs, steps = collections.Counter[str](), collections.Counter[str]()
        for row in self._rows.values():
            if isinstance(row, Run):
                runs[row.state.status.value] += 1
                for step in row.state.steps.values():
                    steps[step.status.value] += 1
            else:
                runs[row.status] += 1
        return runs, steps

    def stats(self) -> dict[str, int]:
        """What `daemon_status` shows under `stats.runs`."""
        return {"in_memory": len(self._active) + len(self._cache), "finished_in_memory": len(self._cache),
                "cache_size": self.cache_size, "read_from_disk": self.reads}

    def __len__(self) -> int:
        return len(self._rows)
