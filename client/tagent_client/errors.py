"""One error tree for the whole product.

Every error has a stable `code` (a short string) that the wire protocol carries
and that `EXIT_CODES` maps to the CLI's exit status, in one table.
"""

from __future__ import annotations

from typing import Any


class TagentError(Exception):
    """Base of every error tagentd or its client raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class PipelineValidationError(TagentError):
    """A pipeline definition is wrong; `problems` lists every problem found, one line each."""

    code = "invalid_pipeline"

    def __init__(self, pipeline: str, problems: list[str]) -> None:
        pipeline = shorten(pipeline)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"pipeline {pipeline!r} is invalid ({len(problems)} problem(s)):\n{lines}")
        self.pipeline = pipeline
        self.problems = list(problems)


def shorten(name: Any, keep: int = 40) -> Any:
    """A name fit for a one-line message: a very long one is cut, saying how long it was."""
    if isinstance(name, str) and len(name) > 2 * keep:
        return f"{name[:keep]}...({len(name):,} characters)"
    return name


class PipelineLoadError(TagentError):
    """A pipeline file could not be imported (syntax error, import error, no pipeline in it)."""

    code = "load_failed"


class RetryableError(TagentError):
    """Raise from a step to ask for a retry (the step's retry policy still applies)."""

    code = "retryable"


class StepTimeoutError(TagentError, TimeoutError):
    """A step attempt ran past its timeout."""

    code = "step_timeout"


class WorkerLostError(TagentError):
    """The worker process running a step attempt died or stopped answering."""

    code = "worker_lost"


class ProtocolError(TagentError):
    """A message on a socket was malformed, oversized, of an unknown type or version."""

    code = "protocol"


class DaemonUnavailable(TagentError):
    """No daemon answers on the runtime dir's control socket."""

    code = "daemon_unavailable"


class RequestTimeout(TagentError):
    """The daemon did not answer a request in time."""

    code = "request_timeout"


class NotFound(TagentError):
    """A run, step or other named object does not exist."""

    code = "not_found"


class InvalidRequest(TagentError):
    """A well-formed request that asks for something impossible (bad state, bad argument)."""

    code = "invalid_request"


class RequestTooLarge(InvalidRequest):
    """A request is larger than the daemon accepts (`max_message_bytes`); refused before it is sent."""

    code = "request_too_large"


class NameTooLong(InvalidRequest):
    """A name (pipeline, step, topic, space, key, id) is longer than `bounds.NAME_MAX` characters."""

    code = "name_too_long"


class ConfigError(TagentError):
    """The configuration, a directory's ownership or its permissions are wrong."""

    code = "config"


class AlreadyRunning(TagentError):
    """Another daemon holds the runtime dir's lock."""

    code = "already_running"


class RunFailed(TagentError):
    """A run ended FAILED or CANCELLED while a caller waited for success."""

    code = "run_failed"


class StepExecutionError(RunFailed):
    """A step failed for good (the design documents' name): `step` names it, `error_type` is its exception's type."""

    code = "step_failed"

    def __init__(self, step: str, message: str, error_type: str | None = None) -> None:
        super().__init__(f"Step '{shorten(step)}' failed: {message}", step=step, error_type=error_type)
        self.step = step
        self.error_type = error_type


class PipelineDeadlockError(RunFailed):
    """No step of a run could make progress (the design documents' name): `steps` lists those that never started."""

    code = "pipeline_deadlock"

    def __init__(self, message: str, steps: list[str] | None = None) -> None:
        super().__init__(message, steps=list(steps or []))
        self.steps = list(steps or [])


class PermissionDenied(TagentError):
    """A step asked the broker for something its pipeline may not do (a space's allow-list)."""

    code = "permission_denied"


class MailboxFull(TagentError):
    """A pipeline's mailbox holds its limit of unacknowledged messages (retryable: it may drain)."""

    code = "mailbox_full"
    retryable = True


class LockLost(TagentError):
    """A lease on a space's key is not held any more (expired, released, its attempt ended, or a newer one was
    granted), so a write fenced by it, or its renewal, was refused."""

    code = "lock_lost"


class LockTimeout(TagentError, TimeoutError):
    """A lock on a space's key was not granted within the time asked for (retryable: it may be free later)."""

    code = "lock_timeout"


class DiskFull(TagentError):
    """The state dir's file system is full (or over quota): nothing can be saved, so requests that must be
    durable are refused until space is freed; the daemon resumes by itself (retryable)."""

    code = "disk_full"
    retryable = True


class CircuitOpen(TagentError):
    """A circuit breaker (an LLM endpoint's, or a step's `ctx.breaker(name)`) is open: the call was not made.

    Retryable: the step's retry policy waits it out. `retry_after` is the seconds until the breaker half-opens
    (None while its one probe call is out), and the engine delays the retry at least that long.
    """

    code = "circuit_open"
    retryable = True
    retry_after: float | None = None

    def __init__(self, message: str, *, breaker: str, retry_after: float | None = None) -> None:
        super().__init__(message, breaker=breaker, retry_after=retry_after)
        self.breaker = breaker
        self.retry_after = retry_after


class DynamicStepError(TagentError):
    """`ctx.add_step` was given a step that cannot join the run (bad arguments, a name in use, an unknown
    dependency, a function a worker cannot find by name); the adding attempt fails, and is not retried."""

    code = "invalid_step"


ERRORS: dict[str, type[TagentError]] = {
    cls.code: cls
    for cls in (
        TagentError, PipelineValidationError, PipelineLoadError, RetryableError, StepTimeoutError,
        WorkerLostError, ProtocolError, DaemonUnavailable, RequestTimeout, NotFound, InvalidRequest,
        ConfigError, AlreadyRunning, RunFailed, StepExecutionError, PipelineDeadlockError, PermissionDenied, MailboxFull, RequestTooLarge, NameTooLong,
        DiskFull, CircuitOpen, LockLost, LockTimeout,
        DynamicStepError,
    )
}

#: CLI exit status per error code. 0 = ok, 1 = the run failed, 2 = usage, 3 = no daemon.
EXIT_CODES: dict[str, int] = {
    "run_failed": 1,
    "step_failed": 1,
    "pipeline_deadlock": 1,
    "invalid_pipeline": 4,
    "load_failed": 4,
    "usage": 2,
    "daemon_unavailable": 3,
    "request_timeout": 5,
    "not_found": 6,
    "invalid_request": 7,
    "protocol": 8,
    "config": 9,
    "already_running": 10,
    "permission_denied": 11,
    "mailbox_full": 12,
    "request_too_large": 13,
    "name_too_long": 14,
    "disk_full": 15,
    "circuit_open": 16,
    "lock_lost": 17,
    "lock_timeout": 18,
    "invalid_step": 4,
}


def is_retryable(exc: BaseException) -> bool:
    """Retryable by default: ConnectionError, TimeoutError, RetryableError, or any error with `retryable = True`."""
    if isinstance(exc, (RetryableError, ConnectionError, TimeoutError)):
        return True
    return getattr(exc, "retryable", False) is True


MAX_RETRY_AFTER = 300.0


def retry_after_of(exc: BaseException) -> float | None:
    """The least wait before a retry that `exc` asks for (its `retry_after` seconds: CircuitOpen's time to
    half-open, a 429's Retry-After), at most MAX_RETRY_AFTER; None if it asks for none."""
    wait = getattr(exc, "retry_after", None)
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
        return min(float(wait), MAX_RETRY_AFTER)
    return None


def exit_code_for(code: str) -> int:
    """The CLI exit status for an error code (unknown codes exit 1)."""
    return EXIT_CODES.get(code, 1)


def error_from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> TagentError:
    """Rebuild an error received over the wire as the matching class."""
    cls = ERRORS.get(code, TagentError)
    if cls is PipelineValidationError:
        details = details or {}
        err = PipelineValidationError(details.get("pipeline", "?"), details.get("problems", [message]))
        err.details = dict(details)
        return err
    err = cls.__new__(cls)
    TagentError.__init__(err, message, **(details or {}))
    return err


def describe(exc: BaseException) -> str:
    """The first line of `str(exc)`, or its type name when empty; never raises, even for an exception whose
    `__str__` does (then its repr, or failing that its type name, says so)."""
    try:
        text = str(exc)
    except Exception as failure:  # noqa: BLE001 - a broken __str__ is the exception's problem, not ours
        try:
            text = f"{exc!r} (its str() raised {type(failure).__name__})"
        except Exception:  # noqa: BLE001
            text = f"{type(exc).__name__} (its message cannot be shown: str() raised {type(failure).__name__})"
    return (text.strip().splitlines() or [type(exc).__name__])[0]
