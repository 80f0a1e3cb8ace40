"""Request handlers for the control socket: one function per request type.

A handler takes the `Ports` it is given (never the daemon) and the decoded
request, and returns the reply's result (plain data or a result Struct), or
raises a TagentError that becomes an ErrorReply (router.py). Handlers that must
wait (submit loads the file in a worker; events and logs long-poll) are
coroutines; the rest answer at once. A broker request from a client goes to the
broker's handler (tagentd/broker/handlers.py) with no step as its caller
(`route`). Replies are sent only after the daemon's next commit, so what a reply
reports is on disk — but for `ANSWERED_AT_ONCE`, which report nothing that must
be. While the state dir cannot be written, every other request is refused at
once (tagentd/storage/health.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tagent_client.core.state import RunStatus, StepStatus
from tagent_client.errors import InvalidRequest, NotFound
from tagent_client.wire import protocol as p
from tagent_client.wire import protocol_broker as b
from tagentd.broker import handlers as broker
from tagentd.broker.service import BrokerShell
from tagentd.control.porter import ping_result
from tagentd.plumbing import peers
from tagentd.plumbing.longpoll import wait_limit
from tagentd.runs import submission as submitting
from tagentd.runs.ports import RunOps
from tagentd.runs.run import Run
from tagentd.runs.submission import SubmitKeys
from tagentd.settings.config import Settings

MAX_WAIT = 30.0  # longest a `get_events` / `get_logs` request is parked; clients loop


@dataclass
class Ports:
    """What the control handlers are given (tagentd/app/daemon.py wires them)."""

    settings: Settings
    ops: RunOps
    broker: BrokerShell
    submit_keys: SubmitKeys
    #: `tagentd status`: the daemon's pid, sockets, workers and counters.
    status: Callable[[], p.DaemonInfo]
    #: `tagent watch`: the watched folders and files; None until the watcher has started.
    watch: Callable[[], p.WatchInfo | None]
    #: Start stopping (graceful or fast, by whom, waiting at most `timeout`); what the stop waits for.
    stop: Callable[..., dict[str, Any]]
    #: `tagentd status --metrics`: every metric, in the Prometheus text format, computed now.
    metrics: Callable[[], str]


def route(ports: Ports, req: p.Request) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The handler for `req` and its arguments: a control handler's `(ports, req)`, a broker one's `(shell, req, None)`."""
    handler = HANDLERS.get(type(req))
    if handler is not None:
        return handler, (ports, req)
    return broker.HANDLERS[type(req)], (ports.broker, req, None)


def find_run(ports: Ports, run_id: str) -> Run:
    run = ports.ops.runs.get(run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r}; list runs with 'tagent runs'", run_id=run_id)
    return run


def ping(ports: Ports, req: p.Ping) -> dict[str, Any]:
    """Liveness, and the limits a client must know: request size, how long a submit's import may take."""
    return ping_result(ports.settings.max_message_bytes, ports.settings.load_timeout)


async def submit(ports: Ports, req: p.Submit) -> p.SubmitResult:
    """Start a run (or register a triggered pipeline); a repeat of an idempotency key returns its run instead."""
    if req.idempotency_key:
        return await ports.submit_keys.once(req.idempotency_key, ports.ops.runs, req.path, lambda: _submit(ports, req))
    return await _submit(ports, req)


async def _submit(ports: Ports, req: p.Submit) -> p.SubmitResult:
    plan = await ports.ops.load_plan(req.path, req.source, req.target)
    run = await submitting.start_or_register(
        ports.ops, ports.broker.register, plan, path=req.path, source=req.source, who=peers.who(req),
        target=req.target, params=req.params, model=req.model or ports.settings.model,
        idempotency_key=req.idempotency_key, run_now=req.run)
    if run is None:  # registered: each matching event starts a run
        return p.SubmitResult(run_id="", pipeline=plan.name, steps=[s.name for s in plan.steps], registered=True,
                              triggers=list(plan.triggers))
    return submitting.accepted(run)


def list_runs(ports: Ports, req: p.ListRuns) -> list[p.RunSummary]:
    return ports.ops.runs.newest(max(1, min(req.limit, 10_000)), req.status, req.before)


def get_run(ports: Ports, req: p.GetRun) -> p.RunDetail:
    detail = find_run(ports, req.run_id).detail(with_plan=req.plan)
    if detail.trace_id and ports.settings.trace_url:  # where a user opens the run's trace
        detail.trace_url = ports.settings.trace_url.replace("{trace_id}", detail.trace_id)
    return detail


def get_result(ports: Ports, req: p.GetResult) -> dict[str, Any]:
    return find_run(ports, req.run_id).result().to_dict()


def cancel(ports: Ports, req: p.Cancel) -> dict[str, Any]:
    run = find_run(ports, req.run_id)
    if run.finished:
        raise InvalidRequest(f"run {run.id} already ended {run.state.status.value}; nothing to cancel")
    if run.state.status is RunStatus.ROLLING_BACK:
        raise InvalidRequest(f"run {run.id} is rolling back; its compensations run to the end (see tagent status)")
    run.audit(peers.who(req), "cancel", reason=req.reason)
    ports.ops.cancel_run(run, req.reason)
    return {"run_id": run.id, "status": run.state.status.value}


def rollback(ports: Ports, req: p.Rollback) -> dict[str, Any]:
    run = find_run(ports, req.run_id)
    if not run.finished or run.state.status is RunStatus.ROLLED_BACK:
        raise InvalidRequest(f"run {run.id} is {run.state.status.value}; only a run that ended (and is not rolled "
                             f"back already) can be rolled back")
    steps = ports.ops.rollback_run(run)
    if not steps:
        raise InvalidRequest(f"run {run.id} has no completed step with a compensation left to run; nothing to roll back")
    run.audit(peers.who(req), "rollback", steps=steps)
    return {"run_id": run.id, "steps": steps}


def resume(ports: Ports, req: p.Resume) -> dict[str, Any]:
    run = find_run(ports, req.run_id)
    if run.state.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise InvalidRequest(f"run {run.id} is {run.state.status.value}; only failed or cancelled runs can be resumed")
    again = [n for n, s in run.state.steps.items() if s.status in (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)]
    ports.ops.reset_run(run, again)  # refused while the daemon stops: then nothing is audited
    run.audit(peers.who(req), "resume", steps=again)
    return {"run_id": run.id, "steps": again}


def retry(ports: Ports, req: p.Retry) -> dict[str, Any]:
    run = find_run(ports, req.run_id)
    if req.step not in run.state.steps:
        raise NotFound(f"run {run.id} has no step {req.step!r} (steps: {', '.join(run.state.steps)})")
    if not run.finished:
        raise InvalidRequest(f"run {run.id} is still {run.state.status.value}; retry a step once the run has ended")
    if run.state.rolled_back_from is not None:
        raise InvalidRequest(f"run {run.id} was rolled back; submit the pipeline again instead of retrying a step")
    ports.ops.reset_run(run, [req.step])
    run.audit(peers.who(req), "retry", step=req.step)
    return {"run_id": run.id, "step": req.step}


async def get_events(ports: Ports, req: p.GetEvents) -> p.EventBatch:
    run = find_run(ports, req.run_id)
    deadline = time.monotonic() + wait_limit(req.wait, MAX_WAIT)
    while True:
        events = [] if req.until_finished else run.events_after(req.after)
        remaining = deadline - time.monotonic()
        if events or run.announced_finish or remaining <= 0:
            return p.EventBatch(events=events, finished=run.announced_finish, status=run.state.status.value)
        await (run.wait_for_end(remaining) if req.until_finished else run.wait_for_news(remaining))


async def get_logs(ports: Ports, req: p.GetLogs) -> p.LogBatch:
    run = find_run(ports, req.run_id)
    deadline = time.monotonic() + wait_limit(req.wait, MAX_WAIT)
    while True:
        lines = run.logs_after(req.after)
        remaining = deadline - time.monotonic()
        if lines or run.announced_finish or remaining <= 0:
            return p.LogBatch(lines=lines, finished=run.announced_finish)
        await run.wait_for_news(remaining)


def get_history(ports: Ports, req: p.GetHistory) -> list[Any]:
    return list(find_run(ports, req.run_id).history)


def get_transcript(ports: Ports, req: p.GetTranscript) -> dict[str, Any]:
    run = find_run(ports, req.run_id)
    step = run.state.steps.get(req.step)
    if step is None:
        raise NotFound(f"run {run.id} has no step {req.step!r} (steps: {', '.join(run.state.steps)})")
    kind = run.machine.plan.step(req.step).kind.value
    return {"run_id": run.id, "step": req.step, "kind": kind, "attempts": list(step.transcript)}


def gc(ports: Ports, req: p.Gc) -> dict[str, Any]:
    removed = ports.ops.expire(max_age_s=req.max_age_s, max_runs=req.max_runs, dry_run=req.dry_run)
    return {"removed": removed, "dry_run": req.dry_run}


def daemon_status(ports: Ports, req: p.DaemonStatus) -> p.DaemonInfo:
    return ports.status()


def get_watch(ports: Ports, req: p.GetWatch) -> p.WatchInfo:
    info = ports.watch()
    if info is None:
        raise InvalidRequest("the folder watcher is not running yet; try again in a moment")
    return info


def get_metrics(ports: Ports, req: p.GetMetrics) -> str:
    return ports.metrics()


def shutdown(ports: Ports, req: p.Shutdown) -> dict[str, Any]:
    if req.timeout is not None and not req.timeout >= 0:
        raise InvalidRequest(f"a stop's timeout must be a number of seconds >= 0, got {req.timeout!r}")
    return ports.stop(graceful=req.graceful, who=peers.who(req), timeout=req.timeout)


HANDLERS: dict[type, Callable[..., Any]] = {
    p.Ping: ping,
    p.Submit: submit,
    p.ListRuns: list_runs,
    p.GetRun: get_run,
    p.GetResult: get_result,
    p.Cancel: cancel,
    p.Resume: resume,
    p.Rollback: rollback,
    p.Retry: retry,
    p.GetEvents: get_events,
    p.GetLogs: get_logs,
    p.GetHistory: get_history,
    p.GetTranscript: get_transcript,
    p.Gc: gc,
    p.DaemonStatus: daemon_status,
    p.Shutdown: shutdown,
    p.GetWatch: get_watch,
    p.GetMetrics: get_metrics,
}

#: Replies that report nothing that must be on disk: sent at once, not after the next commit, so they answer
#: even while the state dir cannot be written (`daemon_status` then says so).
ANSWERED_AT_ONCE = (p.Ping, p.DaemonStatus, p.Shutdown, p.GetMetrics)


def answered_at_once(req: p.Request) -> bool:
    """ANSWERED_AT_ONCE, and a non-durable send (`durable=False`: acknowledged before the commit that writes it)."""
    return isinstance(req, ANSWERED_AT_ONCE) or (isinstance(req, b.SendMessage) and not req.durable)
#: Reads that may be parked for a while: if the state dir stopped being writable meanwhile, they end with its
#: error at once rather than wait for a commit (what they would report may not be on disk).
PARKED_READS = (p.GetEvents, p.GetLogs, b.WaitEvent)
