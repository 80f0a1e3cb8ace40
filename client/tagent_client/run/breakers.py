"""Circuit breakers as steps use them: settings, the in-process registry, and `ctx.breaker(name)`.

Every LLM endpoint (or provider) has a breaker named `llm:<endpoint>`; a function step guards its own
calls with `ctx.breaker("payments")`. The state machine is `core.breaker.Breaker`. Who keeps it:

- through the daemon, the daemon (one per name, shared by every worker: tagentd/worker/breakers.py asks it);
- in-process (`run_pipeline`, `run_agent`), this process: `LocalBreakers` over one registry per process,
  shared by every in-process run of it.

Breaker state is soft: it is not journaled, and a daemon restart starts every breaker closed.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

import msgspec

from ..bounds import NAME_MAX
from ..core.breaker import Breaker, BreakerRule, Change
from ..errors import InvalidRequest
from .checked import above, at_least, pydantic_schema

log = logging.getLogger("tagent.breaker")

#: The breaker of LLM endpoint (or provider) NAME is `llm:NAME`.
LLM_PREFIX = "llm:"
_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*\Z")
T = TypeVar("T")


class BreakerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A breaker's settings (`[breaker]`, `[breakers.NAME]`, an endpoint's `breaker = {...}`); unset: inherited.

    `failures`: failures within `window` that open it (0 = never opens); `window`: seconds over which failures
    are counted (> 0); `cooldown`: seconds open before one probe call is let through (> 0).
    """

    failures: int | None = None
    window: float | None = None
    cooldown: float | None = None

    def __post_init__(self) -> None:
        at_least(self, "failures", 0)
        above(self, "window", 0)
        above(self, "cooldown", 0)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return pydantic_schema(cls)

    def over(self, base: BreakerRule) -> BreakerRule:
        """`base` with what these settings set."""
        return BreakerRule(failures=base.failures if self.failures is None else self.failures,
                           window=base.window if self.window is None else self.window,
                           cooldown=base.cooldown if self.cooldown is None else self.cooldown)


@dataclass(frozen=True)
class BreakerRules:
    """Which rule each breaker follows: the defaults, then the endpoint's or the name's own settings."""

    default: BreakerSettings | None = None
    endpoints: Mapping[str, Any] = field(default_factory=dict)  # name -> EndpointSettings (its `breaker`)
    named: Mapping[str, BreakerSettings] = field(default_factory=dict)

    def rule_for(self, name: str) -> BreakerRule:
        rule = self.default.over(BreakerRule()) if self.default is not None else BreakerRule()
        if name.startswith(LLM_PREFIX):
            endpoint = self.endpoints.get(name[len(LLM_PREFIX):]) if self.endpoints else None
            own = getattr(endpoint, "breaker", None)
        else:
            own = self.named.get(name) if self.named else None
        return own.over(rule) if own is not None else rule


def llm_breaker(endpoint: str) -> str:
    """The breaker name of an LLM endpoint or provider."""
    return LLM_PREFIX + endpoint


def check_name(name: Any) -> str:
    """A `ctx.breaker` name: letters, digits, '_', '-', '.' (not starting with `llm:`, the endpoints' own)."""
    if not isinstance(name, str) or len(name) > NAME_MAX or not _STEP_NAME.match(name):
        raise InvalidRequest(f"ctx.breaker({name!r}): a breaker name is 1-{NAME_MAX} letters, digits, '_', '-' or "
                             f"'.', starting with a letter or digit (e.g. 'payments')")
    return name


@dataclass(frozen=True)
class Ticket:
    """One admitted call: give it back to `report` with the outcome."""

    name: str
    id: int
    generation: int
    probe: bool = False


class BreakerGate(Protocol):
    """What the agent runner and `ctx.breaker` ask before a call, and tell after it."""

    async def admit(self, name: str) -> Ticket:
        """Let one call through breaker `name`, or raise CircuitOpen (retryable) when it is open."""

    def report(self, ticket: Ticket, ok: bool | None) -> None:
        """The call ended: True succeeded, False failed (the service's fault), None no verdict (cancelled, ...)."""

    def admits_at_once(self, name: str) -> bool:
        """Whether `admit(name)` would be answered without waiting for anyone (nothing to gain by asking early)."""


class BreakerRegistry:
    """This process's breakers (thread-safe: a sync step's thread may use one); one per process, `shared()`."""

    _shared: BreakerRegistry | None = None

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.breakers: dict[str, Breaker] = {}
        self.clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> BreakerRegistry:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def admit(self, name: str, rule: BreakerRule) -> Ticket:
        with self._lock:
            breaker = self.breakers.get(name)
            if breaker is None:
                breaker = self.breakers[name] = Breaker(name, rule)
            breaker.rule = rule
            ticket = next(self._ids)
            verdict = breaker.admit(ticket, self.clock())
            self._log(breaker.take_changes())
        if not verdict.allowed:
            assert verdict.refusal is not None
            raise verdict.refusal
        return Ticket(name, ticket, verdict.generation, verdict.probe)

    def report(self, ticket: Ticket, ok: bool | None) -> None:
        with self._lock:
            breaker = self.breakers.get(ticket.name)
            if breaker is None:
                return
            if ok is None:
                breaker.abandoned(ticket.id)
            elif ok:
                breaker.succeeded(ticket.id, ticket.generation, self.clock())
            else:
                breaker.failed(ticket.id, ticket.generation, self.clock())
            self._log(breaker.take_changes())

    @staticmethod
    def _log(changes: list[Change]) -> None:
        for change in changes:
            log.warning("circuit breaker %r is %s (%d failure(s))", change.name, change.state.value, change.failures)


class LocalBreakers:
    """`BreakerGate` for in-process runs: this process's registry, with this run's rules."""

    def __init__(self, rules: BreakerRules | None = None, registry: BreakerRegistry | None = None) -> None:
        self.rules = rules or BreakerRules()
        self.registry = registry or BreakerRegistry.shared()

    async def admit(self, name: str) -> Ticket:
        return self.registry.admit(name, self.rules.rule_for(name))

    def report(self, ticket: Ticket, ok: bool | None) -> None:
        self.registry.report(ticket, ok)

    def admits_at_once(self, name: str) -> bool:
        return True  # this process's own registry decides, without waiting


class StepBreaker:
    """`ctx.breaker(name)`: guard calls to a flaky service with a breaker shared by every step (and worker).

        async with ctx.breaker("payments"):
            await charge(order)          # an exception counts as a failure; CircuitOpen when open

        charge = ctx.breaker("payments")(charge)   # or as a decorator of an async function

    An exception raised inside counts as a failure (it still propagates), except those in `ignore` (they
    mean the service answered: they count as success); cancellation is no verdict.
    """

    def __init__(self, gate: BreakerGate, name: str, ignore: tuple[type[BaseException], ...] = ()) -> None:
        self.gate = gate
        self.name = check_name(name)
        self.ignore = ignore
        self._tickets: list[Ticket] = []

    async def __aenter__(self) -> StepBreaker:
        self._tickets.append(await self.gate.admit(self.name))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        ticket = self._tickets.pop()
        if exc is None or isinstance(exc, self.ignore):
            self.gate.report(ticket, True)
        elif isinstance(exc, Exception):
            self.gate.report(ticket, False)
        else:  # cancelled, KeyboardInterrupt, ...
            self.gate.report(ticket, None)

    def __call__(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"ctx.breaker({self.name!r}) decorates async functions; for a sync call use "
                            f"`async with ctx.breaker({self.name!r}): await asyncio.to_thread(fn, ...)`")

        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            async with StepBreaker(self.gate, self.name, self.ignore):
                return await fn(*args, **kwargs)

        return guarded

    def __repr__(self) -> str:
        return f"StepBreaker({self.name!r})"
