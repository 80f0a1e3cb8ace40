"""`WorkerSockets`: the daemon's worker sockets seen as one channel — workers.sock, plus the CURVE tcp endpoint.

workers.sock is a `FrameListener` (framed.py: a Unix stream socket the loop drives itself); the CURVE endpoint a
ZeroMQ `Channel`.

Every part that answers workers (the executor, the worker-message table, broker calls, dependency waits, the
group commit's replies) sends `[identity, payload]` here as it would on a `Channel`. Guarantees:

- a message to a worker leaves on the socket that worker last spoke on: the tcp one for a worker that
  joined over the network, workers.sock otherwise (each socket can only reach its own peers);
- every message received on either socket reaches the one handler, in arrival order per socket;
- a message that came over tcp is handed on only while its connection's credential is still admitted
  (`admits(User-Id)`): once revoked, a connection's messages are dropped, counted
  (`worker_messages_revoked`) and logged once per credential.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tagentd.plumbing.channel import Channel, Frames
from tagentd.plumbing.framed import FrameListener

log = logging.getLogger("tagentd.channel")


class WorkerSockets:
    """The local listener, an optional remote (tcp) channel, and which identity is reached through which."""

    def __init__(self, local: Channel | FrameListener, stats: dict[str, int]) -> None:
        self.local = local
        self.remote: Channel | None = None
        self._admits: Callable[[str | None], bool] = lambda user_id: False
        self._stats = stats
        self._routes: dict[bytes, Channel | FrameListener] = {}  # identities that last spoke on the remote socket
        self._revoked_logged: set[str] = set()

    def add_remote(self, channel: Channel, admits: Callable[[str | None], bool]) -> None:
        """Also serve `channel` (made with `peers=True, peer_property="User-Id"`), keeping messages `admits` allows."""
        self.remote = channel
        self._admits = admits

    def start(self, handle: Callable[[list[Frames]], None]) -> None:
        """Call `handle(batch)` with each batch of messages received on any of the sockets."""

        def local(batch: list[Frames]) -> None:
            if self._routes:
                for frames in batch:
                    self._routes.pop(frames[0], None)
            handle(batch)

        def remote(batch: list[Frames]) -> None:
            kept = []
            for frames in batch:
                user_id = getattr(frames, "peer", None)
                if not self._admits(user_id):
                    self._dropped(user_id)
                    continue
                self._routes[frames[0]] = self.remote
                kept.append(frames)
            if kept:
                handle(kept)

        self.local.start(local)
        if self.remote is not None:
            self.remote.start(remote)

    def _channel(self, frames: Frames) -> Channel | FrameListener:
        return self._routes.get(frames[0], self.local)

    def send(self, frames: Frames) -> None:
        """Queue `[identity, payload]` on the socket that identity last spoke on."""
        self._channel(frames).send(frames)

    def send_now(self, frames: Frames) -> bool:
        """Send at once on the addressee's socket; False if it cannot take it (gone, or full)."""
        return self._channel(frames).send_now(frames)

    def _dropped(self, user_id: str | None) -> None:
        self._stats["worker_messages_revoked"] = self._stats.get("worker_messages_revoked", 0) + 1
        name = user_id or "?"
        if name not in self._revoked_logged and len(self._revoked_logged) < 1024:
            self._revoked_logged.add(name)
            log.warning("dropped a message from a worker connected with credential %r: it was revoked", name)

    def close(self) -> None:
        self.local.close()
        if self.remote is not None:
            self.remote.close()
