"""`LockQueue`: lock requests parked until their key is free, and the ttl timers of the leases granted.

Shared by the in-process broker and the daemon's (like `receivers.py` for messages),
on the pure lease rules of `locks.py`. Guarantees:

- requests for one key are served first come, first served: a released lease is
  handed to the oldest parked request at once, so a newcomer never overtakes;
- a request whose wait runs out gets nothing (or keeps a lease granted just as it
  ran out — never leaked); one whose caller is cancelled gives back what it got;
- a lease ends when its holder releases it, when its ttl passes without a renewal
  (a timer, not a poll), or when its attempt or run ends (`settle`, `settle_run`);
  the attempt's parked requests are then answered with nothing.

Only the event loop's thread may call it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .broker_records import Lease
from .locks import Holder

if TYPE_CHECKING:
    from .broker import BrokerCore

Slot = tuple[str, str]  # (space, key)


class _Request:
    __slots__ = ("future", "holder", "ttl", "who")

    def __init__(self, holder: Holder | None, who: str, ttl: float, future: asyncio.Future[Lease | None]) -> None:
        self.holder, self.who, self.ttl, self.future = holder, who, ttl, future


class LockQueue:
    """Parked lock requests per (space, key), oldest first, and one ttl timer per lease."""

    def __init__(self, core: BrokerCore, changed: Callable[[], None] = lambda: None) -> None:
        self._core = core
        self._changed = changed  # something was journalled outside a request (an expiry, a hand-over)
        self._waiting: dict[Slot, deque[_Request]] = {}
        self._timers: dict[Slot, asyncio.TimerHandle] = {}
        #: locks_granted, locks_waited (granted after waiting), locks_released, locks_expired, locks_timed_out
        self.stats: collections.Counter[str] = collections.Counter()

    async def acquire(self, space: str, key: str, holder: Holder | None, who: str, ttl: float, wait: float) -> Lease | None:
        """A lease on `key` now, or within `wait` seconds (after those parked before); None when none came."""
        slot = (space, key)
        if not self._parked(slot):
            lease = self._core.lock(space, key, holder, who, ttl, time.time())
            if lease is not None:
                self._arm(lease)
                self.stats["locks_granted"] += 1
                return lease
        if wait <= 0:
            self._core.note(space, who, "lock", key, 0, False, "held", time.time())
            return None
        future: asyncio.Future[Lease | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(slot, deque()).append(_Request(holder, who, ttl, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            if future.done() and not future.cancelled():  # granted just as the wait ran out: keep it
                return future.result()
            future.cancel()
            self.stats["locks_timed_out"] += 1
            self._core.note(space, who, "lock", key, 0, False, "timeout", time.time())
            return None
        except asyncio.CancelledError:
            granted = future.result() if future.done() and not future.cancelled() else None
            if granted is not None:
                self.release(space, key, granted.token, "request cancelled")
            future.cancel()
            raise

    def release(self, space: str, key: str, token: int, why: str = "released") -> Lease | None:
        """End lease `token` on `key` and hand the key to the oldest parked request; None if it was not held."""
        lease = self._core.unlock(space, key, token, why, time.time())
        if lease is not None:
            timer = self._timers.pop((space, key), None)
            if timer is not None:
                timer.cancel()
            self.stats["locks_expired" if why == "expired" else "locks_released"] += 1
            self._hand_over((space, key))
            self._changed()
        return lease

    def renew(self, space: str, key: str, token: int, ttl: float, who: str) -> Lease:
        """Give lease `token` `ttl` more seconds from now; LockLost if it is not held any more."""
        lease = self._core.renew(space, key, token, ttl, who, time.time())
        self._arm(lease)
        return lease

    @property
    def quiet(self) -> bool:
        """Whether no lock request is parked and no lease is held (then `settle` has nothing to do)."""
        return not self._waiting and not self._timers and not self._core.leases_held()

    def settle(self, holder: Holder, why: str) -> int:
        """The attempt `holder` ended: its parked requests get nothing and its leases end; returns how many ended."""
        self._wake(lambda h: h == holder)
        return self._end(self._core.leases_held(holder=holder), why)

    def settle_run(self, run_id: str, why: str) -> int:
        """Run `run_id` finished: its attempts' parked requests get nothing, whatever they still hold ends."""
        self._wake(lambda h: h is not None and h[0] == run_id)
        return self._end(self._core.leases_held(run_id=run_id), why)

    def release_all(self, why: str) -> int:
        """End every lease (at load: no attempt survives a restart of the daemon)."""
        return self._end(self._core.leases_held(), why)

    def waiting(self, space: str, key: str) -> int:
        """How many requests are parked for `key`."""
        return sum(not request.future.done() for request in self._waiting.get((space, key), ()))

    def _wake(self, match: Callable[[Holder | None], bool]) -> None:
        for queue in self._waiting.values():
            for request in queue:
                if match(request.holder) and not request.future.done():
                    request.future.set_result(None)

    def _end(self, leases: list[Lease], why: str) -> int:
        for lease in leases:
            self.release(lease.space, lease.key, lease.token, why)
        return len(leases)

    def _parked(self, slot: Slot) -> bool:
        queue = self._waiting.get(slot)
        while queue and queue[0].future.done():
            queue.popleft()
        if queue is not None and not queue:
            del self._waiting[slot]
            return False
        return bool(queue)

    def _hand_over(self, slot: Slot) -> None:
        while self._parked(slot):
            request = self._waiting[slot].popleft()
            lease = self._core.lock(slot[0], slot[1], request.holder, request.who, request.ttl, time.time())
            if lease is None:  # cannot happen while the key was just freed; keep the request first in line
                self._waiting[slot].appendleft(request)
                return
            self._arm(lease)
            self.stats["locks_granted"] += 1
            self.stats["locks_waited"] += 1
            request.future.set_result(lease)
            return

    def _arm(self, lease: Lease) -> None:
        slot = (lease.space, lease.key)
        timer = self._timers.pop(slot, None)
        if timer is not None:
            timer.cancel()
        self._timers[slot] = asyncio.get_running_loop().call_later(lease.ttl, self._expire, slot, lease.token)

    def _expire(self, slot: Slot, token: int) -> None:
        self.release(slot[0], slot[1], token, "expired")
