"""Parked requests (long-polls): how long one may wait, and `Parked`, the answer to come."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def wait_limit(wait: float, longest: float) -> float:
    """A long-poll's `wait` clamped to [0, longest]; NaN means 0 (it compares false, so it would never expire)."""
    return min(max(wait, 0.0), longest) if wait == wait else 0.0


class Parked:
    """The answer to a parked request, to come: a handler returns one, and whoever parked it `resolve`s it.

    Unlike a coroutine handler (a task, woken a loop turn or more later), the answer reaches the
    router's `then` callback synchronously inside `resolve`: a receive parked in the daemon is answered
    in the same call as the send that fills it, so both replies can leave after the same commit.
    `resolve` counts once; later calls are ignored.
    """

    __slots__ = ("_answered", "_result", "_then")

    def __init__(self) -> None:
        self._answered = False
        self._result: Any = None
        self._then: Callable[[Any], None] | None = None

    @classmethod
    def now(cls, result: Any) -> Parked:
        """A request answered at once."""
        parked = cls()
        parked.resolve(result)
        return parked

    def resolve(self, result: Any) -> None:
        if self._answered:
            return
        self._answered, self._result = True, result
        then, self._then = self._then, None
        if then is not None:
            then(result)

    def then(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(result)` once: now if answered, else inside `resolve`."""
        if self._answered:
            callback(self._result)
        else:
            self._then = callback
