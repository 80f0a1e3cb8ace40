"""`WorkerCredentials`: what a worker on another machine needs to join a daemon over its CURVE link.

The daemon issues them (tagentd.executor.curve.CurveGate.issue) and hands them to the worker: in memory to
an in-process worker (a Ray actor), or in the CURVE_ENV environment variable to a worker process, which
removes it from its environment at start (like the token), so step code and its subprocesses never see it.

Guarantees:
- a worker that has them connects a DEALER with ZeroMQ CURVE to `endpoint`: every frame is encrypted and
  authenticated both ways; it talks only to the holder of `server_key`'s secret (this daemon's start), and
  the daemon admits it only while its `public_key` is issued and not revoked;
- the secret key is never written to disk by tagentd and never appears in a command line (`repr` hides it).
"""

from __future__ import annotations

import os

import msgspec
import zmq

#: The environment variable that carries a worker process's credentials (JSON); the worker removes it.
CURVE_ENV = "TAGENTD_WORKER_CURVE"


class WorkerCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """One issued client identity for the daemon's CURVE worker endpoint; keys are Z85 text (40 characters)."""

    name: str  # what the daemon calls this credential: the User-Id of its connections, and what `revoke` takes
    endpoint: str  # the daemon's CURVE ROUTER, e.g. tcp://10.0.0.5:7001
    server_key: str  # the daemon's public key for this start: the worker accepts no other server
    public_key: str  # the worker's public key, as issued
    secret_key: str  # the worker's secret key: keep it in memory or a 0600 file only
    token: str  # the daemon's worker token (its socket identities and Hello carry it, as on ipc)

    def __repr__(self) -> str:
        return f"WorkerCredentials(name={self.name!r}, endpoint={self.endpoint!r}, public_key={self.public_key!r})"

    __str__ = __repr__

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` (before it connects) a CURVE client of the daemon with these keys."""
        sock.curve_serverkey = self.server_key.encode()
        sock.curve_publickey = self.public_key.encode()
        sock.curve_secretkey = self.secret_key.encode()

    def to_env(self) -> str:
        """The value of CURVE_ENV for a worker process."""
        return msgspec.json.encode(self).decode()

    @classmethod
    def pop_env(cls) -> WorkerCredentials | None:
        """Take the credentials out of this process's environment (None when there are none).

        Raises ValueError with a one-line reason when the variable is set but is not valid credentials.
        """
        text = os.environ.pop(CURVE_ENV, None)
        if not text:
            return None
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"${CURVE_ENV} does not hold worker credentials: {exc}") from None
