"""`Receivers`: steps parked on a mailbox until a message can be leased to them.

Shared by the in-process broker and the daemon's, so both deliver the same way:
the oldest parked receiver gets the next leasable message; a receiver whose
wait ran out gets nothing; an attempt that ended is woken with nothing.

A parked receive is a callback, not a task: `park` calls `deliver(message)`
synchronously, in the same call as the `send` (or release, or requeue) that
made the message leasable, so the daemon can put the receiver's reply in the
same group commit as the sender's. A delivered message is never dropped: the
wait's timer is cancelled in the same call that leases it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from .broker import Holder

Lease = Callable[[str, Holder], Any]
Deliver = Callable[[Any], None]


class _Parked:
    """One parked receive: who waits, whom to tell, and the timer that ends its wait."""

    __slots__ = ("holder", "deliver", "timer", "done")

    def __init__(self, holder: Holder, deliver: Deliver) -> None:
        self.holder = holder
        self.deliver = deliver
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def end(self, message: Any) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.deliver(message)


class Receivers:
    """Parked `receive` calls per mailbox, oldest first; `lease(mailbox, holder)` hands out a message or None."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._waiting: dict[str, deque[_Parked]] = {}

    def park(self, mailbox: str, holder: Holder, wait: float, deliver: Deliver) -> Callable[[], None]:
        """Call `deliver(message)` once: with a message leased to `holder` now or within `wait` seconds, else None.

        Returns a function that withdraws the receive (it then never delivers; nothing is leased to it).
        """
        message = self._lease(mailbox, holder)
        if message is not None or wait <= 0:
            deliver(message)
            return _nothing
        parked = _Parked(holder, deliver)
        parked.timer = asyncio.get_running_loop().call_later(wait, parked.end, None)
        self._waiting.setdefault(mailbox, deque()).append(parked)

        def withdraw() -> None:
            parked.done = True
            if parked.timer is not None:
                parked.timer.cancel()
        return withdraw

    async def receive(self, mailbox: str, holder: Holder, wait: float) -> Any:
        """A message leased to `holder` now, or within `wait` seconds; None when none came."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def give(message: Any) -> None:
            if not future.done():  # cancelled just now: a message leased to it is released when its attempt ends
                future.set_result(message)

        withdraw = self.park(mailbox, holder, wait, give)
        try:
            return await future
        finally:
            withdraw()  # cancelled while parked: nothing is leased to it from now on

    def deliver(self, mailbox: str) -> None:
        """Lease waiting messages to parked receivers of `mailbox`, oldest receiver first."""
        waiting = self._waiting.get(mailbox)
        while waiting:
            parked = waiting[0]
            if parked.done:
                waiting.popleft()
                continue
            message = self._lease(mailbox, parked.holder)
            if message is None:
                return
            waiting.popleft()
            parked.end(message)
        if waiting is not None and not waiting:
            del self._waiting[mailbox]

    def deliver_all(self) -> None:
        for mailbox in list(self._waiting):
            self.deliver(mailbox)

    @property
    def parked(self) -> bool:
        """Whether any receive may still be parked (False: `wake` and `deliver` have nothing to do)."""
        return bool(self._waiting)

    def wake(self, holder: Holder) -> None:
        """The attempt `holder` ended: its parked receives return None."""
        for queue in self._waiting.values():
            for parked in queue:
                if parked.holder == holder:
                    parked.end(None)


def _nothing() -> None:
    return None
