"""`WorkerServices`: what a step's context uses inside a worker — the daemon, over workers.sock.

Memory calls are requests the daemon answers (`MemoryReply` with the same
`req`); they are re-sent until answered, so the daemon must answer a repeated
`req` again (a repeated MemorySave writes the same value twice). Log lines and
progress notes are best effort. `breakers` is the worker's `BreakerClient` (`ctx.breaker`). Every method may be called from a sync step's
thread: work is handed to the event loop thread-safely.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tagent_client.client.subscription import AsyncSubscription
from tagent_client.core.result import to_builtins
from tagent_client.errors import TagentError, error_from_wire
from tagent_client.run.dependency import DependencyState
from tagent_client.wire.protocol_broker import BrokerRequest, StepRef
from tagentd.worker import wire
from tagentd.worker.breakers import BreakerClient
from tagentd.worker.link import WorkerLink

MEMORY_TIMEOUT = 30.0
BROKER_TIMEOUT = 30.0  # beyond the time a request may be parked (receive, wait_for_event)
MAX_LOG_CHARS = 16_000


class MemoryRequestError(TagentError):
    """A `ctx.memory` call failed: the daemon refused it, or did not answer in time (retryable)."""

    code = "memory"

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class WorkerServices:
    """RunServices backed by the daemon; one per worker process, shared by every running step."""

    def __init__(self, link: WorkerLink, loop: asyncio.AbstractEventLoop, breakers: BreakerClient,
                 runtime_dir: Path | None = None) -> None:
        self.breakers = breakers  # ctx.breaker(name): the daemon's breakers
        self._link = link
        self._runtime_dir = runtime_dir  # where the daemon's events.sock is (subscriptions)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._reqs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    # -- memory (requests answered by the daemon) -----------------------------------------

    async def memory_get(self, run_id: str, key: str) -> Any:
        return await self._memory(lambda req: wire.MemoryGet(req=req, run_id=run_id, key=key))

    async def memory_save(self, run_id: str, key: str, value: Any) -> None:
        data = to_builtins(value)
        await self._memory(lambda req: wire.MemorySave(req=req, run_id=run_id, key=key, value=data))

    async def _memory(self, make: Callable[[int], wire.WorkerMessage]) -> Any:
        reply = await self._ask("memory", make, MEMORY_TIMEOUT, "a memory request")
        if reply.error:
            raise MemoryRequestError(reply.error, retryable=False)
        return reply.value

    # -- the broker (requests answered after the daemon's commit) -----------------------------

    async def broker(self, caller: StepRef, op: BrokerRequest, wait: float) -> Any:
        """Send one broker request for a step and return its result; raises the daemon's error as its TagentError."""
        reply = await self._ask("broker", lambda req: wire.BrokerCall(req=req, caller=caller, op=op),
                                wait + BROKER_TIMEOUT, f"a {type(op).__name__} request")
        if reply.code:
            raise error_from_wire(reply.code, reply.message or reply.code)
        return reply.result

    async def subscribe(self, prefixes: list[str]) -> AsyncSubscription:
        """A subscription on the daemon's events.sock, as a client has it (confirmed before this returns)."""
        if self._runtime_dir is None:
            raise TagentError("a step in a worker joined over the CURVE link (tcp) cannot subscribe to events: they come "
                              "from the daemon's events.sock, which that link does not carry (docs/scale-out.md)")
        subscription = AsyncSubscription(self._runtime_dir, prefixes)
        await subscription.open()
        return subscription

    # -- dependency waits (parked by the daemon until the dependency ends, or `wait` passes) -------

    async def dependency(self, caller: StepRef, name: str, wait: float) -> DependencyState:
        """Ask the daemon for dependency `name`'s state once it has ended, or after `wait` seconds."""
        reply = await self._ask("dependency", lambda req: wire.DependencyWait(req=req, caller=caller, name=name, wait=wait),
                                wait + BROKER_TIMEOUT, f"step {caller.step!r}'s wait for {name!r}")
        if reply.code:
            raise error_from_wire(reply.code, reply.message or reply.code)
        return DependencyState(reply.status or "", reply.output)

    # -- one request, one reply -------------------------------------------------------------------

    async def _ask(self, kind: str, make: Callable[[int], wire.WorkerMessage], timeout: float, what: str) -> Any:
        """Send the request `make(req)` (re-sent until the daemon acknowledges it) and return its reply; a reply
        that does not come within `timeout` s is a retryable MemoryRequestError. Callable from a sync step's
        thread: the request is handed to the worker's loop."""
        if threading.get_ident() != self._loop_thread:  # a sync step running its own loop in a thread
            future = asyncio.run_coroutine_threadsafe(self._ask(kind, make, timeout, what), self._loop)
            return await asyncio.wrap_future(future)
        req = next(self._reqs)
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[req] = waiter
        try:
            self._link.send_until_acked((kind, req), make(req))
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            raise MemoryRequestError(f"the daemon did not answer {what} in {timeout:g}s", retryable=True) from None
        finally:
            self._waiting.pop(req, None)
            self._link.acked((kind, req))

    def resolve(self, reply: wire.MemoryReply | wire.BrokerReply | wire.DependencyReply) -> None:
        """Hand a MemoryReply, BrokerReply or DependencyReply to the step waiting for it (late or repeated replies are ignored)."""
        waiter = self._waiting.get(reply.req)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    # -- best effort ------------------------------------------------------------------------

    def log(self, run_id: str, step: str, level: int, message: str) -> None:
        self._post(wire.LogLine(run_id=run_id, step=step, level=level, message=message[:MAX_LOG_CHARS], ts=time.time()))

    def progress(self, run_id: str, step: str, fraction: float | None, message: str | None) -> None:
        self._post(wire.ProgressNote(run_id=run_id, step=step, fraction=fraction, message=message))

    def _post(self, message: wire.WorkerMessage) -> None:
        if threading.get_ident() == self._loop_thread:
            self._link.send(message)
            return
        try:
            self._loop.call_soon_threadsafe(self._link.send, message)
        except RuntimeError:  # the loop is closed: the worker is exiting
            pass
