"""The loop-level ports: the small interfaces the daemon's parts are given instead of the daemon.

Each part (the broker, the folder watcher, the control handlers, the worker-message table, the
run driver) is handed exactly the ports it uses when tagentd/app/daemon.py wires it, the way the
executor is handed `send=`, `on_result=` and `on_lost=`. No part imports tagentd.app: the port types live
here, in the lowest layer, so that every layer can name them (the ones about runs, which name
`Run`, are in tagentd/runs/ports.py). tagentd/app/commit.py's `GroupCommit` provides the commit
ports; the daemon provides `Spawn`.

- `MarkDirty`: something changed that the next group commit must write;
- `Committed`: wait until everything changed so far is on disk;
- `ReplyAfterCommit`: send frames on a channel once everything changed so far is on disk;
- `Spawn`: run a coroutine as a task the daemon keeps (cancelled at shutdown; a failure is logged);
- `Publish`: an event that belongs to no run, on the event bus after the next commit;
- `CommitParticipant`: a part with state of its own in the group commit (the run store, the broker
  store, the watcher's seen-file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from tagentd.plumbing.channel import Channel

MarkDirty = Callable[[], None]
Committed = Callable[[], Awaitable[None]]
ReplyAfterCommit = Callable[[Channel, list[bytes]], None]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
Publish = Callable[[str, dict[str, Any]], None]

Token = TypeVar("Token")


class CommitParticipant(Protocol[Token]):
    """One part's side of a group commit: `prepare`, then `flush`, then `committed` or `failed`.

    `prepare()` is called for every participant in turn, in the order they joined, all in one loop
    turn: it takes what waits for this commit and returns it as a token. Then every `flush(token)`
    (an awaitable that writes it, or None when there is nothing to write) runs, together. If all
    succeed, `committed(token)` is called on every participant, in order: what was taken is on disk
    and may be announced. If one fails, `failed(token)` is called on every participant: each puts
    what it took back in front of what came since, to be taken by the next commit.
    """

    def prepare(self) -> Token: ...

    def flush(self, token: Token) -> Awaitable[None] | None: ...

    def committed(self, token: Token) -> None: ...

    def failed(self, token: Token) -> None: ...
