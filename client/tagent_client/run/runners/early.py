"""The first model request of an agent run, admitted while pydantic-ai prepares the run.

pydantic-ai prepares a run (its tools, the output schema, the request) for a while before it sends the
first request. `early_admission(model)` asks, as the run starts, for what that request needs first — the
endpoint's permit, then its circuit breaker's verdict (models.LimitedModel.admission); in a worker, each is
a round trip to the daemon — so the wait overlaps the preparation instead of following it. Guarantees:

- the same order (permit, then breaker) and the same answers as asking at the request: a refusal
  (CircuitOpen) is raised by the request that takes the admission, as it would have been;
- only the run's first request of that model takes it; later ones (tool-call turns, output retries) ask
  at the request as before;
- an admission no request took (the run failed, or was cancelled, before its first request) is given
  back when the run ends: the breaker's ticket ends with no verdict (a probe is freed), the permit is
  released unused; one still being asked for is cancelled (the asks give back what they hold);
- nothing is asked ahead when the permit counts the request's tokens (`tokens_per_minute`: they are not
  known before the request exists), when the model asks no one (`test`), or when its admission is answered
  at once (no permit, and a breaker this process decides: in-process runs, or a worker holding a lease of
  it): there is no wait to overlap, and the request admits itself without a task of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

Admission = tuple[Any, Any]  # (permit or None, breaker ticket or None)


class EarlyAdmission:
    """One run's early admission: the task asking for it, until a request takes it or the run ends."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.task: asyncio.Task[Admission] | None = asyncio.ensure_future(model.admission([]))

    def take(self, model: Any) -> asyncio.Task[Admission] | None:
        if model is not self.model or self.task is None:
            return None
        task, self.task = self.task, None
        return task

    def close(self) -> None:
        """Give the admission back if no request took it."""
        task, self.task = self.task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            self.model.abandon(*task.result())


_EARLY: ContextVar[EarlyAdmission | None] = ContextVar("tagent_early_admission", default=None)


@contextmanager
def early_admission(model: Any) -> Iterator[None]:
    """Within this block (one agent run on `model`), the run's first request of `model` takes an admission
    asked for now (when `model.admits_ahead`; else requests ask as usual)."""
    if not getattr(model, "admits_ahead", False):
        yield
        return
    early = EarlyAdmission(model)
    token = _EARLY.set(early)
    try:
        yield
    finally:
        _EARLY.reset(token)
        early.close()


def take_early_admission(model: Any) -> asyncio.Task[Admission] | None:
    """The admission asked for as this run started, to the first request of `model` that asks (else None)."""
    early = _EARLY.get()
    return early.take(model) if early is not None else None
