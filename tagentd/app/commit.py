"""`GroupCommit`: everything changed in one loop turn is flushed once, and only then announced.

The participants (tagentd/plumbing/ports.py's `CommitParticipant`) are, in the order they join:
the run driver (the run store: events numbered and entered in the run history before the flush,
announced after it), the broker (its store: trigger starts, acks and events published after the
flush), the folder watcher's seen-file (a file version is remembered as started only once its run
is on disk), and last the commit's own outbox: the replies parked by `reply_after_commit` and the
waiters of `committed()`.

Guarantees:
- one commit at a time from the committer; a commit prepares every participant in one loop turn,
  then runs their flushes together (`asyncio.gather`, or a plain await when only one has
  anything to write), so a step reported COMPLETED is on disk (with a durable store) before any
  reply, event or waiter says so;
- when a flush fails nothing is announced: every participant puts back what it took (in front of
  what came since), `StoreHealth` is told (it logs the outage once and refuses requests that need
  a commit), and the commit is retried after RETRY_S;
- replies leave, events are published and waiters are released only after every flush succeeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tagentd.plumbing.channel import Channel
from tagentd.plumbing.ports import CommitParticipant
from tagentd.storage.health import RETRY_S, StoreHealth

Parked = tuple[list[tuple[Channel, list[bytes]]], list["asyncio.Future[None]"]]


class GroupCommit:
    """The daemon's commit loop and the ports it gives the parts: `mark_dirty`, `reply_after_commit`, `committed`."""

    def __init__(self, health: StoreHealth, retry_s: float = RETRY_S,
                 on_commit: Callable[[float], None] | None = None) -> None:
        self.health = health
        self.retry_s = retry_s
        #: Told the seconds each successful commit took, from prepare to the end of the flushes (metrics).
        self.on_commit = on_commit
        self.participants: list[CommitParticipant[Any]] = []
        self._dirty = asyncio.Event()
        self._outbox = _Outbox()

    def join(self, *participants: CommitParticipant[Any]) -> None:
        """Take part in every commit from now on, after the ones that joined before (and before the outbox)."""
        self.participants.extend(participants)

    # -- ports -----------------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        """Something changed: the committer runs a commit as soon as the loop is free."""
        self._dirty.set()

    def reply_after_commit(self, channel: Channel, frames: list[bytes]) -> None:
        """Send `frames` on `channel` once everything changed so far is on disk."""
        self._outbox.replies.append((channel, frames))
        self._dirty.set()

    async def committed(self) -> None:
        """Return once everything changed so far is on disk (the next commit has flushed it)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.waiters.append(waiter)
        self._dirty.set()
        await waiter

    # -- the commit ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The committer: one commit after each loop turn that changed something."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.commit()

    async def commit(self) -> None:
        """Prepare every participant, flush them together, then announce (or, on a failure, put back and retry)."""
        started = time.perf_counter()
        prepared = [(participant, participant.prepare()) for participant in (*self.participants, self._outbox)]
        flushes = [flush for participant, token in prepared if (flush := participant.flush(token)) is not None]
        try:
            await (flushes[0] if len(flushes) == 1 else _together(flushes))
        except Exception as exc:  # noqa: BLE001 - a failing disk must not kill the loop; nothing is announced
            self.health.commit_failed(exc)  # logged once per outage; requests that need a commit are refused
            for participant, token in prepared:
                participant.failed(token)
            await asyncio.sleep(self.retry_s)
            self._dirty.set()
            return
        self.health.commit_succeeded()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)
        for participant, token in prepared:
            participant.committed(token)


async def _together(flushes: list[Awaitable[None]]) -> None:
    if flushes:
        await asyncio.gather(*flushes)


class _Outbox:
    """The last participant: replies and `committed()` waiters, released once everything before them is on disk."""

    def __init__(self) -> None:
        self.replies: list[tuple[Channel, list[bytes]]] = []
        self.waiters: list[asyncio.Future[None]] = []

    def prepare(self) -> Parked:
        taken = (self.replies, self.waiters)
        self.replies, self.waiters = [], []
        return taken

    def flush(self, token: Parked) -> None:
        return None  # nothing of its own to write

    def committed(self, token: Parked) -> None:
        replies, waiters = token
        for channel, frames in replies:
            if not channel.send_now(frames):  # in this turn, not the next: the commit is what they waited for
                channel.send(frames)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def failed(self, token: Parked) -> None:
        replies, waiters = token
        self.replies[:0], self.waiters[:0] = replies, waiters
