"""`Client`: the blocking client of a running tagentd (what it guarantees: `base.py`).

Calls are serialised: one thread at a time on the socket.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from ..core.result import PipelineResult
from ..errors import RequestTimeout, TagentError
from ..wire import protocol
from ..wire.protocol import DaemonInfo, EventBatch, EventRecord, LogRecord, RunDetail, RunSummary, WatchInfo
from . import calls, connection
from .base import DEFAULT_TIMEOUT, FOLLOW_WAIT, PING_TIMEOUT, RESENDS, ClientBase
from .broker import BrokerMethods
from .calls import Call, RunHandle, as_dict, decode_as

__all__ = ["Client"]

T = TypeVar("T")
if TYPE_CHECKING:  # pydantic loads only where used: `tagent runs` starts faster
    from .calls import Schemas


# -- the synchronous client -------------------------------------------------------------------


class Client(BrokerMethods, ClientBase):
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

    def runs(self, limit: int = 50, status: str | None = None, before: str | None = None) -> list[RunSummary]:
        """Newest runs first, optionally only those in `status`; `before` (a run id, e.g. the last one of the
        previous page): only runs created before it. Pages stay stable while new runs start."""
        return self._call(calls.runs(limit, status, before))

    def status(self, run_id: str, plan: bool = False) -> RunDetail:
        """The run with per-step details; `plan`: also its plan as plain data (`RunDetail.plan`)."""
        return self._call(calls.status(run_id, plan))

    def result(self, run_id: str, schemas: Schemas | None = None) -> PipelineResult:
        """The run's result (partial while it runs); outputs of steps in `schemas` become model instances."""
        return self._call(calls.result(run_id, schemas))

    def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Stop the run; completed outputs are kept. Returns {run_id, status}."""
        return self._call(calls.cancel(run_id, reason))

    def resume(self, run_id: str) -> dict[str, Any]:
        """Run a failed or cancelled run again from its checkpoint. Returns {run_id, steps} (the steps run again)."""
        return self._call(Call(protocol.Resume(run_id=run_id), as_dict))

    def rollback(self, run_id: str) -> dict[str, Any]:
        """Run the compensations of an ended run's completed steps, latest completion first (after
        ROLLBACK_FAILED: the failed ones again). Returns {run_id, steps} (the steps compensated)."""
        return self._call(Call(protocol.Rollback(run_id=run_id), as_dict))

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
        feed = calls.Feed(run_id, timeout=timeout, end_only=True)  # one reply at the end, not one per commit
        while not feed.done:
            feed.take(self._call(feed.call()))
        return self.result(run_id, schemas)

    def daemon_status(self) -> DaemonInfo:
        return self._call(Call(protocol.DaemonStatus(), decode_as(DaemonInfo)))

    def metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format (the series: docs/operations.md, Metrics)."""
        return self._call(Call(protocol.GetMetrics(), str))

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
