"""`PermitDesk`: the daemon's side of model-request permits, between workers.sock and `limits.Limits`.

A worker sends `PermitRequest` before each model request to a limited endpoint
(re-sent until granted) and `PermitRelease` after it; the desk answers with
`PermitGrant` as soon as the endpoint's limits allow. Permits are never lost:
a heartbeat lists the permits its worker still asks for or holds, and any other
that worker had is given back; a worker that is gone gives back everything.
Grants that time alone makes possible (a rate bucket refilled, a Retry-After
pause over) are sent from a loop timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from tagent_client.run.llm import EndpointSettings
from tagentd.executor.limits import EndpointLimits, Limits, PermitKey
from tagentd.worker import wire

SWEEP_EVERY = 0.5


class PermitDesk:
    """Hands out permits for every limited endpoint; runs on the daemon's loop."""

    def __init__(self, endpoints: Mapping[str, EndpointSettings], send: Callable[[bytes, bytes], bool]) -> None:
        self.limits = Limits({
            name: EndpointLimits(e.max_concurrent, e.requests_per_minute, e.tokens_per_minute)
            for name, e in endpoints.items() if e.limited
        }, time.monotonic())
        self.send = send
        self.granted = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def on_request(self, identity: bytes, msg: wire.PermitRequest) -> None:
        self._grant(self.limits.request((identity, msg.req), msg.endpoint, msg.tokens, time.monotonic()))

    def on_release(self, identity: bytes, msg: wire.PermitRelease) -> None:
        self._grant(self.limits.release((identity, msg.req), time.monotonic(), msg.tokens, msg.retry_after))

    def on_heartbeat(self, identity: bytes, outstanding: list[int]) -> None:
        self._grant(self.limits.keep_only(identity, set(outstanding), time.monotonic()))

    def sweep(self, alive: set[bytes]) -> None:
        """Give back the permits of workers that are gone."""
        self._grant(self.limits.drop_workers(alive, time.monotonic()))

    async def supervise(self, alive: Callable[[], set[bytes]]) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self.sweep(alive())

    def stats(self) -> dict[str, dict[str, float]]:
        return self.limits.stats(time.monotonic())

    def _grant(self, keys: list[PermitKey]) -> None:
        for identity, req in keys:
            self.granted += 1
            self.send(identity, wire.encode(wire.PermitGrant(req=req)))
        self._arm()

    def _arm(self) -> None:
        now = time.monotonic()
        at = self.limits.wake_at(now)
        if at is None or (self._timer_at is not None and self._timer_at <= at and self._timer_at > now):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - now) + 0.001, self._wake)

    def _wake(self) -> None:
        self._timer, self._timer_at = None, None
        self._grant(self.limits.poll(time.monotonic()))
