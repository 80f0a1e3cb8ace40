"""`BreakerClient`: a worker's end of the daemon's circuit breakers (tagentd/executor/breakers.py).

Implements `tagent_client.run.breakers.BreakerGate` for the LLM endpoints' breakers and `ctx.breaker(name)`:
`admit` sends a `BreakerAsk` (re-sent until answered) and waits for the `BreakerAnswer`, so the daemon
decides every call, for all workers together (exactly one probe when half-open); `report` sends the call's
`BreakerOutcome` when it can change the daemon's breaker: a failure, or any end of the probe. A call that was
not the probe and did not fail changes nothing there (core/breaker.py: only the probe's success closes, only
failures open), so its end costs no message (one fewer per model request). Every heartbeat lists
the calls admitted and not ended, so a probe whose outcome was lost is given up by the daemon.

Leases: an answer may grant a lease (the daemon grants one only while the breaker is closed and healthy): the next
`lease` calls through that breaker, within `lease_s` seconds of the ask (this process's clock), are admitted here
without asking. A lease ends early when the daemon revokes it (`BreakerRevoke`, at the breaker's first counted
failure) or when one of this worker's calls through it fails. A leased call is never the probe; its failure is
reported like any other.

May be called from a sync step's thread: work is handed to the event loop thread-safely.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tagent_client.errors import CircuitOpen
from tagent_client.run.breakers import Ticket
from tagentd.worker import wire
from tagentd.worker.link import WorkerLink


@dataclass
class Lease:
    """Calls this worker may still admit through one breaker without asking: `calls` more, until `until`."""

    generation: int
    calls: int
    until: float  # time.monotonic()


class BreakerClient:
    """Asks the daemon whether a call may go through a breaker; one per worker, shared by its steps."""

    def __init__(self, link: WorkerLink, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._clock = clock
        self._reqs = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future[wire.BreakerAnswer], str, float]] = {}  # req -> (waiter, name, asked at)
        self._admitted: dict[int, Ticket] = {}
        self._leases: dict[str, Lease] = {}

    @property
    def outstanding(self) -> list[int]:
        """Calls admitted and not ended (every heartbeat lists them)."""
        return list(self._admitted)

    async def admit(self, name: str) -> Ticket:
        if threading.get_ident() != self._loop_thread:  # a sync step running its own loop in a thread
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.admit(name), self._loop))
        req = next(self._reqs)
        leased = self._leased(name)
        if leased is not None:
            ticket = self._admitted[req] = Ticket(name, req, leased)
            return ticket
        waiter: asyncio.Future[wire.BreakerAnswer] = self._loop.create_future()
        self._waiting[req] = (waiter, name, self._clock())
        self._link.send_until_acked(("breaker", req), wire.BreakerAsk(req=req, name=name))
        try:
            answer = await waiter
        except BaseException:  # cancelled while asking: the daemon may have admitted it; end it there too
            self._link.send(wire.BreakerOutcome(req=req, name=name, generation=-1, ok=None))
            raise
        finally:
            self._waiting.pop(req, None)
            self._link.acked(("breaker", req))
        if not answer.allowed:
            raise CircuitOpen(answer.message or f"circuit breaker {name!r} is open", breaker=name,
                              retry_after=answer.reopens_in)
        ticket = Ticket(name, req, answer.generation, answer.probe)
        self._admitted[req] = ticket
        return ticket

    def admits_at_once(self, name: str) -> bool:
        """True while this worker holds a running lease on `name` (a call would not ask the daemon)."""
        lease = self._leases.get(name)
        return (lease is not None and lease.calls > 0 and self._clock() < lease.until
                and threading.get_ident() == self._loop_thread)

    def _leased(self, name: str) -> int | None:
        """Take one call of the lease on `name`, if one is running: its generation (else None)."""
        lease = self._leases.get(name)
        if lease is None:
            return None
        if lease.calls <= 0 or self._clock() >= lease.until:
            del self._leases[name]
            return None
        lease.calls -= 1
        return lease.generation

    def report(self, ticket: Ticket, ok: bool | None) -> None:
        if threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self.report, ticket, ok)
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass
            return
        if ok is False:
            self._leases.pop(ticket.name, None)  # this worker saw it fail: ask before every call until the daemon says
        if self._admitted.pop(ticket.id, None) is not None and (ticket.probe or ok is False):
            self._link.send(wire.BreakerOutcome(req=ticket.id, name=ticket.name, generation=ticket.generation, ok=ok))

    def revoked(self, message: wire.BreakerRevoke) -> None:
        """The daemon ended this worker's lease on a breaker (it counted a failure)."""
        self._leases.pop(message.name, None)

    def answered(self, message: wire.BreakerAnswer) -> None:
        """An answer arrived (late or repeated ones are ignored)."""
        waiting = self._waiting.get(message.req)
        if waiting is None or waiting[0].done():
            return
        waiter, name, asked_at = waiting
        if message.allowed and message.lease > 0:  # taken now, in the order of the daemon's messages (a revocation after it wins)
            self._leases[name] = Lease(message.generation, message.lease, asked_at + message.lease_s)
        waiter.set_result(message)

