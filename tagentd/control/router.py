"""One request -> reply path for every socket: control.sock's requests and the steps' broker calls.

`Router.serve(handler, args, shape, deliver)` calls `handler(*args)` — a plain function, or a
coroutine function (then in a task the daemon keeps) — and hands `deliver` exactly one encoded
reply:

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


def answer(handler: Callable[..., Any], args: tuple[Any, ...], shape: Shape) -> bytes:
    """The reply to a plain (not async) handler's call."""
    try:
        return shape.ok(handler(*args))
    except TagentError as exc:
        return shape.error(exc)
    except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the daemon
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
        else:
            deliver(answer(handler, args, shape))

    @staticmethod
    async def _serve_async(handler: Callable[..., Any], args: tuple[Any, ...], shape: Shape, deliver: Deliver) -> None:
        deliver(await answer_async(handler, args, shape))
