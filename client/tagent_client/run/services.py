"""What a step's context needs from whoever runs it (`RunServices`), and the in-process one (`LocalServices`).

The daemon's worker has its own `RunServices` (memory, log, broker calls and dependency waits go
to the daemon); `LocalServices` keeps everything in this process, for `run_pipeline`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..communication.ports import EventSource
from ..errors import TagentError
from ..wire.protocol_broker import BrokerRequest, StepRef
from .breakers import BreakerGate, LocalBreakers
from .broker_local import LocalBroker
from .dependency import DependencyState, LocalDependencies


class RunServices(Protocol):
    """What a step's context needs from whoever runs it (in-process runner or daemon worker)."""

    #: The circuit breakers behind `ctx.breaker(name)`: the daemon's (shared by all workers), or this process's.
    breakers: BreakerGate

    async def memory_get(self, run_id: str, key: str) -> Any: ...

    async def memory_save(self, run_id: str, key: str, value: Any) -> None: ...

    def log(self, run_id: str, step: str, level: int, message: str) -> None: ...

    def progress(self, run_id: str, step: str, fraction: float | None, message: str | None) -> None: ...

    async def broker(self, caller: StepRef, op: BrokerRequest, wait: float) -> Any:
        """Carry out a broker request for a step (`wait`: how long the request may be parked)."""

    async def subscribe(self, prefixes: list[str]) -> EventSource:
        """Events whose topic starts with one of `prefixes`, from when this returns on (best effort)."""

    async def dependency(self, caller: StepRef, name: str, wait: float) -> DependencyState:
        """The state of dependency `name` of the calling step once it has ended, or after at most `wait` seconds."""


class LocalServices:
    """In-process services: memory in a dict, log lines kept in a list, the broker in memory (`LocalBroker`),
    breakers in this process's registry."""

    def __init__(self, broker: LocalBroker | None = None, breakers: BreakerGate | None = None) -> None:
        self.breakers: BreakerGate = breakers or LocalBreakers()
        self.memory: dict[str, dict[str, Any]] = {}
        self.lines: list[tuple[str, str, int, str]] = []
        self.bus = broker or LocalBroker.default()
        self.dependencies: LocalDependencies | None = None  # set by the runner of the run
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    async def broker(self, caller: StepRef, op: BrokerRequest, wait: float) -> Any:
        """The broker lives on the run's loop: a sync step's own loop (in a thread) hands its calls over."""
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.bus.call(caller, op), loop))
        return await self.bus.call(caller, op)

    async def subscribe(self, prefixes: list[str]) -> EventSource:
        return self.bus.subscribe(prefixes)

    async def dependency(self, caller: StepRef, name: str, wait: float) -> DependencyState:
        """Waits run on the run's loop, like the broker: a sync step's own loop hands its wait over."""
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.dependency(caller, name, wait), loop))
        if self.dependencies is None:
            raise TagentError(f"step {caller.step!r}: ctx.dependency() needs a running run (run_pipeline or the daemon)")
        return await self.dependencies.wait(caller, name, wait)

    async def memory_get(self, run_id: str, key: str) -> Any:
        return self.memory.get(run_id, {}).get(key)

    async def memory_save(self, run_id: str, key: str, value: Any) -> None:
        self.memory.setdefault(run_id, {})[key] = value

    def log(self, run_id: str, step: str, level: int, message: str) -> None:
        self.lines.append((run_id, step, level, message))

    def progress(self, run_id: str, step: str, fraction: float | None, message: str | None) -> None:
        return None
