"""`AsyncClient`: the asyncio client of a running tagentd, with the same methods as `Client` (guarantees: `base.py`).

Many tasks of one event loop may call at once: each reply is routed to its request by
id, with at most `window` requests in flight (the rest wait for a slot; a request's
timeout starts when it is sent).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from ..core.result import PipelineResult
from ..errors import ProtocolError, RequestTimeout, TagentError
from ..wire import protocol
from ..wire.protocol import DaemonInfo, EventBatch, EventRecord, LogRecord, RunDetail, RunSummary, WatchInfo
from . import calls, connection
from .base import DEFAULT_TIMEOUT, FOLLOW_WAIT, PING_TIMEOUT, RESENDS, ClientBase
from .broker import AsyncBrokerMethods
from .calls import Call, RunHandle, as_dict, decode_as

__all__ = ["WINDOW", "AsyncClient"]

WINDOW = 256   # requests one AsyncClient has in flight at most (below ZeroMQ's 1000-message queue)

T = TypeVar("T")
if TYPE_CHECKING:  # asyncio, zmq.asyncio and pydantic load only where used: `tagent runs` starts faster
    import asyncio

    import zmq.asyncio

    from .calls import Schemas


# -- the asyncio client ------------------------------------------------------------------------


class AsyncClient(AsyncBrokerMethods, ClientBase):
    """asyncio client with the same methods as `Client`. Connects on `async with` or on its first call.

    At most `window` requests are in flight at once; more wait (in the client) for a slot.
    """

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT, *,
                 resends: int = RESENDS, window: int = WINDOW) -> None:
        super().__init__(runtime_dir, timeout, resends)
        self._socket: zmq.asyncio.Socket | None = None
        self._ready = False
        self._closed = False
        import asyncio

        self._connecting = asyncio.Lock()
        self._window = asyncio.Semaphore(max(1, window))
        self._pending: dict[int, asyncio.Future[protocol.AnyReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Check the socket file and ping; DaemonUnavailable if no daemon answers. Idempotent."""
        async with self._connecting:
            if self._ready:
                return
            if self._closed:
                raise TagentError("this tagent AsyncClient is closed")
            self._socket = connection.dealer(connection.async_context(), self.runtime_dir)
            ping_timeout = min(PING_TIMEOUT, self.timeout)
            try:
                self.limits = connection.limits_of(await self._send(calls.ping(), ping_timeout))
            except RequestTimeout:
                self._drop_socket()
                raise connection.no_answer(self.runtime_dir, ping_timeout) from None
            except BaseException:
                self._drop_socket()
                raise
            self._ready = True

    async def _call(self, call: Call[T], timeout: float | None = None) -> T:
        if not self._ready:
            await self.connect()
        return await self._send(call, timeout)

    async def _send(self, call: Call[T], timeout: float | None) -> T:
        import asyncio

        limit = self._limit(call, timeout)
        async with self._window:
            socket = self._socket
            if socket is None:
                raise TagentError("this tagent AsyncClient is closed")
            request_id = next(self._ids)
            frame = connection.frame(call.request, request_id, self.limits)
            future: asyncio.Future[protocol.AnyReply] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            sends = self._sends(call)
            try:
                for sent in range(1, sends + 1):
                    try:
                        async with asyncio.timeout(limit):
                            await socket.send(frame)
                            if self._reader is None or self._reader.done():
                                self._reader = asyncio.get_running_loop().create_task(self._read(socket))
                            reply = await asyncio.shield(future)  # not cancelled by a timeout: a resend waits for it
                        break
                    except TimeoutError:
                        if sent == sends:
                            raise connection.timed_out(call.request, limit, self.runtime_dir, sends) from None
                        self.resent += 1
            finally:
                self._pending.pop(request_id, None)
        return calls.finish(call, reply)

    async def _read(self, socket: zmq.asyncio.Socket) -> None:
        """Route replies to their requests while any is waiting; stale replies are counted and dropped."""
        try:
            while any(not f.done() for f in self._pending.values()):
                try:
                    reply = protocol.decode_reply(await socket.recv())
                except ProtocolError as exc:
                    self._fail_pending(exc)
                    continue
                waiting = [f for rid, f in self._pending.items() if calls.answers(reply, rid) and not f.done()]
                for future in waiting:
                    future.set_result(reply)
                if not waiting:
                    self.stale_replies += 1
        except zmq.ZMQError as exc:
            self._fail_pending(TagentError(f"the control socket failed: {exc}"))

    def _fail_pending(self, exc: TagentError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    def _drop_socket(self) -> None:
        self._ready = False
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        self._reader = None
        self._fail_pending(TagentError("this tagent AsyncClient is closed"))
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket at once (linger 0); waiting calls fail. Idempotent."""
        self._closed = True
        self._drop_socket()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- commands (see Client for what each one means) ---------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self._call(calls.ping())

    async def submit(self, path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None = None, *,
                     target: str | None = None, model: str | None = None, run: bool = False,
                     idempotency_key: str | None = None) -> RunHandle:
        return await self._call(self._submit(path_or_spec, params, target, model, run, idempotency_key))

    async def runs(self, limit: int = 50, status: str | None = None, before: str | None = None) -> list[RunSummary]:
        return await self._call(calls.runs(limit, status, before))

    async def status(self, run_id: str, plan: bool = False) -> RunDetail:
        """The run with per-step details; `plan`: also its plan as plain data (`RunDetail.plan`)."""
        return await self._call(calls.status(run_id, plan))

    async def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        return await self._call(calls.result(run_id, schemas))

    async def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._call(calls.cancel(run_id, reason))

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self._call(Call(protocol.Resume(run_id=run_id), as_dict))

    async def rollback(self, run_id: str) -> dict[str, Any]:
        """See `Client.rollback`."""
        return await self._call(Call(protocol.Rollback(run_id=run_id), as_dict))

    async def retry(self, run_id: str, step: str) -> dict[str, Any]:
        return await self._call(Call(protocol.Retry(run_id=run_id, step=step), as_dict))

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        return await self._call(calls.history(run_id))

    async def transcript(self, run_id: str, step: str) -> dict[str, Any]:
        return await self._call(Call(protocol.GetTranscript(run_id=run_id, step=step), as_dict))

    async def events(self, run_id: str, after: int = 0, wait: float = 0) -> EventBatch:
        return await self._call(calls.events(run_id, after, wait))

    async def follow(self, run_id: str, *, after: int = 0, wait: float = FOLLOW_WAIT) -> AsyncIterator[EventRecord]:
        feed = calls.Feed(run_id, wait=wait, after=after)
        while not feed.done:
            for record in feed.take(await self._call(feed.call())):
                yield record

    async def logs(self, run_id: str, follow: bool = False, *, after: int = 0) -> AsyncIterator[LogRecord]:
        feed = calls.Feed(run_id, logs=True, follow=follow, after=after)
        while not feed.done:
            for line in feed.take(await self._call(feed.call())):
                yield line

    async def wait(self, run_id: str, timeout: float | None = None, schemas: Schemas | None = None) -> PipelineResult:
        feed = calls.Feed(run_id, timeout=timeout, end_only=True)  # one reply at the end, not one per commit
        while not feed.done:
            feed.take(await self._call(feed.call()))
        return await self.result(run_id, schemas)

    async def daemon_status(self) -> DaemonInfo:
        return await self._call(Call(protocol.DaemonStatus(), decode_as(DaemonInfo)))

    async def metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format (the series: docs/operations.md, Metrics)."""
        return await self._call(Call(protocol.GetMetrics(), str))

    async def watch(self) -> WatchInfo:
        return await self._call(Call(protocol.GetWatch(), decode_as(WatchInfo)))

    async def shutdown(self, graceful: bool = True, timeout: float | None = None) -> dict[str, Any]:
        return await self._call(Call(protocol.Shutdown(graceful=graceful, timeout=timeout), as_dict))

    async def gc(self, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        return await self._call(Call(protocol.Gc(max_age_s=max_age_s, max_runs=max_runs, dry_run=dry_run), as_dict))
