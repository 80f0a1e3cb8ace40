"""One request -> reply path for every socket: control.sock's requests and the steps' broker calls.

`Router.serve(handler, args, shape, deliver)` calls `handler(*args)` — a plain function, or a
coroutine function (then in a task the daemon keeps) — and hands `deliver` exactly one encoded
reply. A plain handler may return a `Parked` (tagentd/plumbing/longpoll.py): its reply is
delivered inside the call that resolves it (a parked receive, filled by a send). The reply is:

- what the handler returned, as `shape.ok(result)`;
- a TagentError it raised, as `shape.error(exc)`: its code (`not_found`, `invalid_request`, ...)
  and message reach the caller as they are;
- any other exception, as `shape.error` of a TagentError "internal error in <request>: <exc>"
  (code `error`), and its traceback goes to the log: a handler bug never kills the daemon and
  never leaves a request unanswered.

`deliver` decides when the reply leaves: after the next commit, so that what it reports is on
disk (`GroupCommit.reply_after_commit`), or at once (control.sock's ANSWERED_AT_ONCE).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol

from tagent_client.errors import TagentError
from tagentd.plumbing.longpoll import Parked
from tagentd.plumbing.ports import Spawn

log = logging.getLogger("tagentd.router")

Deliver = Callable[[bytes], None]


class Shape(Protocol):
    """How one socket's replies look, for one request."""

    #: The request's kind (its type's name): in the log, and in an internal error's message.
    name: str

    def ok(self, result: Any) -> bytes:
        """The encoded reply carrying a handler's result."""

    def error(self, exc: TagentError) -> bytes:
        """The encoded error reply for `exc`."""


def answer_parked(result: Any, shape: Shape) -> bytes:
    """The reply carrying a plain handler's result (or a parked request's, once it came)."""
    try:
        return shape.ok(result)
    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not encode
        return shape.error(internal_error(shape.name, exc))


async def answer_async(handler: Callable[..., Any], args: tuple[Any, ...], shape: Shape) -> bytes:
    """The reply to a coroutine handler's call, once it has finished."""
    try:
        return shape.ok(await handler(*args))
    except TagentError as exc:
        return shape.error(exc)
    except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the daemon
        return shape.error(internal_error(shape.name, exc))


def internal_error(name: str, exc: Exception) -> TagentError:
    """A handler's unexpected exception: logged with its traceback, answered as code `error`."""
    log.error("request %s failed", name, exc_info=exc)
    return TagentError(f"internal error in {name}: {exc}")


class Router:
    """Calls handlers and delivers their replies; async handlers run in tasks the daemon keeps (`spawn`)."""

    def __init__(self, spawn: Spawn) -> None:
        self.spawn = spawn

    def serve(self, handler: Callable[..., Any], args: tuple[Any, ...], shape: Shape, deliver: Deliver) -> None:
        """Call `handler(*args)` and `deliver` its one reply: now for a plain handler, when it ends for an async one."""
        if inspect.iscoroutinefunction(handler):
            self.spawn(self._serve_async(handler, args, shape, deliver))
            return
        try:
            result = handler(*args)
        except TagentError as exc:
            deliver(shape.error(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the daemon
            deliver(shape.error(internal_error(shape.name, exc)))
            return
        if isinstance(result, Parked):  # answered when it resolves, in that very call (no task, no loop turn)
            result.then(lambda value: deliver(answer_parked(value, shape)))
        else:
            deliver(answer_parked(result, shape))

    @staticmethod
    async def _serve_async(handler: Callable[..., Any], args: tuple[Any, ...], shape: Shape, deliver: Deliver) -> None:
        deliver(await answer_async(handler, args, shape))
