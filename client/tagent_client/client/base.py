"""`Client` and `AsyncClient`: drive a running tagentd over its control socket.

Both speak protocol.py over one DEALER socket (never REQ: a REQ socket wedges
for good after one lost reply). What a caller can rely on:

- Connecting checks that the control socket file exists and pings the daemon
  (~2 s), so "no daemon" is a prompt `DaemonUnavailable`, not a long timeout
  (a ZeroMQ connect to a missing ipc path "succeeds" silently). The ping's
  answer tells the client the daemon's limits (`limits`).
- A request that breaks a bound (size, name length, nesting: bounds.py) fails
  at once, before it is sent: `RequestTooLarge`, `NameTooLong`, `InvalidRequest`.
- Every request has a timeout (`RequestTimeout`); a reply that arrives after
  its request gave up is recognised by its id and dropped (`stale_replies`).
  A submit waits the daemon's `load_timeout` on top: as long as its import may take.
- `send` (one message id) and `submit` (one idempotency key) choose their id
  once per call; one that gets no answer in time is sent again as the very
  same frame (`resends` times, counted in `resent`), and the daemon stores the
  message or starts the run at most once.
- An `ErrorReply` is raised as the matching `TagentError` subclass.

A `Client` serialises its calls (one thread at a time on the socket); an
`AsyncClient` lets many tasks of one event loop call at once, routing each
reply to its request by id, with at most `window` requests in flight (the
rest wait for a slot; a request's timeout starts when it is sent).
One ZeroMQ context per process is shared by all.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..wire import paths, protocol
from . import calls
from .calls import Call, RunHandle

__all__ = ["DEFAULT_TIMEOUT", "FOLLOW_WAIT", "PING_TIMEOUT", "RESENDS", "ClientBase"]

DEFAULT_TIMEOUT = 10.0
PING_TIMEOUT = 2.0
FOLLOW_WAIT = 5.0
RESENDS = 1    # times an idempotent request (send, submit) is sent again after getting no answer in time


class ClientBase:
    """What `Client` and `AsyncClient` share: settings, the daemon's limits, counters, request ids."""

    def __init__(self, runtime_dir: str | os.PathLike[str] | None, timeout: float, resends: int) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else paths.runtime_dir()
        self.timeout = timeout
        self.resends = resends
        self.limits = protocol.Limits()
        self.stale_replies = 0
        self.resent = 0
        self._ids = itertools.count(1)

    def _limit(self, call: Call[Any], timeout: float | None) -> float:
        return (self.timeout if timeout is None else timeout) + call.extra_timeout

    def _sends(self, call: Call[Any]) -> int:
        return 1 + (max(0, self.resends) if call.resend else 0)

    def _submit(self, path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None, target: str | None,
                model: str | None, run: bool, idempotency_key: str | None) -> Call[RunHandle]:
        return calls.submit(path_or_spec, params, target, model, run, idempotency_key, self.limits.load_timeout)
