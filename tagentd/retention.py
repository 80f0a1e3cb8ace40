"""Retention: which finished runs to forget.

A run is never removed while it is unfinished, nor within `RECENT_S` of
finishing, whatever the limits say. Beyond that, a finished run goes when it
is older than `max_age_s`, or when more than `max_runs` finished runs exist
(oldest first). A limit of 0 means "no limit".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `tagentd gc` reads RECENT_S without loading the run machinery
    from .runs import Run

RECENT_S = 3600.0


def expired(runs: Iterable[Run], *, now: float, max_age_s: float, max_runs: int, recent_s: float = RECENT_S) -> list[Run]:
    """The runs retention removes, oldest first."""
    finished = sorted((r for r in runs if r.finished), key=lambda r: r.state.finished_at or r.state.created_at)
    doomed: dict[str, Run] = {}
    if max_age_s > 0:
        for run in finished:
            if now - (run.state.finished_at or run.state.created_at) > max_age_s:
                doomed[run.id] = run
    if max_runs > 0 and len(finished) > max_runs:
        for run in finished[: len(finished) - max_runs]:
            doomed[run.id] = run
    return [r for r in doomed.values() if now - (r.state.finished_at or r.state.created_at) >= recent_s]
