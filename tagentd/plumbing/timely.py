"""An asyncio event loop whose timers fire on time, not up to a millisecond (or two) late.

asyncio's default loop on Linux waits in `epoll_wait`, whose timeout is in whole milliseconds, and Python
rounds the wait *up* (selectors.EpollSelector), and up again when the rounded value is not exact in binary
(13 ms becomes 0.013000000000000001 s, waited as 14 ms): a timer due in 10.1 ms fires after 11 ms, so every
`asyncio.sleep`, `asyncio.timeout` and `call_later` of an idle loop ends 0-2 ms late (~0.5 ms on average).
A worker runs steps' own timers on its loop (a step that waits 0.5 s), so that lateness is added to the
step's time, and to its run's.

`TimelySelector` waits the whole milliseconds in `epoll_wait` (rounded *down*), and the last fraction of a
millisecond in `select()` on the epoll descriptor itself, whose timeout is in microseconds; so a timer fires
within the kernel's timer slack (~50 µs) of its deadline. That costs one more system call only for the
final sub-millisecond wait before a timer, never while the loop has callbacks ready or waits without a
timer. Readiness is reported exactly as the epoll selector reports it.
"""

from __future__ import annotations

import asyncio
import select
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_SELECT_LIMIT = 1024  # FD_SETSIZE: select() takes no higher descriptor (the loop's is made early, so it is low)

if hasattr(selectors, "EpollSelector"):

    class TimelySelector(selectors.EpollSelector):
        """An epoll selector that waits no longer than asked (to the microsecond), rather than up to 1-2 ms more."""

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None:
                wait = -1.0
            elif timeout <= 0:
                wait = 0.0
            elif (whole_ms := int(timeout * 1e3)) > 0:  # whole milliseconds in epoll_wait; the loop asks again
                wait = (whole_ms - 0.5) / 1e3  # for the rest. epoll rounds its argument up: exactly whole_ms
            elif self._selector.fileno() >= _SELECT_LIMIT:  # select() cannot watch it: 1 ms, as asyncio would
                wait = 0.0005
            else:  # under a millisecond: select() on the epoll fd (readable when events wait), in microseconds
                readable, _, _ = select.select([self._selector.fileno()], [], [], timeout)
                if not readable:
                    return []
                wait = 0.0
            try:
                fd_events = self._selector.poll(wait, max(len(self._fd_to_key), 1))
            except InterruptedError:
                return []
            ready = []
            for fd, event in fd_events:  # as selectors.EpollSelector maps them
                events = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | \
                         (selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)
                key = self._key_from_fd(fd)
                if key:
                    ready.append((key, events & key.events))
            return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose timers fire on time (with epoll: `TimelySelector`; elsewhere asyncio's default)."""
    if not hasattr(selectors, "EpollSelector"):
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(TimelySelector())


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a loop from `new_event_loop()`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
