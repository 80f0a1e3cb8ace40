"""The worker process: runs dispatched tasks of user pipelines for the daemon, up to K at once.

    python -m tagentd.worker --endpoint unix://PATH --id N --capacity K --heartbeat S --grace S

or, on another machine, with the credentials the daemon issued in $TAGENTD_WORKER_CURVE (credentials.py), over
the daemon's CURVE endpoint: `--endpoint tcp://HOST:PORT` (in another process, e.g. a Ray actor: tagentd.worker.remote).

It imports user code (the daemon never does), caches pipeline modules by content
hash, and speaks `tagentd.worker.wire` over a DEALER socket with identity `w<N>.<token>`, the
token being the daemon's, taken from $TAGENTD_WORKER_TOKEN (and removed from the environment).

Guarantees:
- A result (`TaskDone`) is re-sent about every second until the daemon acknowledges it (`TaskAcks`).
- One bad message never stops the loop: malformed or unknown frames are counted (`Heartbeat.dropped`) and dropped.
- The worker does not outlive the process that started it (`--parent-pid`): PR_SET_PDEATHSIG on Linux, armed
  first thing in main() and followed by a check that the parent is still that pid (a parent that died before the
  signal was armed is noticed at once), plus a parent-pid check every TICK.
- A daemon that answers with `Refused` (not the daemon that started it) ends the worker at once with EXIT_REFUSED.
- A sync step still running `--grace` seconds after its timeout or cancellation ends the worker with
  EXIT_STUCK_STEP once its results are acknowledged (or after STUCK_FLUSH seconds), so it can be replaced.

Exit status: wire.EXIT_OK (stopped when asked), EXIT_STUCK_STEP, EXIT_LOST_DAEMON, EXIT_REFUSED; 1 = crash;
2 = bad arguments.
SIGTERM asks for a graceful stop, a second SIGTERM stops at once; SIGINT is ignored (the daemon decides).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tagent_client.core.events import Event, StepFailed, StepTimedOut
from tagent_client.core.state import ErrorInfo
from tagent_client.define.pipeline import Pipeline
from tagent_client.define.step import schema_ref
from tagent_client.errors import PipelineLoadError, PipelineValidationError, TagentError, describe, is_retryable
from tagent_client.run.additions import pipeline_for
from tagent_client.run.context import StepContext, constraints_of
from tagent_client.run.llm import LLMConfig, LLMRuntime
from tagent_client.run.local import run_task
from tagent_client.run.runners.execute import coerce_input, coerce_inputs
from tagent_client.run.runners.function import SYNC_CPU, sync_call_running
from tagentd.worker import wire
from tagentd.worker.breakers import BreakerClient
from tagentd.worker.link import ENCODE_ERRORS, WorkerLink
from tagentd.worker.llm import PermitClient, agent_runtime_loaded, needs_agent, preload_agent_runtime
from tagentd.worker.loader import CACHE, schema_classes
from tagentd.worker.resources import ResourceMeter
from tagentd.worker.services import WorkerServices
from tagentd.worker.traces import WorkerTraces

TICK = 0.1            # housekeeping period: re-sends, heartbeat, parent check, exit deadlines
STOP_FLUSH = 5.0      # graceful stop: how long to wait for the last acknowledgements
STUCK_FLUSH = 2.0     # stuck step: how long to wait for acknowledgements before exiting

log = logging.getLogger("tagentd.worker")

AttemptKey = tuple[str, str, int]  # (run_id, task, attempt)


class SourceNotLoaded(PipelineLoadError):
    """A task names a pipeline file this worker has not loaded, and its source was not sent (retryable)."""

    retryable = True


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PipelineValidationError):
        extra = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return f"pipeline {exc.pipeline!r} is invalid: {exc.problems[0] if exc.problems else '?'}{extra}"
    return describe(exc)


class Worker:
    """One worker process's state; every method runs on its event loop unless it says otherwise."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.id = args.id
        self.capacity = args.capacity
        self.heartbeat = args.heartbeat
        self.grace = args.grace
        self.load_timeout = args.load_timeout
        self.parent_pid = args.parent_pid
        self.token = args.token
        self.loop = asyncio.get_running_loop()
        self.zmq = zmq.Context()
        self.link = WorkerLink(self.zmq, args.endpoint, wire.identity(self.id, self.token),
                               getattr(args, "credentials", None))
        # events.sock is next to workers.sock: a step's event subscriptions connect to it as a client's do
        local = args.endpoint.startswith(("ipc://", "unix://"))
        runtime_dir = Path(args.endpoint.split("://", 1)[1]).parent if local else None
        self.breakers = BreakerClient(self.link, self.loop)
        self.services = WorkerServices(self.link, self.loop, self.breakers, runtime_dir=runtime_dir)
        self.permits = PermitClient(self.link, self.loop)
        self.llm = LLMRuntime(config=LLMConfig.from_json(args.llm or "{}"), limiter=self.permits,
                              breakers=self.breakers)
        self.traces = WorkerTraces.start(args.otlp_endpoint, self.llm) if args.otlp_endpoint else None
        self.slots = asyncio.Semaphore(self.capacity)
        self.running: dict[AttemptKey, tuple[asyncio.Task[None], wire.RunTask]] = {}
        self.meter = ResourceMeter(self.loop)  # what each attempt used of this process, sent with its result
        self.loading: dict[str, asyncio.Future[Any]] = {}
        self.loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"w{self.id}-loader")
        self.agent_ready: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._preloading = False
        self.dropped = 0
        self.accepting = True
        self.stopping = False
        self.exit_at: tuple[int, float] | None = None  # (code, deadline): exit once acked, or at the deadline
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.sigterms = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until told to stop (or stuck, or orphaned); returns the exit status."""
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(self.capacity + 4, thread_name_prefix=f"w{self.id}-step"))
        if threading.current_thread() is threading.main_thread():  # in-process (a Ray actor) it may not be
            self.loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        self.link.send(wire.Hello(worker_id=self.id, pid=os.getpid(), capacity=self.capacity, token=self.token))
        self.link.start(self.on_frame, self.on_link_closed)
        housekeeping = self.loop.create_task(self.housekeep())
        try:
            return await self.exited
        finally:
            housekeeping.cancel()

    def exit_when_flushed(self, code: int, reason: str, wait: float) -> None:
        """Stop taking work; exit with `code` once every result is acknowledged, or after `wait` seconds."""
        self.accepting = False
        deadline = time.monotonic() + wait
        if self.exit_at is not None:
            old_code, old_deadline = self.exit_at
            code, deadline = old_code or code, min(deadline, old_deadline)  # a failure status is never downgraded
            if code == old_code and deadline == old_deadline:
                return
        log.log(logging.WARNING if code else logging.INFO, "%s; exiting with status %d", reason, code)
        self.exit_at = (code, deadline)
        self.check_exit()

    def on_link_closed(self, why: str) -> None:
        """The daemon ended this worker's connection (it stopped, or refused what it read): nothing can reach it."""
        log.error("the connection to the daemon on %s ended (%s); exiting with status %d", self.link.endpoint, why,
                  wire.EXIT_LOST_DAEMON)
        if not self.exited.done():
            self.exited.set_result(wire.EXIT_LOST_DAEMON)

    def check_exit(self) -> None:
        if self.exit_at is None or self.exited.done():
            return
        code, deadline = self.exit_at
        if self.link.unacked == 0 or time.monotonic() >= deadline:
            self.exited.set_result(code)

    def on_sigterm(self) -> None:
        self.sigterms += 1
        if self.sigterms == 1:
            self.stop(graceful=True, reason="SIGTERM")
        else:
            self.exit_when_flushed(wire.EXIT_OK, "second SIGTERM: stopping now", 0)

    def stop(self, *, graceful: bool, reason: str) -> None:
        if not graceful:
            self.exit_when_flushed(wire.EXIT_OK, f"stopping at once ({reason})", 0)
            return
        self.accepting = False
        self.stopping = True
        log.info("stopping after %d running task(s) finish (%s)", len(self.running), reason)

    async def housekeep(self) -> None:
        """Every TICK: re-send unacked messages, heartbeat, notice an orphaned or finished worker."""
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if os.getppid() != self.parent_pid:
                log.error("the daemon (pid %d) is gone; exiting with status %d", self.parent_pid, wire.EXIT_LOST_DAEMON)
                if not self.exited.done():
                    self.exited.set_result(wire.EXIT_LOST_DAEMON)
                return
            self.link.resend_due(now)
            self.meter.sample()
            if now >= next_beat:
                next_beat = now + self.heartbeat
                self.link.send(wire.Heartbeat(worker_id=self.id, running=list(self.running), dropped=self.dropped,
                                              permits=self.permits.outstanding, breakers=self.breakers.outstanding))
            if self.stopping and not self.running:
                self.exit_when_flushed(wire.EXIT_OK, "stopped: no task left running", STOP_FLUSH)
            self.check_exit()
            await asyncio.sleep(TICK)

    # -- messages -----------------------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """Handle each message of a frame in order (a Batch holds several); a malformed one is counted and dropped."""
        try:
            messages, errors = wire.unpack(frame, wire.to_worker_decoder)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: UnicodeDecodeError for non-UTF-8 str
            messages, errors = [], [exc]
        for exc in errors:
            self.dropped += 1
            if self.dropped <= 10 or self.dropped % 1000 == 0:
                log.warning("dropped a malformed message in a frame of %d bytes (%d so far): %s", len(frame),
                            self.dropped, exc)
        for message in messages:
            try:
                self.handle(message)
            except Exception:  # noqa: BLE001 - one bad message must not stop the worker
                log.exception("error handling %s", type(message).__name__)

    def handle(self, message: wire.WorkerMessage) -> None:
        if isinstance(message, wire.RunTask):
            self.on_run(message)
        elif isinstance(message, wire.TaskAcks):
            for key in message.keys:
                self.link.acked(tuple(key))
            self.check_exit()
        elif isinstance(message, (wire.MemoryReply, wire.BrokerReply, wire.DependencyReply)):
            self.services.resolve(message)
        elif isinstance(message, wire.PermitGrant):
            self.permits.granted(message)
        elif isinstance(message, wire.BreakerAnswer):
            self.breakers.answered(message)
        elif isinstance(message, wire.BreakerRevoke):
            self.breakers.revoked(message)
        elif isinstance(message, wire.LoadPipeline):
            self.loop.create_task(self.on_load(message))
        elif isinstance(message, wire.CancelRunning):
            self.on_cancel(message)
        elif isinstance(message, wire.StopWorker):
            self.stop(graceful=message.graceful, reason="StopWorker")
        elif isinstance(message, wire.Refused):
            self.exit_when_flushed(wire.EXIT_REFUSED, f"the daemon on {self.link.endpoint} refused this worker: "
                                   f"{message.reason}", 0)

    def want_agent_runtime(self) -> None:
        """Make sure pydantic-ai and friends are imported before an agent step runs. A worker forked from the
        template has them already; one started on its own imports them off the loop, once (1-2 s), when it first
        meets an agent step."""
        if not self._preloading:
            self._preloading = True
            if agent_runtime_loaded():
                self.agent_ready.set_result(True)
            else:
                threading.Thread(target=preload_agent_runtime, args=(self.agent_ready,), name="preload",
                                 daemon=True).start()

    async def on_load(self, message: wire.LoadPipeline) -> None:
        try:
            pipeline = await self.pipeline(message.source_hash, message.path, message.source, message.target)
            if any(step.uses_model for step in pipeline.steps.values()):
                self.want_agent_runtime()
            schemas = {step: schema_ref(cls) for step, cls in schema_classes(pipeline).items()}
            plan = CACHE.plan(message.source_hash, message.target, pipeline)
            self.link.send(wire.Loaded(req=message.req, plan=plan, schemas=schemas))
        except PipelineValidationError as exc:
            self.link.send(wire.LoadFailed(req=message.req, code=exc.code, message=f"{message.path}: {one_line(exc)}",
                                           problems=exc.problems, pipeline=exc.pipeline))
        except PipelineLoadError as exc:
            self.link.send(wire.LoadFailed(req=message.req, code=exc.code, message=one_line(exc)))
        except ENCODE_ERRORS as exc:
            self.link.send(wire.LoadFailed(req=message.req, code="load_failed",
                                           message=f"{message.path}: the pipeline's definition is not plain data: {one_line(exc)}"))
        except Exception as exc:  # noqa: BLE001 - report, never crash
            log.exception("loading %s failed unexpectedly", message.path)
            self.link.send(wire.LoadFailed(req=message.req, code="load_failed",
                                           message=f"{message.path}: {type(exc).__name__}: {one_line(exc)}"))

    async def pipeline(self, hash_: str, path: str, source: str | None, target: str | None) -> Pipeline:
        """The validated pipeline, from the cache, or imported on the loader thread (one import at a time)."""
        cached = CACHE.cached_pipeline(hash_, target)
        if cached is not None:
            return cached
        pending = self.loading.get(hash_)
        if pending is not None:
            await asyncio.shield(pending)
        elif hash_ not in CACHE:
            if source is None:
                raise SourceNotLoaded(f"{path}: worker w{self.id} has not loaded pipeline file {hash_[:12]} and the task "
                                      f"carried no source; send RunTask.source the first time a worker sees a hash")
            pending = self.loop.run_in_executor(self.loader, CACHE.module, hash_, path, source)
            self.loading[hash_] = pending
            try:
                async with asyncio.timeout(self.load_timeout):  # not wait_for: on 3.11 it can swallow a cancel
                    await asyncio.shield(pending)
            except TimeoutError:
                self.exit_when_flushed(wire.EXIT_STUCK_STEP, f"importing {path} did not finish in {self.load_timeout:g}s",
                                       STUCK_FLUSH)
                raise PipelineLoadError(f"{path}: importing the file took longer than {self.load_timeout:g}s; "
                                        f"move slow work out of module level") from None
            finally:
                self.loading.pop(hash_, None)
        return CACHE.pipeline(hash_, path, None, target)

    # -- tasks ----------------------------------------------------------------------------------

    def on_run(self, message: wire.RunTask) -> None:
        task = message.task
        key = (message.run_id, task.task, task.attempt)
        if key in self.running or self.link.resend(key):
            return  # a repeated dispatch: already running, or done and waiting for its ack
        if not self.accepting:
            error = ErrorInfo(type="WorkerLostError", message=f"worker w{self.id} is stopping; run the task elsewhere",
                              retryable=True)
            self.send_result(message, StepFailed(task=task.task, attempt=task.attempt, error=error))
            return
        job = self.loop.create_task(self.attempt(message), name=f"{message.run_id}:{task.task}:{task.attempt}")
        self.running[key] = (job, message)
        job.add_done_callback(lambda _job: self.running.pop(key, None))

    async def attempt(self, message: wire.RunTask) -> None:
        key = (message.run_id, message.task.task, message.task.attempt)
        async with self.slots:
            SYNC_CPU.set(self.meter.begin(key))  # this task's context: its sync calls add their thread CPU
            try:
                event = await self.execute(message)
            except Exception as exc:  # noqa: BLE001 - a result must go back, or the step would stay RUNNING
                log.exception("running %s of run %s failed unexpectedly", message.task.task, message.run_id)
                error = ErrorInfo(type=type(exc).__name__, retryable=False,
                                  message=f"worker w{self.id} could not run the step: {describe(exc)}")
                event = StepFailed(task=message.task.task, attempt=message.task.attempt, error=error)
            finally:
                used = self.meter.end(key)
        resources = None if used is None else wire.AttemptResources(seconds=used[0], cpu_seconds=used[1],
                                                                    peak_rss_bytes=used[2])
        # The only attempt here (a chain's step): no other result can join its frame; it leaves a loop turn sooner.
        self.send_result(message, event, resources, at_once=len(self.running) <= 1)
        if isinstance(event, StepTimedOut):
            self.watch_thread(message, "timed out")

    async def execute(self, message: wire.RunTask) -> Event:
        task = message.task
        try:  # a pipeline already validated is taken without an await (every task but a file's first)
            pipeline = CACHE.cached_pipeline(message.source_hash, message.target)
            if pipeline is None:
                pipeline = await self.pipeline(message.source_hash, message.path, message.source, message.target)
        except (PipelineLoadError, PipelineValidationError) as exc:
            text = one_line(exc) if isinstance(exc, PipelineLoadError) else f"{message.path}: {one_line(exc)}"
            error = ErrorInfo(type=type(exc).__name__, message=text, retryable=is_retryable(exc))
            return StepFailed(task=task.task, attempt=task.attempt, error=error)
        try:
            pipeline = pipeline_for(pipeline, task)  # a step added at run time: rebuilt from its spec
            step = pipeline.steps.get(task.step)
            if step is None:
                raise TagentError(f"pipeline {pipeline.name!r} in {message.path} has no step {task.step!r}")
            if needs_agent(step, task.phase):
                self.want_agent_runtime()
                if not self.agent_ready.done():  # loaded already (a worker of the template): no thread-safe hop
                    await asyncio.wrap_future(self.agent_ready)
            ctx = StepContext(
                services=self.services, run_id=message.run_id, pipeline=pipeline.name, step_name=task.step,
                attempt=task.attempt, params=message.params, shared=pipeline.shared_context,
                inputs=coerce_inputs(pipeline, task.inputs), item=task.item, item_index=task.item_index,
                trigger=message.trigger, task=task.task, constraints=constraints_of(pipeline, step), definition=pipeline,
                decode=functools.partial(coerce_input, pipeline),
            )
        except Exception as exc:  # noqa: BLE001 - a bad task becomes a failed attempt
            error = ErrorInfo(type=type(exc).__name__, message=one_line(exc), retryable=False)
            return StepFailed(task=task.task, attempt=task.attempt, error=error)
        if self.traces is None:
            return await run_task(pipeline, task, ctx, message.model, self.llm, as_data=True)
        return await run_task(pipeline, task, ctx, message.model, self.llm, as_data=True, tracer=self.traces.tracer,
                              trace_parent=self.traces.parent(message.traceparent))

    def send_result(self, message: wire.RunTask, event: Event, resources: wire.AttemptResources | None = None, *,
                    at_once: bool = False) -> None:
        """Send the attempt's outcome, re-sent until the daemon acknowledges it. The output is already plain
        data (run_task checked it); should the event still not encode (e.g. an agent transcript holding a tool's
        odd return value), a StepFailed with StepOutputError goes instead: a result always goes back (`at_once`:
        now rather than with this loop turn's frame, `Channel.send`)."""
        key = (message.run_id, message.task.task, message.task.attempt)
        try:
            self.link.send_until_acked(key, wire.TaskDone(run_id=message.run_id, event=event, resources=resources),
                                       at_once=at_once)
        except Exception as exc:  # noqa: BLE001 - RecursionError included: never leave the step RUNNING
            error = ErrorInfo(type="StepOutputError", retryable=False,
                              message=f"step {message.task.step!r}: its result cannot be sent to the daemon: {describe(exc)}")
            failed = StepFailed(task=event.task, attempt=event.attempt, error=error, started_at=getattr(event, "started_at", None))
            self.link.send_until_acked(key, wire.TaskDone(run_id=message.run_id, event=failed, resources=resources))

    def on_cancel(self, message: wire.CancelRunning) -> None:
        key = (message.run_id, message.task, message.attempt)
        self.link.acked(key)  # a result still waiting for its ack no longer matters
        entry = self.running.get(key)
        if entry is not None:
            job, dispatched = entry
            job.cancel()
            self.watch_thread(dispatched, "was cancelled")

    def watch_thread(self, message: wire.RunTask, what: str) -> None:
        """After --grace seconds, end the worker if the attempt's sync call is still running in its thread."""
        task = message.task
        thread_key = (message.run_id, task.step, task.attempt, task.item_index)

        def check() -> None:
            if sync_call_running(thread_key):
                self.exit_when_flushed(
                    wire.EXIT_STUCK_STEP,
                    f"step {task.step!r} of run {message.run_id} (attempt {task.attempt}) {what} but its sync "
                    f"function is still running {self.grace:g}s later", STUCK_FLUSH)

        self.loop.call_later(self.grace, check)
