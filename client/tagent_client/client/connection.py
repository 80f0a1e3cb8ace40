"""The client's side of control.sock: connecting, framing a request, and the errors of a request that fails.

Shared by `Client` and `AsyncClient`. A request is checked here before it
leaves (names, nesting, size: bounds.py), so bad input fails at once instead
of waiting out a timeout; one ZeroMQ context per process is shared by all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import zmq

from .. import bounds
from ..errors import DaemonUnavailable, ProtocolError, RequestTimeout
from ..wire import paths, protocol
from .calls import kind

S = TypeVar("S", bound=zmq.Socket)
if TYPE_CHECKING:  # zmq.asyncio loads only where used: `tagent runs` starts faster
    import zmq.asyncio


def dealer(context: zmq.Context[S], runtime_dir: Path) -> S:
    """A DEALER connected to the control socket, which must exist in a runtime dir private to us."""
    control = runtime_dir / paths.CONTROL_SOCKET
    if not control.exists():
        raise DaemonUnavailable(f"no tagentd running: {control} does not exist; start one with 'tagentd start'")
    paths.check_private_dir(runtime_dir, "runtime dir")
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(paths.endpoint(runtime_dir, paths.CONTROL_SOCKET))
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise DaemonUnavailable(f"cannot connect to {control}: {exc}; start tagentd with 'tagentd start'") from None
    return socket


def frame(request: Any, request_id: int, limits: protocol.Limits) -> bytes:
    """The request stamped with its id and our pid/uid, encoded.

    Raises NameTooLong, InvalidRequest or RequestTooLarge (nothing is sent) if it breaks one of the daemon's bounds.
    """
    request.id = request_id
    request.pid, request.uid = os.getpid(), os.getuid()
    bounds.check_request(request)
    encoded = protocol.encode(request)
    if len(encoded) > limits.max_message_bytes:
        raise bounds.too_large(kind(request), len(encoded), limits.max_message_bytes)
    return encoded


def limits_of(ping_result: Any) -> protocol.Limits:
    """The daemon's limits from its ping's result (an older daemon sends none: the defaults)."""
    found = ping_result.get("limits") if isinstance(ping_result, dict) else None
    try:
        return msgspec.convert(found, protocol.Limits) if found is not None else protocol.Limits()
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"tagentd sent limits this client cannot read: {exc}") from None


def no_answer(runtime_dir: Path, timeout: float) -> DaemonUnavailable:
    control = runtime_dir / paths.CONTROL_SOCKET
    return DaemonUnavailable(f"no tagentd answers on {control} (no reply to ping within {timeout:g}s); "
                             "start one with 'tagentd start'")


def timed_out(request: Any, limit: float, runtime_dir: Path, sends: int) -> RequestTimeout:
    """RequestTimeout for `request`; for an idempotent one, how to retry it without doing it twice."""
    what = kind(request)
    tries = f" (sent {sends} times)" if sends > 1 else ""
    message = f"tagentd ({runtime_dir}) did not answer the '{what}' request within {limit:g}s{tries}"
    details: dict[str, Any] = {"request": what}
    message_id, key = getattr(request, "message_id", None), getattr(request, "idempotency_key", None)
    if message_id is not None:
        details["message_id"] = message_id
        message += f"; the message may be stored: send it again with id={message_id!r}, which stores it once at most"
    elif key is not None:
        details["idempotency_key"] = key
        message += (f"; the run may have started: submit again with idempotency_key={key!r} (tagent submit "
                    f"--idempotency-key {key}) to get its id without starting a second run")
    return RequestTimeout(f"{message}; tagentd may be busy or stuck: check its log", **details)


_shared: tuple[zmq.Context, zmq.asyncio.Context] | None = None


def async_context() -> zmq.asyncio.Context:
    """An asyncio view (shadow) of the process's one `zmq.Context.instance()`."""
    import zmq.asyncio
    global _shared
    sync_ctx: zmq.Context = zmq.Context.instance()
    if _shared is None or _shared[0] is not sync_ctx:
        _shared = (sync_ctx, zmq.asyncio.Context.shadow(sync_ctx.underlying))
    return _shared[1]
