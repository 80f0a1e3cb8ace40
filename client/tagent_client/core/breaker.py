"""A circuit breaker's state machine: pure, no I/O, no clock of its own (every call takes `now`, in seconds).

The daemon keeps one `Breaker` per LLM endpoint or `ctx.breaker(name)`, shared by all its workers
(tagentd/executor/breakers.py); in-process runs keep one per process (run/breakers.py). The rules
(docs/agents.md, "Circuit breakers"):

- closed: every call goes through; a call that fails is counted, and `failures` failures within the
  last `window` seconds open the breaker (`failures = 0`: it never opens);
- open: every call is refused at once (`CircuitOpen`), for `cooldown` seconds;
- half-open: exactly one call, the probe, goes through; the others are refused until its outcome:
  success closes the breaker (its failures forgotten), failure opens it again for `cooldown` seconds,
  no verdict (the call was cancelled, its worker died, a 429) lets the next call be the probe.

A call is identified by a *ticket* (any hashable the owner picks) and admitted under a *generation*:
an outcome of a call admitted before the breaker last opened or closed is stale and ignored, so a slow
call from before an outage cannot reopen a breaker that has since recovered. Each state change is kept in
`changes` until the owner takes it (`take_changes`), to announce it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from ..errors import CircuitOpen

#: The defaults of every breaker (tagentd.toml's `[breaker]` table overrides them).
DEFAULT_FAILURES = 5
DEFAULT_WINDOW = 60.0
DEFAULT_COOLDOWN = 30.0


class State(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerRule:
    """When a breaker opens (`failures` within `window` seconds; 0: never) and how long it stays open."""

    failures: int = DEFAULT_FAILURES
    window: float = DEFAULT_WINDOW
    cooldown: float = DEFAULT_COOLDOWN


@dataclass(frozen=True)
class Verdict:
    """The answer to `admit`: the call may go (as the probe, if `probe`), or not (`refusal` says why)."""

    allowed: bool
    generation: int
    probe: bool = False
    refusal: CircuitOpen | None = None


@dataclass(frozen=True)
class Change:
    """A state change: the breaker's name, its new state, the failures that opened it, when it half-opens."""

    name: str
    state: State
    failures: int
    reopens_in: float | None


class Breaker:
    """One breaker. Not thread-safe: its owner serializes the calls (the daemon's loop, or a lock)."""

    def __init__(self, name: str, rule: BreakerRule | None = None) -> None:
        self.name = name
        self.rule = rule or BreakerRule()
        self.state = State.CLOSED
        self.generation = 0
        self.opened = 0  # how many times it has opened
        self.reopens_at: float | None = None  # open: when it half-opens
        self.probe: Hashable | None = None  # half-open: the ticket of the call out as the probe
        self.changes: list[Change] = []
        self._failed_at: deque[float] = deque()
        self._opened_with = 0  # the failures that last opened it

    # -- the calls --------------------------------------------------------------------------------

    def admit(self, ticket: Hashable, now: float) -> Verdict:
        """May the call `ticket` go now? Asking again for the same ticket gives the same answer while it stands."""
        self.tick(now)
        if self.state is State.CLOSED:
            return Verdict(True, self.generation)
        if self.state is State.HALF_OPEN and self.probe in (None, ticket):
            self.probe = ticket
            return Verdict(True, self.generation, probe=True)
        return Verdict(False, self.generation, refusal=self.refusal(now))

    def succeeded(self, ticket: Hashable, generation: int, now: float) -> None:
        """The call answered: as the probe, it closes the breaker."""
        if self._is_probe(ticket, generation):
            self._close()

    def failed(self, ticket: Hashable, generation: int, now: float) -> None:
        """The call failed the way a broken service fails (5xx, timeout, connection error)."""
        if self._is_probe(ticket, generation):
            self._open(now)
        elif self.state is State.CLOSED and generation == self.generation and self.rule.failures > 0:
            self._failed_at.append(now)
            self._forget_old(now)
            if len(self._failed_at) >= self.rule.failures:
                self._open(now)

    def abandoned(self, ticket: Hashable) -> None:
        """The call ended with no verdict (cancelled, its caller gone, a 429): as the probe, it frees the probe."""
        if self.state is State.HALF_OPEN and self.probe == ticket and ticket is not None:
            self.probe = None

    def tick(self, now: float) -> None:
        """Open -> half-open once the cooldown is over."""
        if self.state is State.OPEN and self.reopens_at is not None and now >= self.reopens_at:
            self.state, self.reopens_at, self.probe = State.HALF_OPEN, None, None
            self._announce(None)

    # -- views ----------------------------------------------------------------------------------------

    def failures(self, now: float) -> int:
        """Closed: the failures counted in the window now; otherwise the failures that opened it."""
        if self.state is State.CLOSED:
            self._forget_old(now)
            return len(self._failed_at)
        return self._opened_with

    def reopens_in(self, now: float) -> float | None:
        return max(0.0, self.reopens_at - now) if self.reopens_at is not None else None

    def refusal(self, now: float) -> CircuitOpen:
        """The error a refused call raises: which breaker, why, when it half-opens, what to do."""
        wait = self.reopens_in(now)
        why = f"{self._opened_with} failure(s) within {self.rule.window:g}s"
        if wait is not None:
            text = (f"circuit breaker {self.name!r} is open ({why}): calls fail fast until it half-opens in "
                    f"{wait:.1f}s and lets one probe call through; the step's retry policy retries then. "
                    f"Check the service, or tune the breaker in tagentd.toml ([breaker])")
        else:
            text = (f"circuit breaker {self.name!r} is half-open ({why}): one probe call is testing the service and "
                    f"other calls fail fast until it succeeds (closed) or fails (open for {self.rule.cooldown:g}s "
                    f"more); the step's retry policy retries this one")
        return CircuitOpen(text, breaker=self.name, retry_after=wait)

    def take_changes(self) -> list[Change]:
        changes, self.changes = self.changes, []
        return changes

    # -- transitions ----------------------------------------------------------------------------------

    def _is_probe(self, ticket: Hashable, generation: int) -> bool:
        return (self.state is State.HALF_OPEN and self.probe == ticket and ticket is not None
                and generation == self.generation)

    def _open(self, now: float) -> None:
        self._opened_with = len(self._failed_at) if self.state is State.CLOSED else self._opened_with
        self.state, self.probe = State.OPEN, None
        self.reopens_at = now + self.rule.cooldown
        self.generation += 1
        self.opened += 1
        self._failed_at.clear()
        self._announce(self.rule.cooldown)

    def _close(self) -> None:
        self.state, self.probe, self.reopens_at = State.CLOSED, None, None
        self.generation += 1
        self._failed_at.clear()
        self._announce(None)

    def _announce(self, reopens_in: float | None) -> None:
        self.changes.append(Change(self.name, self.state, self._opened_with, reopens_in))

    def _forget_old(self, now: float) -> None:
        while self._failed_at and self._failed_at[0] <= now - self.rule.window:
            self._failed_at.popleft()
