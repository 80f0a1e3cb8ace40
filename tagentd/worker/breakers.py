"""`BreakerClient`: a worker's end of the daemon's circuit breakers (tagentd/executor/breakers.py).

Implements `tagent_client.run.breakers.BreakerGate` for the LLM endpoints' breakers and `ctx.breaker(name)`:
`admit` sends a `BreakerAsk` (re-sent until answered) and waits for the `BreakerAnswer`, so the daemon
decides every call, for all workers together (exactly one probe when half-open); `report` sends the call's
`BreakerOutcome` when it can change the daemon's breaker: a failure, or any end of the probe. A call that was
not the probe and did not fail changes nothing there (core/breaker.py: only the probe's success closes, only
failures open), so its end costs no message (one fewer per model request). Every heartbeat lists
the calls admitted and not ended, so a probe whose outcome was lost is given up by the daemon.

May be called from a sync step's thread: work is handed to the event loop thread-safely.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

from tagent_client.errors import CircuitOpen
from tagent_client.run.breakers import Ticket
from tagentd.worker import wire
from tagentd.worker.link import WorkerLink


class BreakerClient:
    """Asks the daemon whether a call may go through a breaker; one per worker, shared by its steps."""

    def __init__(self, link: WorkerLink, loop: asyncio.AbstractEventLoop) -> None:
        self._link = link
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._reqs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.BreakerAnswer]] = {}
        self._admitted: dict[int, Ticket] = {}

    @property
    def outstanding(self) -> list[int]:
        """Calls admitted and not ended (every heartbeat lists them)."""
        return list(self._admitted)

    async def admit(self, name: str) -> Ticket:
        if threading.get_ident() != self._loop_thread:  # a sync step running its own loop in a thread
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.admit(name), self._loop))
        req = next(self._reqs)
        waiter: asyncio.Future[wire.BreakerAnswer] = self._loop.create_future()
        self._waiting[req] = waiter
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

    def report(self, ticket: Ticket, ok: bool | None) -> None:
        if threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self.report, ticket, ok)
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass
            return
        if self._admitted.pop(ticket.id, None) is not None and (ticket.probe or ok is False):
            self._link.send(wire.BreakerOutcome(req=ticket.id, name=ticket.name, generation=ticket.generation, ok=ok))

    def answered(self, message: wire.BreakerAnswer) -> None:
        """An answer arrived (late or repeated ones are ignored)."""
        waiter = self._waiting.get(message.req)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

