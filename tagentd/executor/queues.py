"""`DispatchQueues`: the attempts waiting for a worker slot, in the order the pool hands them out.

Guarantees:
- shared attempts are served one run at a time in rotation (a run with a thousand queued
  steps does not starve a run with one), first in, first out within a run;
- attempts that must run alone wait in their own first-in, first-out line;
- `first=True` puts an attempt back at the head of its line (a send that failed keeps its place);
- a cancelled or forgotten attempt is never handed out.
"""

from __future__ import annotations

import collections

from tagentd.executor.interface import StepAttempt


class DispatchQueues:
    """One FIFO of attempts per run, served round-robin, plus one FIFO of attempts that must run alone."""

    def __init__(self) -> None:
        self._runs: collections.OrderedDict[str, collections.deque[StepAttempt]] = collections.OrderedDict()
        self._alone: collections.deque[StepAttempt] = collections.deque()

    def __len__(self) -> int:
        return sum(len(q) for q in self._runs.values()) + len(self._alone)

    def put(self, attempt: StepAttempt, *, alone: bool, first: bool = False) -> None:
        line = self._alone if alone else self._runs.setdefault(attempt.run_id, collections.deque())
        if first:
            line.appendleft(attempt)
        else:
            line.append(attempt)

    @property
    def shared_waiting(self) -> bool:
        return bool(self._runs)

    def next_shared(self) -> StepAttempt | None:
        """The next attempt of the next run in the rotation, or None."""
        while self._runs:
            run_id, queue = next(iter(self._runs.items()))
            if not queue:
                del self._runs[run_id]
                continue
            self._runs.move_to_end(run_id)
            return queue.popleft()
        return None

    @property
    def alone_waiting(self) -> int:
        return len(self._alone)

    def next_alone(self) -> StepAttempt | None:
        return self._alone.popleft() if self._alone else None

    def remove(self, run_id: str, task: str, attempt: int) -> None:
        """Drop a waiting attempt (it was cancelled)."""
        def keep(entry: StepAttempt) -> bool:
            return entry.key != (run_id, task, attempt)

        queue = self._runs.get(run_id)
        if queue:
            kept = [entry for entry in queue if keep(entry)]
            queue.clear()
            queue.extend(kept)
        if self._alone:
            kept = [entry for entry in self._alone if keep(entry)]
            self._alone.clear()
            self._alone.extend(kept)

    def forget_run(self, run_id: str) -> None:
        """Drop every waiting attempt of a run."""
        self._runs.pop(run_id, None)
        if any(entry.run_id == run_id for entry in self._alone):
            kept = [entry for entry in self._alone if entry.run_id != run_id]
            self._alone.clear()
            self._alone.extend(kept)
