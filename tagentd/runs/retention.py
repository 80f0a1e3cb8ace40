"""Retention: which finished runs to forget.

A run is never removed while it is unfinished. A finished run goes when it
finished more than `max_age_s` ago, or when more than `max_runs` finished runs
exist (oldest first) — at any age, so `max_runs` bounds what the daemon keeps
however fast runs finish. A limit of 0 means "no limit".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the run machinery is not needed to pick runs by age and count
    from tagentd.runs.run import RunEntry

#: At most this many runs go per commit when retention runs by itself (a backlog drains over several commits,
#: so no commit, and no reply waiting for one, is held up by thousands of file removals).
BATCH = 200


def oldest_first(entries: Iterable[RunEntry]) -> list[tuple[str, float]]:
    """(run id, finish time) of every finished run among `entries`, oldest first."""
    return sorted(((e.run_id, e.finished_at or e.created_at) for e in entries if e.finished), key=lambda f: f[1])


def expired(finished: Iterable[tuple[str, float]], count: int, *, now: float, max_age_s: float, max_runs: int,
            at_most: int | None = None) -> list[str]:
    """The ids retention removes (the oldest `at_most` of them, if given), oldest first.

    `finished` is every finished run's (id, finish time), oldest first, and `count` how many there are; only the
    runs removed are looked at (the age limit removes a prefix too), so this costs what it removes.
    """
    excess = count - max_runs if max_runs > 0 else 0
    doomed = []
    for position, (run_id, finished_at) in enumerate(finished):
        if len(doomed) == at_most or not (position < excess or (max_age_s > 0 and now - finished_at > max_age_s)):
            break
        doomed.append(run_id)
    return doomed
