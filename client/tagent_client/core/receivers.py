"""`Receivers`: steps parked on a mailbox until a message can be leased to them.

Shared by the in-process broker and the daemon's, so both deliver the same way:
the oldest parked receiver gets the next leasable message; a receiver whose
wait ran out gets nothing (or keeps a message that was delivered just as it ran
out — never dropped); an attempt that ended is woken with nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .broker import Holder

Lease = Callable[[str, Holder], Any]


class Receivers:
    """Parked `receive` calls per mailbox, oldest first; `lease(mailbox, holder)` hands out a message or None."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._waiting: dict[str, deque[tuple[Holder, asyncio.Future[Any]]]] = {}

    async def receive(self, mailbox: str, holder: Holder, wait: float) -> Any:
        """A message leased to `holder` now, or within `wait` seconds; None when none came."""
        message = self._lease(mailbox, holder)
        if message is not None or wait <= 0:
            return message
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(mailbox, deque()).append((holder, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            if future.done() and not future.cancelled():  # delivered just as the wait ran out: keep it
                return future.result()
            future.cancel()
            return None

    def deliver(self, mailbox: str) -> None:
        """Lease waiting messages to parked receivers of `mailbox`, oldest receiver first."""
        waiting = self._waiting.get(mailbox)
        while waiting:
            holder, future = waiting[0]
            if future.done():
                waiting.popleft()
                continue
            message = self._lease(mailbox, holder)
            if message is None:
                return
            waiting.popleft()
            future.set_result(message)
        if waiting is not None and not waiting:
            del self._waiting[mailbox]

    def deliver_all(self) -> None:
        for mailbox in list(self._waiting):
            self.deliver(mailbox)

    def wake(self, holder: Holder) -> None:
        """The attempt `holder` ended: its parked receives return None."""
        for _, future in self._parked(holder):
            future.set_result(None)

    def _parked(self, holder: Holder) -> Iterator[tuple[Holder, asyncio.Future[Any]]]:
        for queue in self._waiting.values():
            for entry in queue:
                if entry[0] == holder and not entry[1].done():
                    yield entry
