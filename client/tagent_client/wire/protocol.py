"""The control protocol between `tagent` / `Client` and the daemon.

One ZeroMQ frame per message: a msgpack-encoded, tagged msgspec Struct. Every
request carries the protocol version `v`, a request `id` the reply echoes, and
the caller's pid/uid as it reports them. The daemon answers every request it
receives with exactly one `Reply` or `ErrorReply` (a frame it cannot parse gets
an `ErrorReply` with id 0 when no id can be read), and never drops a reply it
can deliver. Requests are bounded (bounds.py): size, name lengths, nesting.

docs/protocol.md lists every message; this module is the source of truth.
"""

# Annotations stay real objects (no `from __future__ import annotations`): msgspec would otherwise
# eval each one as a string when the decoders are built, ~2 ms of every command's start.

import os
from typing import Any

import msgspec

from ..bounds import DEPTH_MAX, NAME_MAX, too_large
from ..errors import ProtocolError, TagentError, error_from_wire
from .protocol_broker import AnyBrokerRequest
from .protocol_watch import WatchedFile, WatchFolder, WatchInfo  # noqa: F401 - GetWatch's answer, part of this protocol

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
LOAD_TIMEOUT = 30.0  # the daemon's default load_timeout: how long a submit's import may take


class Request(msgspec.Struct, tag_field="type", kw_only=True, dict=True):
    """Base of every control request.

    `pid`/`uid` are what the client reports. The daemon attaches what the OS says about the sender (its
    uid, gid and pid from SO_PEERCRED, where the socket gives them) as the attribute `peer`, which is
    never on the wire (see tagentd/plumbing/peers.py).
    """

    v: int = PROTOCOL_VERSION
    id: int = 0
    pid: int = 0
    uid: int = -1


class Ping(Request, tag="ping"):
    """Liveness check; the reply carries the daemon's pid and version."""


class Submit(Request, tag="submit"):
    """Start a run of the pipeline in `source` (the text of the file at `path`)."""

    path: str
    source: str
    target: str | None = None
    params: dict[str, Any] = {}
    model: str | None = None
    run: bool = False  # a pipeline with triggers is registered, not run, unless this is set
    idempotency_key: str | None = None  # a repeat with the same key answers with the run the first one started


class ListRuns(Request, tag="runs"):
    """Newest runs first; `status` filters ("running", "completed", ...); `before` (a run id, the last of the
    previous page) pages back: only runs created before it."""

    limit: int = 50
    status: str | None = None
    before: str | None = None


class GetRun(Request, tag="status"):
    """One run with per-step details; with `plan`, also the run's plan (its steps, added ones included)."""

    run_id: str
    plan: bool = False


class GetResult(Request, tag="result"):
    """The PipelineResult of a finished run (or the partial one of a running run)."""

    run_id: str


class Cancel(Request, tag="cancel"):
    run_id: str
    reason: str = "cancelled by request"


class Resume(Request, tag="resume"):
    """Run a FAILED or CANCELLED run again from its checkpoint: completed steps are kept."""

    run_id: str


class Rollback(Request, tag="rollback"):
    """Run the compensations of a finished run's completed steps, latest completion first (docs/semantics.md)."""

    run_id: str


class Retry(Request, tag="retry"):
    """Run one step of a finished run again, and every step that depends on it."""

    run_id: str
    step: str


class GetEvents(Request, tag="events"):
    """The run's lifecycle events with seq > `after`; waits up to `wait` seconds for one to arrive.

    With `until_finished`, no events are sent: the reply waits until the run has finished (or `wait` ends).
    """

    run_id: str
    after: int = 0
    wait: float = 0.0
    until_finished: bool = False


class GetLogs(Request, tag="logs"):
    """The run's log lines with seq > `after`; waits up to `wait` seconds for one to arrive."""

    run_id: str
    after: int = 0
    wait: float = 0.0


class GetHistory(Request, tag="history"):
    """The run's audit trail: every state transition and every request that changed it."""

    run_id: str


class GetTranscript(Request, tag="transcript"):
    """An agent step's transcripts: its last attempts' messages (prompts, tool calls and results, output)."""

    run_id: str
    step: str


class Gc(Request, tag="gc"):
    """Apply retention now: remove finished runs older than `max_age_s` or beyond `max_runs` (None: the daemon's settings)."""

    max_age_s: float | None = None
    max_runs: int | None = None
    dry_run: bool = False


class DaemonStatus(Request, tag="daemon_status"):
    """pid, uptime, sockets, dirs, workers and run counts."""


class GetWatch(Request, tag="watch"):
    """The watched folders and every pipeline file seen in them: content hash, what became of it, when."""


class GetMetrics(Request, tag="get_metrics"):
    """The daemon's metrics in the Prometheus text format (docs/operations.md, Metrics); the result is that text."""


class Shutdown(Request, tag="shutdown"):
    """Stop the daemon; nothing new starts. `graceful`: wait up to `timeout` s (None: the daemon's default) for the
    steps in flight, then checkpoint them; else checkpoint them now. Sent again with `graceful` false: stop now."""

    graceful: bool = True
    timeout: float | None = None


REQUEST_TYPES = (
    Ping, Submit, ListRuns, GetRun, GetResult, Cancel, Resume, Retry, GetEvents, GetLogs, GetHistory, Gc,
    DaemonStatus, Shutdown, GetWatch, GetTranscript,
    Rollback, GetMetrics,
)
AnyRequest = (
    Ping | Submit | ListRuns | GetRun | GetResult | Cancel | Resume | Retry | GetEvents | GetLogs | GetHistory | Gc
    | DaemonStatus | Shutdown | GetWatch | GetTranscript
    | Rollback | GetMetrics
)


class Reply(msgspec.Struct, tag="reply", tag_field="type", kw_only=True):
    """Success: `result` is plain data, shaped by one of the result Structs below."""

    v: int = PROTOCOL_VERSION
    id: int
    result: Any = None


class ErrorReply(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """Failure: a stable `code` (errors.py), a one-line `message` and optional `details`."""

    v: int = PROTOCOL_VERSION
    id: int
    code: str
    message: str
    details: dict[str, Any] = {}

    def to_exception(self) -> TagentError:
        return error_from_wire(self.code, self.message, self.details)


AnyReply = Reply | ErrorReply

# -- result shapes -------------------------------------------------------------------------


class SubmitResult(msgspec.Struct, kw_only=True):
    """A run started (`run_id`), or a pipeline with triggers registered (`registered`, `run_id` empty).

    `duplicate`: the submit's idempotency key was seen before; `run_id` is the run that submit started.
    """

    run_id: str
    pipeline: str
    steps: list[str]
    registered: bool = False
    triggers: list[str] = []
    duplicate: bool = False


class Limits(msgspec.Struct, kw_only=True):
    """The daemon's bounds a client must know (in the ping's result): request size, import time, names, nesting."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    load_timeout: float = LOAD_TIMEOUT
    name_max: int = NAME_MAX
    depth_max: int = DEPTH_MAX


class RunSummary(msgspec.Struct, kw_only=True):
    run_id: str
    pipeline: str
    status: str
    steps_done: int
    steps_total: int
    created_at: float
    finished_at: float | None = None
    path: str | None = None
    parent_id: str | None = None  # a child run of a sub-pipeline step: the run that started it


class StepInfo(msgspec.Struct, kw_only=True):
    status: str
    attempts: int
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    #: The failed step's last traceback (its last 4000 characters; None when it raised none, e.g. a timeout).
    traceback: str | None = None
    skip_reason: str | None = None
    cost: float = 0.0
    tokens: int = 0
    #: The step that added this one at run time (`ctx.add_step`); None for the pipeline's own steps.
    added_by: str | None = None
    #: Its compensation in a rollback: pending, succeeded or failed (None: none ran).
    compensation: str | None = None
    children: list[str] = []  # a sub-pipeline step: the child runs it started, in order


class RunDetail(msgspec.Struct, kw_only=True):
    run_id: str
    pipeline: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    path: str | None = None
    params: dict[str, Any] = {}
    steps: dict[str, StepInfo] = {}
    parent_id: str | None = None  # a child run: the run whose sub-pipeline step started it
    #: Asked for (`GetRun.plan`): the run's Plan as plain data, steps added at run time included.
    plan: dict[str, Any] | None = None
    #: The run's OpenTelemetry trace (hex) when traces were on for it; `trace_url` from the `trace_url` setting.
    trace_id: str | None = None
    trace_url: str | None = None


class EventRecord(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One event. `data` is a dict for the daemon's own events; a published event's data is any JSON value.
    Like LogRecord, plain data (never a cycle), so not tracked by the garbage collector; a run keeps two per step.

    A published event also says where it came from: `source` is the publishing step's pipeline (or the
    pipeline a client published as; "" when nobody said) and `id` the event id its publisher chose
    ("" when none was chosen, as with `ctx.publish`). They are the last two fields of the array: an
    older reader ignores them, and a record without them reads as "", "".
    """

    seq: int
    ts: float
    topic: str
    data: Any
    source: str = ""
    id: str = ""


class EventBatch(msgspec.Struct, kw_only=True):
    events: list[EventRecord]
    finished: bool
    status: str


class LogRecord(msgspec.Struct, kw_only=True, array_like=True, gc=False):  # plain data: not tracked by the gc
    seq: int
    ts: float
    step: str
    level: str
    message: str


class LogBatch(msgspec.Struct, kw_only=True):
    lines: list[LogRecord]
    finished: bool


class WorkerInfo(msgspec.Struct, kw_only=True):
    id: int
    pid: int
    state: str
    running: int
    capacity: int
    completed: int
    started_at: float


class ClusterNode(msgspec.Struct, kw_only=True):
    """One node of the cluster the daemon's workers run on, and what of the daemon runs there."""

    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]  # the node's total (CPU, GPU, memory, custom resources)
    workers: int = 0  # this daemon's workers placed on it
    steps: int = 0  # steps running on it now


class ClusterInfo(msgspec.Struct, kw_only=True):
    """The Ray cluster of `--executor ray`: where it is, whether the daemon reaches it, its nodes."""

    kind: str  # "ray"
    address: str
    namespace: str
    connected: bool
    nodes: list[ClusterNode] = []
    available: dict[str, float] = {}  # resources not in use, over the whole cluster
    problem: str | None = None  # why it is not connected, or why workers cannot be placed


class DaemonInfo(msgspec.Struct, kw_only=True):
    pid: int
    version: str
    started_at: float
    uptime_s: float
    runtime_dir: str
    state_dir: str
    sockets: dict[str, str]
    workers: list[WorkerInfo]
    runs_active: int
    runs_total: int
    durable: bool
    stats: dict[str, Any] = {}
    watch_dirs: list[str] = []
    cluster: ClusterInfo | None = None  # with --executor ray


# -- encoding -------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest | AnyBrokerRequest)
_reply_decoder = msgspec.msgpack.Decoder(AnyReply)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_request(frame: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> AnyRequest:
    """Parse one request frame; raises RequestTooLarge or ProtocolError saying what is wrong (never anything else)."""
    if len(frame) > max_bytes:
        raise too_large(None, len(frame), max_bytes)
    try:
        request = _request_decoder.decode(frame)
    except RecursionError:
        raise ProtocolError(f"invalid request: nested too deeply to decode (data may nest {DEPTH_MAX} levels)") from None
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:  # msgspec >= 0.23 also reports a str that is not UTF-8 this way
        what = "a string is not UTF-8" if "UTF-8" in str(exc) else "not msgpack"
        raise ProtocolError(f"undecodable request ({what}): {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec < 0.23 raises this, not DecodeError, for a str that is not UTF-8
        raise ProtocolError(f"undecodable request (a string is not UTF-8): {exc}") from None
    if request.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {request.v} is not supported (daemon speaks {PROTOCOL_VERSION})")
    return request


def decode_reply(frame: bytes) -> AnyReply:
    try:
        return _reply_decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"undecodable reply from daemon: {exc}") from None


def peek_id(frame: bytes) -> int:
    """Best-effort request id of a frame that failed to decode (0 when unknown)."""
    try:
        raw = msgspec.msgpack.decode(frame)
    except Exception:  # noqa: BLE001 - garbage in, 0 out
        return 0
    if isinstance(raw, dict) and isinstance(raw.get("id"), int) and not isinstance(raw.get("id"), bool):
        return raw["id"]
    return 0


def origin() -> dict[str, int]:
    """This process's pid and uid, for a request's audit fields."""
    return {"pid": os.getpid(), "uid": os.getuid()}
