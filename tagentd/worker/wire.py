"""Messages between the daemon and its worker processes (workers.sock).

Workers connect DEALER sockets (identity `w<id>.<token>`) to the daemon's ROUTER. One
frame per message, msgpack-encoded tagged Structs. `token` is a random value each
daemon makes at start and hands only to the workers it spawns (TOKEN_ENV): a worker
left over from another daemon has another identity and token, and is sent `Refused`. Results are re-sent until
the daemon acknowledges them (`TaskAcks`), because ZeroMQ alone does not
guarantee delivery; the engine ignores duplicates (stale attempt).

What one side sends the other in one loop turn travels as one frame: a `Batch` of the messages, each encoded
on its own (`pack`), so a fan-out's hundred tasks to a worker, or the results it finishes together, cost one
send and one wake-up. The receiver decodes each message of a batch on its own (`unpack`): one that does not
decode is dropped alone, and the others are handled in order.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from tagent_client.core.events import Dispatch, StepFailed, StepSucceeded, StepTimedOut
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol_broker import AnyBrokerRequest, StepRef
from tagentd.plumbing.lifeline import EXIT_ORPHANED


def source_hash(source: str | bytes) -> str:
    """The content hash a pipeline file is known by, here and on the wire: sha256 of its UTF-8 text, in hex.

    The only definition: `tagent submit`, the folder watcher (which hashes the bytes it read, before
    decoding them) and the workers' module cache all name a file version by it.
    """
    return hashlib.sha256(source.encode("utf-8") if isinstance(source, str) else source).hexdigest()


class WorkerMessage(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every daemon <-> worker message."""


class Batch(WorkerMessage, tag="batch"):
    """Several messages in one frame, in the order they were sent, each a whole encoded message (`pack`), carried
    as bytes: whatever one of them holds, the others decode."""

    messages: list[bytes]


# -- daemon -> worker ---------------------------------------------------------------


class LoadPipeline(WorkerMessage, tag="load"):
    """Import `source` (the text of `path`) and return the Plan of the pipeline `target` picks."""

    req: int
    source_hash: str
    path: str
    source: str
    target: str | None = None


class RunTask(WorkerMessage, tag="run", omit_defaults=True):
    """Execute one dispatched task. `source` is sent only when this worker has not seen `source_hash`.
    `traceparent` (W3C) names the run's span when traces are on (docs/operations.md, Traces); else it is
    not sent (nor is any other field left at its default)."""

    run_id: str
    source_hash: str
    path: str
    target: str | None
    source: str | None
    task: Dispatch
    params: dict[str, Any] = {}
    model: str | None = None
    trigger: Any = None
    traceparent: str | None = None


class CancelRunning(WorkerMessage, tag="cancel"):
    run_id: str
    task: str
    attempt: int


class TaskAcks(WorkerMessage, tag="acks"):
    """The daemon has the results of these attempts, each `(run_id, task, attempt)`; stop re-sending them. What a
    worker's results get back in one loop turn is one of these, not one message per result."""

    keys: list[tuple[str, str, int]]


class MemoryReply(WorkerMessage, tag="memory_reply"):
    """The answer to MemoryGet / MemorySave `req`; `error` set means the step's memory call raises it."""

    req: int
    value: Any = None
    error: str | None = None


class PermitGrant(WorkerMessage, tag="permit_grant"):
    """The model request `req` may go now (see tagentd.executor.limits); a repeated grant is harmless."""

    req: int


class BreakerAnswer(WorkerMessage, tag="breaker_answer"):
    """The answer to BreakerAsk `req`: the call may go (as the breaker's probe, if `probe`) under `generation`,
    or not: `message` says why (CircuitOpen), `reopens_in` is the seconds until the breaker half-opens (None: its
    probe is out). `lease` > 0: a lease comes with it (tagentd.executor.breakers): the worker may admit up to
    `lease` more calls through this breaker by itself, under `generation`, for `lease_s` seconds counted from
    when it asked, unless it is revoked (BreakerRevoke) or one of its calls fails first."""

    req: int
    allowed: bool
    generation: int = 0
    probe: bool = False
    message: str | None = None
    reopens_in: float | None = None
    lease: int = 0
    lease_s: float = 0.0


class BreakerRevoke(WorkerMessage, tag="breaker_revoke"):
    """Stop admitting calls through breaker `name` on a lease: ask the daemon before each call again."""

    name: str


class BrokerReply(WorkerMessage, tag="broker_reply"):
    """The answer to BrokerCall `req`: `result`, or an error (`code` from errors.py, one-line `message`)."""

    req: int
    result: Any = None
    code: str | None = None
    message: str | None = None


class DependencyReply(WorkerMessage, tag="dependency_reply"):
    """The answer to DependencyWait `req`: the dependency's `status` (a StepStatus value; its `output` once
    completed), or an error (`code` from errors.py, one-line `message`)."""

    req: int
    status: str | None = None
    output: Any = None
    code: str | None = None
    message: str | None = None


class StopWorker(WorkerMessage, tag="stop"):
    """Exit: at once (`graceful=False`) or after in-flight tasks finish."""

    graceful: bool = True


class Refused(WorkerMessage, tag="refused"):
    """This daemon did not start the worker (wrong token): it must exit at once with EXIT_REFUSED."""

    reason: str


# -- worker -> daemon ---------------------------------------------------------------


class Hello(WorkerMessage, tag="hello"):
    """The first message of a worker; the daemon gives it work only if `token` is the daemon's own."""

    worker_id: int
    pid: int
    capacity: int
    token: str = ""


class Heartbeat(WorkerMessage, tag="heartbeat"):
    """Sent every heartbeat interval; `running` lists (run_id, task, attempt) in flight.

    `dropped` counts malformed or unknown frames the worker has received and dropped so far.
    """

    worker_id: int
    running: list[tuple[str, str, int]] = []
    dropped: int = 0
    permits: list[int] = []  # model-request permits asked for or held; any other this worker had is given back
    breakers: list[int] = []  # breaker calls admitted and not ended; a probe not listed is given up


class Loaded(WorkerMessage, tag="loaded"):
    req: int
    plan: Plan
    schemas: dict[str, Any] = {}


class LoadFailed(WorkerMessage, tag="load_failed"):
    """The file did not import or validate. `message` is one line: path:line: reason."""

    req: int
    code: str
    message: str
    problems: list[str] = []
    pipeline: str | None = None  # the invalid pipeline's name (code "invalid_pipeline")


class AttemptResources(msgspec.Struct, kw_only=True):
    """What an attempt used of its worker (tagentd/worker/resources.py defines each figure): wall `seconds`,
    `cpu_seconds` (the worker's CPU time, shared among the attempts running at once), `peak_rss_bytes`."""

    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int


class TaskDone(WorkerMessage, tag="done"):
    """An attempt's result; `resources` is what it used of the worker (None from a worker that did not measure)."""

    run_id: str
    event: StepSucceeded | StepFailed | StepTimedOut
    resources: AttemptResources | None = None


class LogLine(WorkerMessage, tag="log"):
    run_id: str
    step: str
    level: int
    message: str
    ts: float


class ProgressNote(WorkerMessage, tag="progress"):
    run_id: str
    step: str
    fraction: float | None = None
    message: str | None = None


class MemoryGet(WorkerMessage, tag="memory_get"):
    req: int
    run_id: str
    key: str


class MemorySave(WorkerMessage, tag="memory_save"):
    req: int
    run_id: str
    key: str
    value: Any = None


class PermitRequest(WorkerMessage, tag="permit_request"):
    """May a model request of about `tokens` tokens go to `endpoint`? Re-sent until granted."""

    req: int
    endpoint: str
    tokens: int = 0


class PermitRelease(WorkerMessage, tag="permit_release"):
    """The request `req` is over (or no longer wanted): it used `tokens`; `retry_after` pauses the endpoint."""

    req: int
    tokens: int = 0
    retry_after: float | None = None


class BreakerAsk(WorkerMessage, tag="breaker_ask"):
    """May a call through circuit breaker `name` go now? Re-sent until answered (see tagentd.executor.breakers)."""

    req: int
    name: str


class BreakerOutcome(WorkerMessage, tag="breaker_outcome"):
    """The call admitted by BreakerAsk `req` ended: `ok` True succeeded, False failed, None no verdict."""

    req: int
    name: str
    generation: int
    ok: bool | None = None


class BrokerCall(WorkerMessage, tag="broker"):
    """A step's broker request (send, receive, publish, space ...); re-sent until a BrokerReply with `req` comes."""

    req: int
    caller: StepRef
    op: AnyBrokerRequest


class DependencyWait(WorkerMessage, tag="dependency_wait"):
    """`ctx.dependency`: the step `caller` waits for its dependency `name` to end, at most `wait` seconds; the daemon
    parks it and answers (DependencyReply) when it has ended or the wait is over. Re-sent until answered."""

    req: int
    caller: StepRef
    name: str
    wait: float = 0.0


ToWorker = (LoadPipeline | RunTask | CancelRunning | TaskAcks | MemoryReply | PermitGrant | BrokerReply | StopWorker
            | Refused | BreakerAnswer | BreakerRevoke | DependencyReply | Batch)
FromWorker = (Hello | Heartbeat | Loaded | LoadFailed | TaskDone | LogLine | ProgressNote | MemoryGet | MemorySave
              | PermitRequest | PermitRelease | BrokerCall | BreakerAsk | BreakerOutcome | DependencyWait | Batch)

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


def encode(message: WorkerMessage) -> bytes:
    return _encoder.encode(message)


def pack(frames: list[bytes]) -> bytes:
    """One frame carrying the encoded messages `frames` in order: the frame itself when there is one, else a Batch."""
    if len(frames) == 1:
        return frames[0]
    return _encoder.encode(Batch(messages=frames))


def unpack(frame: bytes, decoder: msgspec.msgpack.Decoder) -> tuple[list[Any], list[Exception]]:
    """The messages of one frame, in order (a Batch's, one by one), and the error of each that did not decode.

    Raises msgspec.DecodeError (or UnicodeDecodeError) only when the frame itself is not a message."""
    message = decoder.decode(frame)
    if not isinstance(message, Batch):
        return [message], []
    messages: list[Any] = []
    errors: list[Exception] = []
    for encoded in message.messages:
        try:
            item = decoder.decode(encoded)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: UnicodeDecodeError for non-UTF-8 str
            errors.append(exc)
            continue
        if isinstance(item, Batch):  # a batch holds messages, never batches
            errors.append(msgspec.DecodeError("a batch inside a batch"))
        else:
            messages.append(item)
    return messages, errors

# Exit codes of a worker process, so the supervisor can say why one ended.
EXIT_OK = 0
EXIT_STUCK_STEP = 70      # a timed-out step would not stop; the worker ended itself
EXIT_LOST_DAEMON = EXIT_ORPHANED  # 71: the daemon (or the template it was forked from) is gone
EXIT_REFUSED = 72         # the daemon on the socket is not the one that started this worker

#: The environment variable that carries the daemon's token to a worker (which removes it from its environment).
TOKEN_ENV = "TAGENTD_WORKER_TOKEN"


def identity(worker_id: int, token: str) -> bytes:
    """The socket identity of worker `worker_id` of the daemon whose token is `token`."""
    return f"w{worker_id}.{token}".encode()
