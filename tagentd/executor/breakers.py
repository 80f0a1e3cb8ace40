"""`BreakerDesk`: the daemon's circuit breakers, one per LLM endpoint (`llm:NAME`) or `ctx.breaker(NAME)`,
shared by every worker over workers.sock (the state machine is tagent_client.core.breaker).

- A worker sends `BreakerAsk` before a call and is answered at once (`BreakerAnswer`): the daemon's
  loop decides, so once a breaker opens no call of any worker is let through on an answer until it
  half-opens, and then exactly one (the probe) until that call's `BreakerOutcome`.
- Leases: while a breaker is closed and counts no failure within its window, the answer also grants the
  asking worker a lease: it admits up to LEASE_CALLS more calls through that breaker by itself, for at most
  LEASE_S seconds from its ask, so a healthy service costs no round trip per call. The first failure the
  breaker counts revokes every lease of it (`BreakerRevoke` to each holder; a worker also drops its own
  lease when one of its calls fails), and no lease is granted while a failure is counted within the window
  or the breaker is not closed. So, with `failures` >= 2, every lease has been revoked before the breaker
  can open; a call can start through an open breaker only on a worker that has not yet read its
  revocation, and never later than LEASE_S after that worker asked for its lease (docs/agents.md).
- A call is `(worker identity, req)`. A probe is given up (no verdict: the next call is the probe) when
  its worker's heartbeat no longer lists it, or its worker is gone; so a lost outcome or a dead worker
  never leaves a breaker half-open for good.
- Each state change is published as `circuit.opened`, `circuit.half_open` or `circuit.closed` (data:
  `breaker`, `endpoint` for an LLM endpoint's, `state`, `failures`, `reopens_at` as a Unix time), after
  the next commit like the daemon's other events (a trigger may match them). A loop timer half-opens a
  breaker when its cooldown ends, so `circuit.half_open` is announced even when no call comes.
- Soft state: nothing here is journaled; a restarted daemon starts every breaker closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from tagent_client.core.breaker import Breaker, BreakerRule, Change, State
from tagent_client.run.breakers import LLM_PREFIX
from tagentd.worker import wire

log = logging.getLogger("tagentd.breakers")

CallKey = tuple[bytes, int]  # (worker identity, request number)
#: Breakers kept at most; calls through a breaker past this many are let through unguarded (and logged).
MAX_BREAKERS = 10_000
TOPICS = {"open": "circuit.opened", "half_open": "circuit.half_open", "closed": "circuit.closed"}
#: A lease: the calls a worker may admit through a healthy breaker without asking, and for how long (seconds).
LEASE_CALLS = 100
LEASE_S = 1.0


class BreakerDesk:
    """Every breaker of the daemon; runs on the daemon's loop."""

    def __init__(self, rule_for: Callable[[str], BreakerRule], send: Callable[[bytes, bytes], bool],
                 publish: Callable[[str, dict[str, Any]], None]) -> None:
        self.rule_for = rule_for
        self.send = send
        self.publish = publish
        self.breakers: dict[str, Breaker] = {}
        self.leases: dict[str, dict[bytes, float]] = {}  # breaker -> worker identity -> when its lease ends
        self.asked: dict[str, int] = {}  # breaker -> asks answered
        self.leased: dict[str, int] = {}  # breaker -> leases granted
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._overflow_logged = False

    # -- messages -----------------------------------------------------------------------------------

    def on_ask(self, identity: bytes, msg: wire.BreakerAsk) -> None:
        breaker = self._breaker(msg.name)
        if breaker is None:
            self._answer(identity, wire.BreakerAnswer(req=msg.req, allowed=True, generation=-1))
            return
        now = time.monotonic()
        verdict = breaker.admit((identity, msg.req), now)
        refusal = verdict.refusal
        self.asked[msg.name] = self.asked.get(msg.name, 0) + 1
        lease = verdict.allowed and not verdict.probe and self._healthy(breaker, now)
        if lease:
            self.leases.setdefault(msg.name, {})[identity] = now + LEASE_S
            self.leased[msg.name] = self.leased.get(msg.name, 0) + 1
        self._answer(identity, wire.BreakerAnswer(
            req=msg.req, allowed=verdict.allowed, generation=verdict.generation, probe=verdict.probe,
            message=refusal.message if refusal is not None else None,
            reopens_in=refusal.retry_after if refusal is not None else None,
            lease=LEASE_CALLS if lease else 0, lease_s=LEASE_S if lease else 0.0))
        self._announce(breaker, now)

    def on_outcome(self, identity: bytes, msg: wire.BreakerOutcome) -> None:
        breaker = self.breakers.get(msg.name)
        if breaker is None:
            return
        now, key = time.monotonic(), (identity, msg.req)
        if msg.ok is None:
            breaker.abandoned(key)
        elif msg.ok:
            breaker.succeeded(key, msg.generation, now)
        else:
            breaker.failed(key, msg.generation, now)
            self._revoke(breaker, now)
        self._announce(breaker, now)

    def on_heartbeat(self, identity: bytes, outstanding: Collection[int]) -> None:
        """Give up the probes of `identity` that its heartbeat no longer lists."""
        listed = set(outstanding)
        self._give_up(lambda key: key[0] == identity and key[1] not in listed)

    def worker_gone(self, identity: bytes) -> None:
        """Give up the probes and forget the leases of a worker that is gone."""
        self._give_up(lambda key: key[0] == identity)
        for held in self.leases.values():
            held.pop(identity, None)

    def _give_up(self, stale: Callable[[CallKey], bool]) -> None:
        for breaker in self.breakers.values():
            probe = breaker.probe
            if isinstance(probe, tuple) and stale(probe):
                breaker.abandoned(probe)

    # -- views ----------------------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Every breaker: name, state, failures (counted now, or that opened it), seconds until it half-opens,
        times it opened, whether its probe is out (`tagentd status`)."""
        now = time.monotonic()
        out = []
        for name, breaker in sorted(self.breakers.items()):
            breaker.tick(now)
            self._announce(breaker, now)
            out.append({"name": name, "state": breaker.state.value, "failures": breaker.failures(now),
                        "reopens_in": breaker.reopens_in(now), "opened": breaker.opened,
                        "probe_out": breaker.probe is not None})
        return out

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per breaker: the asks answered and the leases granted (metrics)."""
        return {name: (self.asked.get(name, 0), self.leased.get(name, 0)) for name in sorted(self.breakers)}

    # -- inside ----------------------------------------------------------------------------------------

    @staticmethod
    def _healthy(breaker: Breaker, now: float) -> bool:
        """Whether calls through `breaker` may be leased: closed, with no failure counted within its window."""
        return breaker.state is State.CLOSED and breaker.failures(now) == 0

    def _revoke(self, breaker: Breaker, now: float) -> None:
        """Once `breaker` counts a failure (or is no longer closed), every lease of it ends: each holder whose lease
        is still running is told so (one message, on workers.sock, before anything else the daemon sends it later)."""
        if self._healthy(breaker, now):
            return  # a stale outcome, or a breaker that never opens: nothing changed
        held = self.leases.pop(breaker.name, None)
        if not held:
            return
        frame = wire.encode(wire.BreakerRevoke(name=breaker.name))
        for identity, until in held.items():
            if until > now:
                self.send(identity, frame)

    def _breaker(self, name: str) -> Breaker | None:
        breaker = self.breakers.get(name)
        if breaker is None:
            if len(self.breakers) >= MAX_BREAKERS:
                if not self._overflow_logged:
                    self._overflow_logged = True
                    log.warning("%d circuit breakers exist; calls through new ones (%r) go unguarded", MAX_BREAKERS, name)
                return None
            breaker = self.breakers[name] = Breaker(name, self.rule_for(name))
        return breaker

    def _answer(self, identity: bytes, answer: wire.BreakerAnswer) -> None:
        self.send(identity, wire.encode(answer))

    def _announce(self, breaker: Breaker, now: float) -> None:
        changes = breaker.take_changes()
        for change in changes:
            self._publish(change)
        if changes:
            self._arm(now)

    def _publish(self, change: Change) -> None:
        data: dict[str, Any] = {"breaker": change.name, "state": change.state.value, "failures": change.failures,
                                "reopens_at": time.time() + change.reopens_in if change.reopens_in is not None else None}
        if change.name.startswith(LLM_PREFIX):
            data["endpoint"] = change.name[len(LLM_PREFIX):]
        log.log(logging.WARNING if change.state.value == "open" else logging.INFO, "circuit breaker %r is %s "
                "(%d failure(s))", change.name, change.state.value, change.failures)
        self.publish(TOPICS[change.state.value], data)

    def _arm(self, now: float) -> None:
        """A timer at the next cooldown's end, to half-open that breaker (and announce it) on time."""
        times = [b.reopens_at for b in self.breakers.values() if b.reopens_at is not None]
        at = min(times) if times else None
        if at is None or at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - now) + 0.001, self._wake)

    def _wake(self) -> None:
        self._timer, self._timer_at = None, None
        now = time.monotonic()
        for breaker in self.breakers.values():
            breaker.tick(now)
            self._announce(breaker, now)
        self._arm(now)
