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
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from . import calls, connection
from ..wire import paths, protocol
from .calls import Call, RunHandle, as_dict, decode_as, split_spec
from .broker import AsyncBrokerMethods, BrokerMethods
from ..errors import ProtocolError, RequestTimeout, TagentError
from ..wire.protocol import DaemonInfo, EventBatch, EventRecord, LogRecord, RunDetail, RunSummary, WatchInfo
from ..core.result import PipelineResult

__all__ = ["AsyncClient", "Client", "RunHandle", "split_spec", "DEFAULT_TIMEOUT", "FOLLOW_WAIT", "WINDOW"]

DEFAULT_TIMEOUT = 10.0
PING_TIMEOUT = 2.0
FOLLOW_WAIT = 5.0
RESENDS = 1    # times an idempotent request (send, submit) is sent again after getting no answer in time
WINDOW = 256   # requests one AsyncClient has in flight at most (below ZeroMQ's 1000-message queue)

T = TypeVar("T")
if TYPE_CHECKING:  # asyncio, zmq.asyncio and pydantic load only where used: `tagent runs` starts faster
    import asyncio

    import zmq.asyncio

    from .calls import Schemas


class _Base:
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


# -- the synchronous client -------------------------------------------------------------------


class Client(BrokerMethods, _Base):
    """Blocking client. Constructing one connects: raises DaemonUnavailable if no daemon answers."""

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT, *,
                 resends: int = RESENDS) -> None:
        super().__init__(runtime_dir, timeout, resends)
        self._lock = threading.Lock()
        self._socket: zmq.Socket | None = connection.dealer(zmq.Context.instance(), self.runtime_dir)
        ping_timeout = min(PING_TIMEOUT, timeout)
        try:
            self.limits = connection.limits_of(self._call(calls.ping(), ping_timeout))
        except RequestTimeout:
            self.close()
            raise connection.no_answer(self.runtime_dir, ping_timeout) from None
        except BaseException:
            self.close()
            raise

    def _call(self, call: Call[T], timeout: float | None = None) -> T:
        limit = self._limit(call, timeout)
        with self._lock:
            if self._socket is None:
                raise TagentError("this tagent Client is closed")
            request_id = next(self._ids)
            frame = connection.frame(call.request, request_id, self.limits)
            sends = self._sends(call)
            for sent in range(1, sends + 1):
                reply = self._exchange(self._socket, frame, request_id, limit)
                if reply is not None:
                    break
                if sent < sends:
                    self.resent += 1
            else:
                raise connection.timed_out(call.request, limit, self.runtime_dir, sends)
        return calls.finish(call, reply)

    def _exchange(self, socket: zmq.Socket, frame: bytes, request_id: int, limit: float) -> protocol.AnyReply | None:
        """Send `frame`, then wait up to `limit` s in all for its reply (None: no reply in time)."""
        deadline = time.monotonic() + limit
        if not socket.poll(math.ceil(limit * 1000), zmq.POLLOUT):
            return None
        socket.send(frame, zmq.NOBLOCK)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not socket.poll(math.ceil(left * 1000), zmq.POLLIN):
                return None
            reply = protocol.decode_reply(socket.recv(zmq.NOBLOCK))
            if calls.answers(reply, request_id):
                return reply
            self.stale_replies += 1

    def close(self) -> None:
        """Close the socket at once (linger 0); idempotent."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The daemon's answer to a ping (pid, version, ...)."""
        return self._call(calls.ping())

    def submit(self, path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None = None, *,
               target: str | None = None, model: str | None = None, run: bool = False,
               idempotency_key: str | None = None) -> RunHandle:
        """Start a run of the pipeline file ("file.py" or "file.py:name"); the daemon snapshots its text.

        A pipeline that declares triggers is registered instead (each matching event starts a run; see
        RunHandle.registered) unless `run` is True. Waits as long as the daemon may take to import the file.
        `idempotency_key` (default: a new random one per call): a submit repeating the key of one the daemon
        has seen starts nothing and returns that submit's run (RunHandle.duplicate).
        """
        return self._call(self._submit(path_or_spec, params, target, model, run, idempotency_key))

    def runs(self, limit: int = 50, status: str | None = None) -> list[RunSummary]:
        """Newest runs first, optionally only those in `status`."""
        return self._call(calls.runs(limit, status))

    def status(self, run_id: str) -> RunDetail:
        return self._call(calls.status(run_id))

    def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        """The run's result (partial while it runs); outputs of steps in `schemas` become model instances."""
        return self._call(calls.result(run_id, schemas))

    def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Stop the run; completed outputs are kept. Returns {run_id, status}."""
        return self._call(calls.cancel(run_id, reason))

    def resume(self, run_id: str) -> dict[str, Any]:
        """Run a failed or cancelled run again from its checkpoint. Returns {run_id, steps} (the steps run again)."""
        return self._call(Call(protocol.Resume(run_id=run_id), as_dict))

    def retry(self, run_id: str, step: str) -> dict[str, Any]:
        """Run `step` of an ended run again, and everything downstream of it. Returns {run_id, step}."""
        return self._call(Call(protocol.Retry(run_id=run_id, step=step), as_dict))

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """The run's audit trail, oldest first: dicts with ts, who, what, data."""
        return self._call(calls.history(run_id))

    def transcript(self, run_id: str, step: str) -> dict[str, Any]:
        """An agent step's last attempts: {run_id, step, attempts: [{attempt, item, status, model, messages}]}."""
        return self._call(Call(protocol.GetTranscript(run_id=run_id, step=step), as_dict))

    def events(self, run_id: str, after: int = 0, wait: float = 0) -> EventBatch:
        """Events with seq > `after`; the daemon holds the reply up to `wait` s until there is news."""
        return self._call(calls.events(run_id, after, wait))

    def follow(self, run_id: str, *, after: int = 0, wait: float = FOLLOW_WAIT) -> Iterator[EventRecord]:
        """Every event of the run (seq > `after`) as it happens, until the run finishes."""
        feed = calls.Feed(run_id, wait=wait, after=after)
        while not feed.done:
            yield from feed.take(self._call(feed.call()))

    def logs(self, run_id: str, follow: bool = False, *, after: int = 0) -> Iterator[LogRecord]:
        """The run's log lines (those with seq > `after`); with `follow`, new ones as they come until the run finishes."""
        feed = calls.Feed(run_id, logs=True, follow=follow, after=after)
        while not feed.done:
            yield from feed.take(self._call(feed.call()))

    def wait(self, run_id: str, timeout: float | None = None, schemas: Schemas | None = None) -> PipelineResult:
        """Block until the run finishes, then return its result; RequestTimeout after `timeout` s."""
        feed = calls.Feed(run_id, timeout=timeout)
        while not feed.done:
            feed.take(self._call(feed.call()))
        return self.result(run_id, schemas)

    def daemon_status(self) -> DaemonInfo:
        return self._call(Call(protocol.DaemonStatus(), decode_as(DaemonInfo)))

    def watch(self) -> WatchInfo:
        """The watched folders and each pipeline file in them: content hash, status (run id, error, ...), time."""
        return self._call(Call(protocol.GetWatch(), decode_as(WatchInfo)))

    def shutdown(self, graceful: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Ask the daemon to stop: nothing new starts; graceful: steps in flight get up to `timeout` s to finish.
        Returns {graceful, timeout_s, remaining_s, waiting: [{run_id, pipeline, step, task, attempt, elapsed_s}]}."""
        return self._call(Call(protocol.Shutdown(graceful=graceful, timeout=timeout), as_dict))

    def gc(self, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Apply retention now (None: the daemon's settings). Returns {removed: [run ids], dry_run}."""
        return self._call(Call(protocol.Gc(max_age_s=max_age_s, max_runs=max_runs, dry_run=dry_run), as_dict))


# -- the asyncio client ------------------------------------------------------------------------


class AsyncClient(AsyncBrokerMethods, _Base):
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

    async def runs(self, limit: int = 50, status: str | None = None) -> list[RunSummary]:
        return await self._call(calls.runs(limit, status))

    async def status(self, run_id: str) -> RunDetail:
        return await self._call(calls.status(run_id))

    async def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        return await self._call(calls.result(run_id, schemas))

    async def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._call(calls.cancel(run_id, reason))

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self._call(Call(protocol.Resume(run_id=run_id), as_dict))

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
        feed = calls.Feed(run_id, timeout=timeout)
        while not feed.done:
            feed.take(await self._call(feed.call()))
        return await self.result(run_id, schemas)

    async def daemon_status(self) -> DaemonInfo:
        return await self._call(Call(protocol.DaemonStatus(), decode_as(DaemonInfo)))

    async def watch(self) -> WatchInfo:
        return await self._call(Call(protocol.GetWatch(), decode_as(WatchInfo)))

    async def shutdown(self, graceful: bool = True, timeout: float | None = None) -> dict[str, Any]:
        return await self._call(Call(protocol.Shutdown(graceful=graceful, timeout=timeout), as_dict))

    async def gc(self, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        return await self._call(Call(protocol.Gc(max_age_s=max_age_s, max_runs=max_runs, dry_run=dry_run), as_dict))
