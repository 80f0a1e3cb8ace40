"""Request handlers for the control socket: one function per request type.

A handler takes the daemon and the decoded request and returns the reply's
result (plain data or a result Struct), or raises a TagentError that becomes an
ErrorReply. Handlers that must wait (submit loads the file in a worker; events
and logs long-poll) are coroutines; the rest answer at once. Replies are sent
only after the daemon's next commit, so what a reply reports is on disk — but
for `ANSWERED_AT_ONCE`, which report nothing that must be. While the state dir
cannot be written, every other request is refused at once (store_health.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tagent_client.core.state import RunStatus, StepStatus
from tagent_client.errors import InvalidRequest, NotFound
from tagent_client.wire import protocol as p
from tagent_client.wire import protocol_broker as b
from tagentd import __version__
from tagentd.broker.handlers import CLIENT_HANDLERS as BROKER_HANDLERS
from tagentd.plumbing import peers
from tagentd.runs import submission as submitting
from tagentd.runs.run import Run

if TYPE_CHECKING:
    from tagentd.app.daemon import Daemon

MAX_WAIT = 30.0


def wait_limit(wait: float) -> float:
    """A long-poll's `wait` clamped to [0, MAX_WAIT]; NaN means 0 (it compares false, so it would never expire)."""
    return min(max(wait, 0.0), MAX_WAIT) if wait == wait else 0.0


def who(req: p.Request) -> str:
    """The sender as the audit trail names it: OS-verified uid/pid, the client's own marked "reported"."""
    return peers.who(req)


def find_run(daemon: Daemon, run_id: str) -> Run:
    run = daemon.runs.get(run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r}; list runs with 'tagent runs'", run_id=run_id)
    return run


def ping(daemon: Daemon, req: p.Ping) -> dict[str, Any]:
    """Liveness, and the limits a client must know: request size, how long a submit's import may take."""
    limits = p.Limits(max_message_bytes=daemon.settings.max_message_bytes, load_timeout=daemon.settings.load_timeout)
    return {"pid": os.getpid(), "version": __version__, "protocol": p.PROTOCOL_VERSION, "limits": limits}


async def submit(daemon: Daemon, req: p.Submit) -> p.SubmitResult:
    """Start a run (or register a triggered pipeline); a repeat of an idempotency key returns its run instead."""
    if req.idempotency_key:
        return await daemon.submit_keys.once(req.idempotency_key, daemon.runs, req.path, lambda: _submit(daemon, req))
    return await _submit(daemon, req)


async def _submit(daemon: Daemon, req: p.Submit) -> p.SubmitResult:
    plan = await submitting.load_plan(daemon.executor, req.path, req.source, req.target)
    if plan.triggers and not req.run:  # a triggered pipeline is registered; each matching event starts a run
        daemon.broker.register(path=req.path, source=req.source, target=req.target,
                               model=req.model or daemon.settings.model, plan=plan, who=who(req))
        return p.SubmitResult(run_id="", pipeline=plan.name, steps=[s.name for s in plan.steps], registered=True,
                              triggers=list(plan.triggers))
    run = await daemon.submit_source(req.path, req.source, req.target, req.params, req.model, who(req), plan=plan,
                                     idempotency_key=req.idempotency_key)
    return submitting.accepted(run)


def list_runs(daemon: Daemon, req: p.ListRuns) -> list[p.RunSummary]:
    return daemon.runs.newest(max(1, min(req.limit, 10_000)), req.status)


def get_run(daemon: Daemon, req: p.GetRun) -> p.RunDetail:
    return find_run(daemon, req.run_id).detail()


def get_result(daemon: Daemon, req: p.GetResult) -> dict[str, Any]:
    return find_run(daemon, req.run_id).result().to_dict()


def cancel(daemon: Daemon, req: p.Cancel) -> dict[str, Any]:
    run = find_run(daemon, req.run_id)
    if run.finished:
        raise InvalidRequest(f"run {run.id} already ended {run.state.status.value}; nothing to cancel")
    run.audit(who(req), "cancel", reason=req.reason)
    daemon.cancel_run(run, req.reason)
    return {"run_id": run.id, "status": run.state.status.value}


def resume(daemon: Daemon, req: p.Resume) -> dict[str, Any]:
    run = find_run(daemon, req.run_id)
    if run.state.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise InvalidRequest(f"run {run.id} is {run.state.status.value}; only failed or cancelled runs can be resumed")
    again = [n for n, s in run.state.steps.items() if s.status in (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)]
    daemon.reset_run(run, again)  # refused while the daemon stops: then nothing is audited
    run.audit(who(req), "resume", steps=again)
    return {"run_id": run.id, "steps": again}


def retry(daemon: Daemon, req: p.Retry) -> dict[str, Any]:
    run = find_run(daemon, req.run_id)
    if req.step not in run.state.steps:
        raise NotFound(f"run {run.id} has no step {req.step!r} (steps: {', '.join(run.state.steps)})")
    if not run.finished:
        raise InvalidRequest(f"run {run.id} is still {run.state.status.value}; retry a step once the run has ended")
    daemon.reset_run(run, [req.step])
    run.audit(who(req), "retry", step=req.step)
    return {"run_id": run.id, "step": req.step}


async def get_events(daemon: Daemon, req: p.GetEvents) -> p.EventBatch:
    run = find_run(daemon, req.run_id)
    deadline = time.monotonic() + wait_limit(req.wait)
    while True:
        events = run.events_after(req.after)
        remaining = deadline - time.monotonic()
        if events or run.announced_finish or remaining <= 0:
            return p.EventBatch(events=events, finished=run.announced_finish, status=run.state.status.value)
        await run.wait_for_news(remaining)


async def get_logs(daemon: Daemon, req: p.GetLogs) -> p.LogBatch:
    run = find_run(daemon, req.run_id)
    deadline = time.monotonic() + wait_limit(req.wait)
    while True:
        lines = run.logs_after(req.after)
        remaining = deadline - time.monotonic()
        if lines or run.announced_finish or remaining <= 0:
            return p.LogBatch(lines=lines, finished=run.announced_finish)
        await run.wait_for_news(remaining)


def get_history(daemon: Daemon, req: p.GetHistory) -> list[Any]:
    return list(find_run(daemon, req.run_id).history)


def get_transcript(daemon: Daemon, req: p.GetTranscript) -> dict[str, Any]:
    run = find_run(daemon, req.run_id)
    step = run.state.steps.get(req.step)
    if step is None:
        raise NotFound(f"run {run.id} has no step {req.step!r} (steps: {', '.join(run.state.steps)})")
    kind = run.plan.step(req.step).kind.value
    return {"run_id": run.id, "step": req.step, "kind": kind, "attempts": list(step.transcript)}


def gc(daemon: Daemon, req: p.Gc) -> dict[str, Any]:
    removed = daemon.apply_retention(max_age_s=req.max_age_s, max_runs=req.max_runs, dry_run=req.dry_run)
    return {"removed": removed, "dry_run": req.dry_run}


def daemon_status(daemon: Daemon, req: p.DaemonStatus) -> p.DaemonInfo:
    return daemon.info()


def get_watch(daemon: Daemon, req: p.GetWatch) -> p.WatchInfo:
    if daemon.watcher is None:
        raise InvalidRequest("the folder watcher is not running yet; try again in a moment")
    return daemon.watcher.info()


def shutdown(daemon: Daemon, req: p.Shutdown) -> dict[str, Any]:
    if req.timeout is not None and not req.timeout >= 0:
        raise InvalidRequest(f"a stop's timeout must be a number of seconds >= 0, got {req.timeout!r}")
    return daemon.request_stop(graceful=req.graceful, who=who(req), timeout=req.timeout)


HANDLERS: dict[type, Callable[..., Any]] = {
    p.Ping: ping,
    p.Submit: submit,
    p.ListRuns: list_runs,
    p.GetRun: get_run,
    p.GetResult: get_result,
    p.Cancel: cancel,
    p.Resume: resume,
    p.Retry: retry,
    p.GetEvents: get_events,
    p.GetLogs: get_logs,
    p.GetHistory: get_history,
    p.GetTranscript: get_transcript,
    p.Gc: gc,
    p.DaemonStatus: daemon_status,
    p.Shutdown: shutdown,
    p.GetWatch: get_watch,
    **BROKER_HANDLERS,
}

#: Replies that report nothing that must be on disk: sent at once, not after the next commit, so they answer
#: even while the state dir cannot be written (`daemon_status` then says so).
ANSWERED_AT_ONCE = (p.Ping, p.DaemonStatus, p.Shutdown)
#: Reads that may be parked for a while: if the state dir stopped being writable meanwhile, they end with its
#: error at once rather than wait for a commit (what they would report may not be on disk).
PARKED_READS = (p.GetEvents, p.GetLogs, b.WaitEvent)
