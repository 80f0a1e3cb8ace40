"""Why a run failed: its root failures, worked out from the run's state (`RunDetail`) and its events.

Pure: no I/O, so `tagent why` and tests use the same rules (docs/operations.md, "Why a run failed"):

- A root failure is a failed step whose error is its own. A step skipped, cancelled or failed with a
  `DependencyError` because an upstream step did not complete ("upstream step 'x' failed") is not one:
  it is listed under the root it leads back to, transitively. A `fail_fast` cancellation is listed under
  the step that triggered it. A compensation that failed in a `rollback_failed` run is a root failure too.
- Root failures are ordered by when they failed, first first.
- Each carries its error type and message, its traceback, its attempts (each one's error and the delay
  before the next, from the `step.retrying` / `step.failed` events), and the command to run next.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..wire.protocol import EventRecord, RunDetail, StepInfo

#: Reasons that name the step they happened because of ("upstream step 'x' failed", "fail_fast: step 'x' failed").
_CAUSED_BY = (re.compile(r"^upstream step '([^']+)' "), re.compile(r"^fail_fast: step '([^']+)' failed"))


@dataclass
class Attempt:
    """One failed attempt: its number, its error, and the delay before the next one (None: it was the last)."""

    number: int
    error: str
    retry_in_s: float | None = None


@dataclass
class RootFailure:
    """A step that failed for its own reason, and what followed from it."""

    step: str
    error_type: str
    message: str
    traceback: str | None
    failed_at: float | None
    attempts: list[Attempt] = field(default_factory=list)
    #: Steps skipped, cancelled or failed because of this one (transitively), in the run's step order.
    affected: list[str] = field(default_factory=list)
    next: str = ""


@dataclass
class Diagnosis:
    """A run's status and its root failures, first first (none for a completed run)."""

    run_id: str
    status: str
    error: str | None
    failures: list[RootFailure]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cause(info: StepInfo) -> str | None:
    """The upstream step this step's skip, cancellation or DependencyError names, if any."""
    if info.status == "failed" and info.error and info.error.startswith("DependencyError: "):
        text = info.error.removeprefix("DependencyError: ")
    elif info.status in ("skipped", "cancelled"):
        text = info.skip_reason or ""
    else:
        return None
    for pattern in _CAUSED_BY:
        found = pattern.match(text)
        if found:
            return found.group(1)
    return None


def diagnose(detail: RunDetail, events: Iterable[EventRecord] = ()) -> Diagnosis:
    """The root failures of the run in `detail`; `events` (the run's, any order) add each one's attempts."""
    causes = {name: cause(info) for name, info in detail.steps.items()}
    roots = [name for name, info in detail.steps.items()
             if (info.status == "failed" and causes[name] is None) or info.compensation == "failed"]
    attempts = _attempts(events)
    failures = [_failure(detail, name, attempts.get(name, []), _affected(name, causes)) for name in roots]
    failures.sort(key=lambda f: f.failed_at if f.failed_at is not None else float("inf"))
    return Diagnosis(run_id=detail.run_id, status=detail.status, error=detail.error, failures=failures)


def _root_of(name: str, causes: Mapping[str, str | None]) -> str:
    seen = {name}
    while (up := causes.get(name)) is not None and up not in seen:
        seen.add(up)
        name = up
    return name


def _affected(root: str, causes: Mapping[str, str | None]) -> list[str]:
    return [name for name, up in causes.items() if up is not None and name != root and _root_of(name, causes) == root]


def _attempts(events: Iterable[EventRecord]) -> dict[str, list[Attempt]]:
    found: dict[str, list[Attempt]] = {}
    for ev in sorted(events, key=lambda e: e.seq):
        data = ev.data if isinstance(ev.data, dict) else {}
        if ev.topic not in ("step.retrying", "step.failed") or not data.get("attempt"):
            continue  # attempt 0: a step failed without running (a DependencyError)
        retry_at = data.get("retry_at") if ev.topic == "step.retrying" else None
        delay = max(0.0, retry_at - ev.ts) if isinstance(retry_at, (int, float)) else None
        found.setdefault(data["step"], []).append(Attempt(int(data["attempt"]), str(data.get("error", "")), delay))
    return found


def _failure(detail: RunDetail, name: str, attempts: list[Attempt], affected: list[str]) -> RootFailure:
    info = detail.steps[name]
    if info.status == "failed":
        kind, _, message = (info.error or "error: unknown").partition(": ")
    else:
        kind, message = "CompensationFailed", "its compensation failed during the rollback (see `tagent history`)"
    return RootFailure(step=name, error_type=kind, message=message, traceback=info.traceback,
                       failed_at=info.finished_at, attempts=attempts, affected=affected,
                       next=next_step(detail.run_id, name, kind))


def next_step(run_id: str, step: str, error_type: str) -> str:
    """What to do about a root failure of `step` with an error of `error_type`."""
    retry = f"tagent retry {run_id} --step {step}"
    if error_type == "StepTimeoutError":
        return f"the step ran past its timeout: raise `timeout=` on step {step!r} or make it faster, then `{retry}`"
    if error_type == "WorkerLostError":
        return f"the worker died: see the `tagentd` log, then `{retry}`"
    if error_type == "CompensationFailed":
        return f"see `tagent history {run_id}` for the compensation's error; undo step {step!r} by hand"
    return f"fix the cause, then `{retry}`"


def last_frames(traceback: str, lines: int = 8) -> str:
    """The end of a traceback: its last `lines` lines (the innermost frames and the error)."""
    kept = traceback.rstrip().splitlines()
    return "\n".join((["  ..."] if len(kept) > lines else []) + kept[-lines:])


def render(diagnosis: Diagnosis, *, full: bool = False) -> str:
    """The diagnosis as text: one block per root failure; `full` prints whole tracebacks."""
    head = f"run {diagnosis.run_id}: {diagnosis.status}"
    if not diagnosis.failures:
        done = diagnosis.status == "completed"
        return head + (": nothing failed" if done else f" ({diagnosis.error or 'no step failed for its own reason'})")
    lines = [head + f": {len(diagnosis.failures)} root failure(s), first first"]
    for n, failure in enumerate(diagnosis.failures, 1):
        lines += ["", f"{n}. step {failure.step}: {failure.error_type}: {failure.message}"]
        for attempt in failure.attempts:
            then = f"; retried after {attempt.retry_in_s:.1f}s" if attempt.retry_in_s is not None else ""
            lines.append(f"   attempt {attempt.number}: {attempt.error}{then}")
        if failure.traceback:
            trace = failure.traceback.rstrip() if full else last_frames(failure.traceback)
            lines += ["   traceback:"] + ["     " + line for line in trace.splitlines()]
        if failure.affected:
            lines.append(f"   because of it: {', '.join(failure.affected)}")
        lines.append(f"   next: {failure.next}")
    return "\n".join(lines)
