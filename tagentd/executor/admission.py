"""`Admission`: which peers on workers.sock are this daemon's own workers.

Each daemon makes a random token at start and gives it only to the workers it starts (wire.TOKEN_ENV). It is
part of a worker's socket identity (`w<id>.<token>`, so a worker left over from another daemon can never take
a new worker's identity) and of its Hello. A peer whose identity lacks the token is a stranger: nothing it says
is used, and it is sent `Refused`, on which it exits with EXIT_REFUSED.
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
from collections.abc import Callable

from tagentd.worker import wire

log = logging.getLogger("tagentd.pool")

#: How many of its workers' identities the daemon remembers parsed (workers are numbered on: a daemon that
#: replaces workers for long parses the newer ones' identities on each message, as it did before).
MAX_KNOWN = 4096


class Admission:
    """The daemon's token, and the checks and refusals that use it."""

    def __init__(self, send: Callable[[bytes, bytes], bool], stats: collections.Counter[str]) -> None:
        self.token = secrets.token_hex(8)
        self._send = send
        self._stats = stats
        self._logged: collections.deque[bytes] = collections.deque(maxlen=32)  # refused identities already logged
        self._ids: dict[bytes, int] = {}  # identities of this daemon's workers seen so far -> their numbers

    def worker_id(self, identity: bytes) -> int | None:
        """The worker number in one of this daemon's workers' identities; None for any other identity."""
        known = self._ids.get(identity)
        if known is not None:  # every message of a worker asks: its identity is parsed once
            return known
        number, _, token = identity.partition(b".")
        if token != self.token.encode() or not number.startswith(b"w"):
            return None
        try:
            wid = int(number[1:])
        except ValueError:
            return None
        if len(self._ids) < MAX_KNOWN:
            self._ids[identity] = wid
        return wid

    def is_stranger(self, identity: bytes) -> bool:
        """True for a peer this daemon did not start (its identity lacks the daemon's token)."""
        return self.worker_id(identity) is None

    def hello_matches(self, hello: wire.Hello, worker_id: int, pid: int) -> bool:
        """Whether a Hello is that of the worker this daemon started as `worker_id`, process `pid`."""
        return hmac.compare_digest(hello.token, self.token) and hello.worker_id == worker_id and hello.pid == pid

    def refuse(self, identity: bytes, why: str) -> None:
        """Tell a peer that is not (or no longer) one of this daemon's workers to exit."""
        self._stats["workers_refused"] += 1
        if identity not in self._logged:
            self._logged.append(identity)
            log.warning("refused a worker this daemon did not start (socket identity %r): %s", identity[:24], why)
        self._send(identity, wire.encode(wire.Refused(reason=why)))
