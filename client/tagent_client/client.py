"""`Client` and `AsyncClient`: drive a running tagentd over its control socket.

Both speak protocol.py over one DEALER socket (never REQ: a REQ socket wedges
for good after one lost reply). What a caller can rely on:

- Connecting checks that the control socket file exists and pings the daemon
  (~2 s), so "no daemon" is a prompt `DaemonUnavailable`, not a long timeout
  (a ZeroMQ connect to a missing ipc path "succeeds" silently).
- Every request has a timeout (`RequestTimeout`); a reply that arrives after
  its request gave up is recognised by its id and dropped (`stale_replies`).
- An `ErrorReply` is raised as the matching `TagentError` subclass.

A `Client` serialises its calls (one thread at a time on the socket); an
`AsyncClient` lets many tasks of one event loop call at once, routing each
reply to its request by id. One ZeroMQ context per process is shared by all.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import zmq

from . import paths, protocol
from .errors import DaemonUnavailable, InvalidRequest, PipelineLoadError, ProtocolError, RequestTimeout, TagentError
from .protocol import (
    DaemonInfo, EventBatch, EventRecord, LogBatch, LogRecord, RunDetail, RunSummary, SubmitResult, WatchInfo,
)
from .client_broker import AsyncBrokerMethods, BrokerMethods
from .result import PipelineResult, to_builtins

DEFAULT_TIMEOUT = 10.0
PING_TIMEOUT = 2.0
FOLLOW_WAIT = 5.0
HISTORY_FIELDS = ("ts", "who", "what", "data")

T = TypeVar("T")
S = TypeVar("S", bound=zmq.Socket)
if TYPE_CHECKING:  # asyncio, zmq.asyncio and pydantic load only where used: `tagent runs` starts faster
    import asyncio

    import zmq.asyncio
    from pydantic import BaseModel

    Schemas = Mapping[str, type[BaseModel]]


@dataclass(frozen=True)
class RunHandle:
    """A run the daemon accepted: its id, the pipeline's name and its step names.

    For a pipeline with triggers (submitted without `run=True`) no run starts: `registered` is True,
    `id` is empty and `triggers` lists the topic prefixes whose events will each start one.
    """

    id: str
    pipeline: str
    steps: tuple[str, ...] = ()
    registered: bool = False
    triggers: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.id


# -- what each method sends and how its answer is read (shared by both clients) ------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request, how to turn its reply's `result` into the method's return value, and extra time (long-polls)."""

    request: protocol.Request
    decode: Callable[[Any], T]
    extra_timeout: float = 0.0


def _as(kind: type[T]) -> Callable[[Any], T]:
    return lambda result: msgspec.convert(result, kind)


def _ignore(result: Any) -> None:
    return None


def _plain(result: Any) -> dict[str, Any]:
    return dict(result or {})


def _history(result: Any) -> list[dict[str, Any]]:
    """Audit entries as dicts; entries sent as arrays ([ts, who, what, data]) are named."""
    entries = []
    for entry in result or []:
        if isinstance(entry, Mapping):
            entries.append(dict(entry))
        elif isinstance(entry, (list, tuple)):
            entries.append(dict(zip(HISTORY_FIELDS, entry, strict=False)))
        else:
            raise ValueError(f"history entry {entry!r} is neither a map nor an array")
    return entries


def _handle(result: Any) -> RunHandle:
    accepted = msgspec.convert(result, SubmitResult)
    return RunHandle(accepted.run_id, accepted.pipeline, tuple(accepted.steps), accepted.registered,
                     tuple(accepted.triggers))


def split_spec(spec: str) -> tuple[str, str | None]:
    """'file.py:name' -> ('file.py', 'name'); a path that exists as given is never split."""
    path, sep, name = spec.rpartition(":")
    if sep and path and name and "/" not in name and not Path(spec).exists():
        return path, name
    return spec, None


def _submit(path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None,
            target: str | None, model: str | None, run: bool = False) -> _Call[RunHandle]:
    path, spec_target = split_spec(os.fspath(path_or_spec))
    file = Path(path).expanduser().resolve()
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PipelineLoadError(f"cannot read pipeline file {file}: {reason}") from None
    try:
        plain = to_builtins(dict(params or {}))
    except (TypeError, NotImplementedError) as exc:
        raise InvalidRequest(f"run params must be JSON-like data: {exc}") from None
    request = protocol.Submit(path=str(file), source=source, target=target or spec_target, params=plain, model=model,
                              run=run)
    return _Call(request, _handle)


def _events(run_id: str, after: int, wait: float) -> _Call[EventBatch]:
    return _Call(protocol.GetEvents(run_id=run_id, after=after, wait=wait), _as(EventBatch), wait)


def _logs(run_id: str, after: int, wait: float) -> _Call[LogBatch]:
    return _Call(protocol.GetLogs(run_id=run_id, after=after, wait=wait), _as(LogBatch), wait)


def _ping() -> _Call[dict[str, Any]]:
    return _Call(protocol.Ping(), _plain)


def _runs(limit: int, status: str | None) -> _Call[list[RunSummary]]:
    return _Call(protocol.ListRuns(limit=limit, status=status), _as(list[RunSummary]))


def _status(run_id: str) -> _Call[RunDetail]:
    return _Call(protocol.GetRun(run_id=run_id), _as(RunDetail))


def _cancel(run_id: str, reason: str | None) -> _Call[dict[str, Any]]:
    request = protocol.Cancel(run_id=run_id) if reason is None else protocol.Cancel(run_id=run_id, reason=reason)
    return _Call(request, _plain)


def _result(run_id: str, schemas: Schemas | None) -> _Call[PipelineResult]:
    return _Call(protocol.GetResult(run_id=run_id), lambda r: PipelineResult.from_dict(r, schemas))


class _Feed:
    """Cursor over a run's events or log lines.

    Without `follow` it ends at the first empty batch. With `follow` it long-polls
    and ends at the first batch that is empty *and* says the run finished, so
    nothing sent before the end is missed even if the daemon caps batch sizes.
    With a `timeout`, asking for the next batch after that many seconds raises RequestTimeout.
    """

    def __init__(self, run_id: str, *, logs: bool = False, follow: bool = True, wait: float = FOLLOW_WAIT,
                 after: int = 0, timeout: float | None = None) -> None:
        self.run_id, self.logs, self.follow, self.timeout = run_id, logs, follow, timeout
        self.wait = wait if follow else 0.0
        self.after = after
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.done = False

    def call(self) -> _Call[Any]:
        wait = self.wait
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"run {self.run_id} did not finish within {self.timeout:g}s; it keeps running "
                                     f"(see 'tagent status {self.run_id}')", run_id=self.run_id)
            wait = min(wait, left)
        return (_logs if self.logs else _events)(self.run_id, self.after, wait)

    def take(self, batch: EventBatch | LogBatch) -> list[Any]:
        items = batch.lines if isinstance(batch, LogBatch) else batch.events
        if items:
            self.after = items[-1].seq
        elif batch.finished or not self.follow:
            self.done = True
        return items


# -- transport helpers ------------------------------------------------------------------------


def _dealer(context: zmq.Context[S], runtime_dir: Path) -> S:
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


def _no_answer(runtime_dir: Path, timeout: float) -> DaemonUnavailable:
    control = runtime_dir / paths.CONTROL_SOCKET
    return DaemonUnavailable(f"no tagentd answers on {control} (no reply to ping within {timeout:g}s); "
                             "start one with 'tagentd start'")


def _kind(request: protocol.Request) -> str:
    return str(request.__struct_config__.tag)


def _timed_out(request: protocol.Request, limit: float, runtime_dir: Path) -> RequestTimeout:
    return RequestTimeout(f"tagentd ({runtime_dir}) did not answer the '{_kind(request)}' request within "
                          f"{limit:g}s; it may be busy or stuck: check its log", request=_kind(request))


def _stamp(request: protocol.Request, request_id: int) -> bytes:
    request.id = request_id
    request.pid, request.uid = os.getpid(), os.getuid()
    return protocol.encode(request)


def _answers(reply: protocol.AnyReply, request_id: int) -> bool:
    """A reply belongs to a request by id; an ErrorReply with id 0 (unparseable request) to whoever waits."""
    return reply.id == request_id or (reply.id == 0 and isinstance(reply, protocol.ErrorReply))


def _finish(call: _Call[T], reply: protocol.AnyReply) -> T:
    if isinstance(reply, protocol.ErrorReply):
        raise reply.to_exception()
    try:
        return call.decode(reply.result)
    except (msgspec.ValidationError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"unexpected reply to '{_kind(call.request)}' from tagentd: {exc}") from None


_shared: tuple[zmq.Context, zmq.asyncio.Context] | None = None


def _async_context() -> zmq.asyncio.Context:
    """An asyncio view (shadow) of the process's one `zmq.Context.instance()`."""
    import zmq.asyncio
    global _shared
    sync_ctx: zmq.Context = zmq.Context.instance()
    if _shared is None or _shared[0] is not sync_ctx:
        _shared = (sync_ctx, zmq.asyncio.Context.shadow(sync_ctx.underlying))
    return _shared[1]


class _Base:
    def __init__(self, runtime_dir: str | os.PathLike[str] | None, timeout: float) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else paths.runtime_dir()
        self.timeout = timeout
        self.stale_replies = 0
        self._ids = itertools.count(1)


# -- the synchronous client -------------------------------------------------------------------


class Client(BrokerMethods, _Base):
    """Blocking client. Constructing one connects: raises DaemonUnavailable if no daemon answers."""

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(runtime_dir, timeout)
        self._lock = threading.Lock()
        self._socket: zmq.Socket | None = _dealer(zmq.Context.instance(), self.runtime_dir)
        ping_timeout = min(PING_TIMEOUT, timeout)
        try:
            self._call(_Call(protocol.Ping(), _ignore), ping_timeout)
        except RequestTimeout:
            self.close()
            raise _no_answer(self.runtime_dir, ping_timeout) from None
        except BaseException:
            self.close()
            raise

    def _call(self, call: _Call[T], timeout: float | None = None) -> T:
        limit = (self.timeout if timeout is None else timeout) + call.extra_timeout
        with self._lock:
            if self._socket is None:
                raise TagentError("this tagent Client is closed")
            request_id = next(self._ids)
            try:
                self._socket.send(_stamp(call.request, request_id), zmq.NOBLOCK)
            except zmq.Again:
                raise _timed_out(call.request, limit, self.runtime_dir) from None
            deadline = time.monotonic() + limit
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._socket.poll(math.ceil(left * 1000), zmq.POLLIN):
                    raise _timed_out(call.request, limit, self.runtime_dir)
                reply = protocol.decode_reply(self._socket.recv(zmq.NOBLOCK))
                if _answers(reply, request_id):
                    break
                self.stale_replies += 1
        return _finish(call, reply)

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
        return self._call(_ping())

    def submit(self, path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None = None, *,
               target: str | None = None, model: str | None = None, run: bool = False) -> RunHandle:
        """Start a run of the pipeline file ("file.py" or "file.py:name"); the daemon snapshots its text.

        A pipeline that declares triggers is registered instead (each matching event starts a run; see
        RunHandle.registered) unless `run` is True.
        """
        return self._call(_submit(path_or_spec, params, target, model, run))

    def runs(self, limit: int = 50, status: str | None = None) -> list[RunSummary]:
        """Newest runs first, optionally only those in `status`."""
        return self._call(_runs(limit, status))

    def status(self, run_id: str) -> RunDetail:
        return self._call(_status(run_id))

    def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        """The run's result (partial while it runs); outputs of steps in `schemas` become model instances."""
        return self._call(_result(run_id, schemas))

    def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Stop the run; completed outputs are kept. Returns {run_id, status}."""
        return self._call(_cancel(run_id, reason))

    def resume(self, run_id: str) -> dict[str, Any]:
        """Run a failed or cancelled run again from its checkpoint. Returns {run_id, steps} (the steps run again)."""
        return self._call(_Call(protocol.Resume(run_id=run_id), _plain))

    def retry(self, run_id: str, step: str) -> dict[str, Any]:
        """Run `step` of an ended run again, and everything downstream of it. Returns {run_id, step}."""
        return self._call(_Call(protocol.Retry(run_id=run_id, step=step), _plain))

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """The run's audit trail, oldest first: dicts with ts, who, what, data."""
        return self._call(_Call(protocol.GetHistory(run_id=run_id), _history))

    def transcript(self, run_id: str, step: str) -> dict[str, Any]:
        """An agent step's last attempts: {run_id, step, attempts: [{attempt, item, status, model, messages}]}."""
        return self._call(_Call(protocol.GetTranscript(run_id=run_id, step=step), _plain))

    def events(self, run_id: str, after: int = 0, wait: float = 0) -> EventBatch:
        """Events with seq > `after`; the daemon holds the reply up to `wait` s until there is news."""
        return self._call(_events(run_id, after, wait))

    def follow(self, run_id: str, *, after: int = 0, wait: float = FOLLOW_WAIT) -> Iterator[EventRecord]:
        """Every event of the run (seq > `after`) as it happens, until the run finishes."""
        feed = _Feed(run_id, wait=wait, after=after)
        while not feed.done:
            yield from feed.take(self._call(feed.call()))

    def logs(self, run_id: str, follow: bool = False) -> Iterator[LogRecord]:
        """The run's log lines; with `follow`, new ones as they come until the run finishes."""
        feed = _Feed(run_id, logs=True, follow=follow)
        while not feed.done:
            yield from feed.take(self._call(feed.call()))

    def wait(self, run_id: str, timeout: float | None = None, schemas: Schemas | None = None) -> PipelineResult:
        """Block until the run finishes, then return its result; RequestTimeout after `timeout` s."""
        feed = _Feed(run_id, timeout=timeout)
        while not feed.done:
            feed.take(self._call(feed.call()))
        return self.result(run_id, schemas)

    def daemon_status(self) -> DaemonInfo:
        return self._call(_Call(protocol.DaemonStatus(), _as(DaemonInfo)))

    def watch(self) -> WatchInfo:
        """The watched folders and each pipeline file in them: content hash, status (run id, error, ...), time."""
        return self._call(_Call(protocol.GetWatch(), _as(WatchInfo)))

    def shutdown(self, graceful: bool = True) -> dict[str, Any]:
        """Ask the daemon to stop (graceful: in-flight steps may finish). Returns {stopping, graceful}."""
        return self._call(_Call(protocol.Shutdown(graceful=graceful), _plain))

    def gc(self, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Apply retention now (None: the daemon's settings). Returns {removed: [run ids], dry_run}."""
        return self._call(_Call(protocol.Gc(max_age_s=max_age_s, max_runs=max_runs, dry_run=dry_run), _plain))


# -- the asyncio client ------------------------------------------------------------------------


class AsyncClient(AsyncBrokerMethods, _Base):
    """asyncio client with the same methods as `Client`. Connects on `async with` or on its first call."""

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(runtime_dir, timeout)
        self._socket: zmq.asyncio.Socket | None = None
        self._ready = False
        self._closed = False
        import asyncio

        self._connecting = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[protocol.AnyReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Check the socket file and ping; DaemonUnavailable if no daemon answers. Idempotent."""
        async with self._connecting:
            if self._ready:
                return
            if self._closed:
                raise TagentError("this tagent AsyncClient is closed")
            self._socket = _dealer(_async_context(), self.runtime_dir)
            ping_timeout = min(PING_TIMEOUT, self.timeout)
            try:
                await self._send(_Call(protocol.Ping(), _ignore), ping_timeout)
            except RequestTimeout:
                self._drop_socket()
                raise _no_answer(self.runtime_dir, ping_timeout) from None
            except BaseException:
                self._drop_socket()
                raise
            self._ready = True

    async def _call(self, call: _Call[T], timeout: float | None = None) -> T:
        if not self._ready:
            await self.connect()
        return await self._send(call, timeout)

    async def _send(self, call: _Call[T], timeout: float | None) -> T:
        import asyncio

        socket = self._socket
        if socket is None:
            raise TagentError("this tagent AsyncClient is closed")
        limit = (self.timeout if timeout is None else timeout) + call.extra_timeout
        request_id = next(self._ids)
        frame = _stamp(call.request, request_id)
        future: asyncio.Future[protocol.AnyReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(limit):
                await socket.send(frame)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.get_running_loop().create_task(self._read(socket))
                reply = await future
        except TimeoutError:
            raise _timed_out(call.request, limit, self.runtime_dir) from None
        finally:
            self._pending.pop(request_id, None)
        return _finish(call, reply)

    async def _read(self, socket: zmq.asyncio.Socket) -> None:
        """Route replies to their requests while any is waiting; stale replies are counted and dropped."""
        try:
            while any(not f.done() for f in self._pending.values()):
                try:
                    reply = protocol.decode_reply(await socket.recv())
                except ProtocolError as exc:
                    self._fail_pending(exc)
                    continue
                waiting = [f for rid, f in self._pending.items() if _answers(reply, rid) and not f.done()]
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
        return await self._call(_ping())

    async def submit(self, path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None = None, *,
                     target: str | None = None, model: str | None = None, run: bool = False) -> RunHandle:
        return await self._call(_submit(path_or_spec, params, target, model, run))

    async def runs(self, limit: int = 50, status: str | None = None) -> list[RunSummary]:
        return await self._call(_runs(limit, status))

    async def status(self, run_id: str) -> RunDetail:
        return await self._call(_status(run_id))

    async def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        return await self._call(_result(run_id, schemas))

    async def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._call(_cancel(run_id, reason))

    async def resume(self, run_id: str) -> dict[str, Any]:
        return await self._call(_Call(protocol.Resume(run_id=run_id), _plain))

    async def retry(self, run_id: str, step: str) -> dict[str, Any]:
        return await self._call(_Call(protocol.Retry(run_id=run_id, step=step), _plain))

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        return await self._call(_Call(protocol.GetHistory(run_id=run_id), _history))

    async def transcript(self, run_id: str, step: str) -> dict[str, Any]:
        return await self._call(_Call(protocol.GetTranscript(run_id=run_id, step=step), _plain))

    async def events(self, run_id: str, after: int = 0, wait: float = 0) -> EventBatch:
        return await self._call(_events(run_id, after, wait))

    async def follow(self, run_id: str, *, after: int = 0, wait: float = FOLLOW_WAIT) -> AsyncIterator[EventRecord]:
        feed = _Feed(run_id, wait=wait, after=after)
        while not feed.done:
            for record in feed.take(await self._call(feed.call())):
                yield record

    async def logs(self, run_id: str, follow: bool = False) -> AsyncIterator[LogRecord]:
        feed = _Feed(run_id, logs=True, follow=follow)
        while not feed.done:
            for line in feed.take(await self._call(feed.call())):
                yield line

    async def wait(self, run_id: str, timeout: float | None = None, schemas: Schemas | None = None) -> PipelineResult:
        feed = _Feed(run_id, timeout=timeout)
        while not feed.done:
            feed.take(await self._call(feed.call()))
        return await self.result(run_id, schemas)

    async def daemon_status(self) -> DaemonInfo:
        return await self._call(_Call(protocol.DaemonStatus(), _as(DaemonInfo)))

    async def watch(self) -> WatchInfo:
        return await self._call(_Call(protocol.GetWatch(), _as(WatchInfo)))

    async def shutdown(self, graceful: bool = True) -> dict[str, Any]:
        return await self._call(_Call(protocol.Shutdown(graceful=graceful), _plain))

    async def gc(self, max_age_s: float | None = None, max_runs: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        return await self._call(_Call(protocol.Gc(max_age_s=max_age_s, max_runs=max_runs, dry_run=dry_run), _plain))
