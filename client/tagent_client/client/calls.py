"""What each client method sends and how its reply is read, shared by `Client` and `AsyncClient`.

A `Call` is one request plus how to turn its reply's `result` into the
method's return value. Both clients (and client_broker's methods) build the
same Calls, so the blocking and the asyncio client cannot drift apart.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from ..core.result import PipelineResult, to_builtins
from ..errors import InvalidRequest, PipelineLoadError, ProtocolError, RequestTimeout
from ..wire import protocol
from ..wire.protocol import EventBatch, LogBatch, RunDetail, RunSummary, SubmitResult

HISTORY_FIELDS = ("ts", "who", "what", "data")

T = TypeVar("T")
if TYPE_CHECKING:  # pydantic loads only where used: `tagent runs` starts faster
    from pydantic import BaseModel

    Schemas = Mapping[str, type[BaseModel]]


@dataclass(frozen=True)
class RunHandle:
    """A run the daemon accepted: its id, the pipeline's name and its step names.

    For a pipeline with triggers (submitted without `run=True`) no run starts: `registered` is True,
    `id` is empty and `triggers` lists the topic prefixes whose events will each start one.
    `duplicate`: the submit's idempotency key was seen before, and `id` is the run that submit started.
    """

    id: str
    pipeline: str
    steps: tuple[str, ...] = ()
    registered: bool = False
    triggers: tuple[str, ...] = ()
    duplicate: bool = False

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its reply.

    `extra_timeout`: time on top of the client's timeout (long-polls, a submit's import).
    `resend`: the request is idempotent (a message id, an idempotency key), so a client that got no
    answer in time sends the very same frame again instead of giving up.
    """

    request: Any
    decode: Callable[[Any], T]
    extra_timeout: float = 0.0
    resend: bool = False


def decode_as(kind: Any) -> Callable[[Any], Any]:
    """Convert a result to `kind` (None stays None)."""
    return lambda result: msgspec.convert(result, kind) if result is not None else None


def ignore(result: Any) -> None:
    return None


def as_dict(result: Any) -> dict[str, Any]:
    return dict(result or {})


def kind(request: Any) -> str:
    """A request's wire name ('submit', 'send', ...)."""
    return str(request.__struct_config__.tag)


def plain_data(what: str, value: Any) -> Any:
    """`value` as JSON-like builtins; InvalidRequest (one line) if it cannot be, or nests too deeply to convert."""
    try:
        return to_builtins(value)
    except (TypeError, NotImplementedError) as exc:
        raise InvalidRequest(f"{what} must be JSON-like data: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"{what}: nested too deeply to send; flatten the data, or pass a file path to it "
                             "instead") from None


def finish(call: Call[T], reply: protocol.AnyReply) -> T:
    """The call's return value from its reply; an ErrorReply is raised as its TagentError."""
    if isinstance(reply, protocol.ErrorReply):
        raise reply.to_exception()
    try:
        return call.decode(reply.result)
    except (msgspec.ValidationError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"unexpected reply to '{kind(call.request)}' from tagentd: {exc}") from None


def answers(reply: protocol.AnyReply, request_id: int) -> bool:
    """A reply belongs to a request by id; an ErrorReply with id 0 (unparseable request) to whoever waits."""
    return reply.id == request_id or (reply.id == 0 and isinstance(reply, protocol.ErrorReply))


# -- the control requests ---------------------------------------------------------------------


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
                     tuple(accepted.triggers), accepted.duplicate)


def submit(path_or_spec: str | os.PathLike[str], params: Mapping[str, Any] | None, target: str | None,
           model: str | None, run: bool, idempotency_key: str | None, load_timeout: float) -> Call[RunHandle]:
    """A submit that waits as long as the daemon may take to import the file, under one idempotency key."""
    from ..define.loading import split_spec  # noqa: PLC0415 - only a submit needs it; see tests/test_cli_imports.py

    path, spec_target = split_spec(os.fspath(path_or_spec))
    file = Path(path).expanduser().resolve()
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PipelineLoadError(f"cannot read pipeline file {file}: {reason}") from None
    request = protocol.Submit(path=str(file), source=source, target=target or spec_target,
                              params=plain_data("run params", dict(params or {})), model=model, run=run,
                              idempotency_key=idempotency_key or uuid.uuid4().hex)
    return Call(request, _handle, extra_timeout=load_timeout, resend=True)


def events(run_id: str, after: int, wait: float, *, until_finished: bool = False) -> Call[EventBatch]:
    request = protocol.GetEvents(run_id=run_id, after=after, wait=wait, until_finished=until_finished)
    return Call(request, decode_as(EventBatch), wait)


def logs(run_id: str, after: int, wait: float) -> Call[LogBatch]:
    return Call(protocol.GetLogs(run_id=run_id, after=after, wait=wait), decode_as(LogBatch), wait)


def ping() -> Call[dict[str, Any]]:
    return Call(protocol.Ping(), as_dict)


def runs(limit: int, status: str | None, before: str | None = None) -> Call[list[RunSummary]]:
    return Call(protocol.ListRuns(limit=limit, status=status, before=before), decode_as(list[RunSummary]))


def status(run_id: str, plan: bool = False) -> Call[RunDetail]:
    return Call(protocol.GetRun(run_id=run_id, plan=plan) if plan else protocol.GetRun(run_id=run_id),
                decode_as(RunDetail))


def cancel(run_id: str, reason: str | None) -> Call[dict[str, Any]]:
    request = protocol.Cancel(run_id=run_id) if reason is None else protocol.Cancel(run_id=run_id, reason=reason)
    return Call(request, as_dict)


def result(run_id: str, schemas: Schemas | None) -> Call[PipelineResult]:
    return Call(protocol.GetResult(run_id=run_id), lambda r: PipelineResult.from_dict(r, schemas))


def history(run_id: str) -> Call[list[dict[str, Any]]]:
    return Call(protocol.GetHistory(run_id=run_id), _history)


class Feed:
    """Cursor over a run's events or log lines.

    Without `follow` it ends at the first empty batch. With `follow` it long-polls
    and ends at the first batch that is empty *and* says the run finished, so
    nothing sent before the end is missed even if the daemon caps batch sizes.
    With a `timeout`, asking for the next batch after that many seconds raises RequestTimeout.
    With `end_only` (events only), the daemon sends no events and answers once the run has finished (or the
    long poll's `wait` ends): one round trip per run, not one per commit, for a caller that waits for the end.
    """

    def __init__(self, run_id: str, *, logs: bool = False, follow: bool = True, wait: float = 5.0,
                 after: int = 0, timeout: float | None = None, end_only: bool = False) -> None:
        self.run_id, self.logs, self.follow, self.timeout = run_id, logs, follow, timeout
        self.end_only = end_only and not logs
        self.wait = wait if follow else 0.0
        self.after = after
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.done = False

    def call(self) -> Call[Any]:
        wait = self.wait
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"run {self.run_id} did not finish within {self.timeout:g}s; it keeps running "
                                     f"(see 'tagent status {self.run_id}')", run_id=self.run_id)
            wait = min(wait, left)
        if self.logs:
            return logs(self.run_id, self.after, wait)
        return events(self.run_id, self.after, wait, until_finished=self.end_only)

    def take(self, batch: EventBatch | LogBatch) -> list[Any]:
        items = batch.lines if isinstance(batch, LogBatch) else batch.events
        if items:
            self.after = items[-1].seq
        elif batch.finished or not self.follow:
            self.done = True
        return items
