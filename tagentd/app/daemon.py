"""The daemon process: sockets, the asyncio loop, and the wiring between the parts.

Guarantees:
- one daemon per runtime dir (flock on the pidfile), dirs 0700, sockets 0600;
- no request, frame or worker message can raise out of the loop: every control
  request gets exactly one reply (control_server.py), a bad worker message is
  dropped and counted;
- group commit: everything that changed in one loop tick is flushed to the store
  once, and only then are replies sent and lifecycle events published — so a
  step reported COMPLETED is on disk (with a durable store);
- a stop dispatches nothing new; SIGTERM/SIGINT: graceful stop (in-flight steps
  get time to finish, then are checkpointed); a second signal: fast stop (see
  stopping.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import zmq

from tagent_client.core.events import (
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Emit,
    Event,
    Finish,
    Persist,
    ScheduleRetry,
    TimerFired,
)
from tagent_client.define.plan import Plan
from tagent_client.errors import InvalidRequest
from tagent_client.wire import paths
from tagent_client.wire import protocol as p
from tagentd import __version__
from tagentd.app.notify import notify
from tagentd.app.stopping import Stopper
from tagentd.broker import views as broker_views
from tagentd.broker.service import BrokerShell
from tagentd.control.server import ControlServer
from tagentd.executor.interface import Executor
from tagentd.executor.local import LocalExecutor
from tagentd.executor.permits import PermitDesk
from tagentd.plumbing.channel import Channel
from tagentd.plumbing.lock import InstanceLock
from tagentd.runs import retention
from tagentd.runs import submission as submit
from tagentd.runs.durable import DurableStore
from tagentd.runs.run import Run
from tagentd.runs.store import MemoryStore, RunStore
from tagentd.runs.table import RunTable
from tagentd.settings.config import LOG_FILE, Settings
from tagentd.storage.health import RETRY_S, StoreHealth
from tagentd.watch.rules import watch_folders
from tagentd.watch.watcher import Watcher
from tagentd.worker import wire

log = logging.getLogger("tagentd")

RETENTION_EVERY_S = 3600.0


class Daemon:
    """Owns the sockets, the runs, the executor and the store; the loop's only writer of run state."""

    def __init__(self, settings: Settings, store: RunStore | None = None) -> None:
        self.settings = settings
        self.runtime_dir = Path(settings.runtime_dir)
        self.state_dir = Path(settings.state_dir)
        self.store: RunStore = store or MemoryStore()
        self.runs = RunTable(self.store, settings.run_cache_size)
        self.started_at = time.time()
        self.accepting = True
        self.stats: dict[str, int] = {"requests": 0, "bad_frames": 0, "bad_worker_messages": 0, "events_published": 0}
        self.sockets = {
            "control": paths.endpoint(self.runtime_dir, paths.CONTROL_SOCKET),
            "events": paths.endpoint(self.runtime_dir, paths.EVENTS_SOCKET),
            "workers": paths.endpoint(self.runtime_dir, paths.WORKERS_SOCKET),
        }
        self._emits: list[tuple[Run, str, dict[str, Any]]] = []
        self._unpublished: list[tuple[Run, p.EventRecord]] = []
        self._replies: list[tuple[Channel, list[bytes]]] = []
        self._dirty = asyncio.Event()
        self.stopper = Stopper(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.permits = PermitDesk(settings.endpoints, self._send_worker)
        self._commit_waiters: list[asyncio.Future[None]] = []
        self.health = StoreHealth(self.state_dir)
        self.watcher: Watcher | None = None
        self.broker = BrokerShell(self)
        self.control = ControlServer(self)
        self.submit_keys = submit.SubmitKeys()

    # -- lifecycle -------------------------------------------------------------------------------

    def _bind(self) -> None:
        self.zctx = zmq.Context()
        for name in (paths.CONTROL_SOCKET, paths.EVENTS_SOCKET, paths.WORKERS_SOCKET):
            stale = self.runtime_dir / name
            if stale.exists() or stale.is_symlink():
                stale.unlink()
        old = os.umask(0o177)
        try:
            self.control.bind(self.zctx, self.sockets["control"])
            self.broker.bind(self.zctx, self.sockets["events"])
            self.workers = self.zctx.socket(zmq.ROUTER)
            self.workers.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.workers.sndhwm = 0
            self.workers.rcvhwm = 0
            self.workers.linger = 0
            self.workers.bind(self.sockets["workers"])
        finally:
            os.umask(old)
        self.workers_channel = Channel(self.workers)
        for name in (paths.CONTROL_SOCKET, paths.EVENTS_SOCKET, paths.WORKERS_SOCKET):
            os.chmod(self.runtime_dir / name, 0o600)

    async def run(self, log_fd: int | None = None) -> int:
        self.watcher = Watcher(self, watch_folders(self.settings.watch_dirs))  # ConfigError: refuse to start
        self._bind()
        self.executor: Executor = LocalExecutor(
            size=self.settings.workers, capacity=self.settings.worker_concurrency, endpoint=self.sockets["workers"],
            send=self._send_worker, on_result=self._on_attempt, on_lost=self._on_attempt, permits=self.permits,
            heartbeat_interval=self.settings.heartbeat_interval, heartbeat_timeout=self.settings.heartbeat_timeout,
            grace=self.settings.timeout_grace, recycle_after=self.settings.recycle_after,
            load_timeout=self.settings.load_timeout, log_file=log_fd, worker_args=self.settings.worker_llm_args(),
            use_template=self.settings.worker_template,
        )
        self.executor.start()  # the worker template imports the agent runtime while recovery runs
        gc.disable()  # recovery builds ~100 objects per unfinished run: full collections would double its time
        try:
            recovered = self.store.load()
        except OSError as exc:  # e.g. cutting a torn tail on a read-only or full disk
            raise paths.unwritable(self.state_dir, "state dir", exc) from None
        finally:
            gc.enable()
        self.runs.restore(recovered)  # finished runs stay on disk (index entries) until someone asks for one
        for entry in recovered.entries:
            self.submit_keys.add(entry)
        for run in recovered.runs:
            self.apply(run, run.machine.recover(time.time()))
        self.broker.load()
        self.watcher.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopper.on_signal, sig)
        self.control.start()
        self.workers_channel.start(self._on_worker_batch)
        for coro in (self.executor.supervise(), self._committer(), self._retention_loop(), self.broker.serve()):
            self.spawn(coro)
        log.info("tagentd %s ready: pid %d, %d workers, runtime dir %s, state dir %s", __version__, os.getpid(),
                 self.settings.workers, self.runtime_dir, self.state_dir)
        notify("READY=1")
        await self.stopper.requested.wait()
        notify("STOPPING=1")
        await self._shutdown()
        return 0

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` as a task the daemon keeps (and cancels at shutdown); its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed: %r", task.exception(), exc_info=task.exception())

    def request_stop(self, *, graceful: bool, who: str, timeout: float | None = None) -> dict[str, Any]:
        """Stop: nothing new starts from now on; see stopping.py. Returns what the stop waits for."""
        return self.stopper.request(graceful=graceful, who=who, timeout=timeout)

    async def _shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        await self.stopper.drain()
        await self.executor.stop(0.0)
        await self._commit()
        await self.store.compact()  # the next start reads the index, not the WAL
        await asyncio.sleep(0.05)  # let the last replies leave before the sockets close
        for task in list(self._tasks):
            task.cancel()
        self.store.close()
        self.control.close()
        self.workers_channel.close()
        self.broker.close()
        self.zctx.term()
        for name in (paths.CONTROL_SOCKET, paths.EVENTS_SOCKET, paths.WORKERS_SOCKET):
            (self.runtime_dir / name).unlink(missing_ok=True)
        log.info("tagentd stopped")

    # -- runs ---------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        self.runs.add(run)
        self.store.created(run)
        self.apply(run, run.machine.start(time.time()))
        self.executor.pump()

    def cancel_run(self, run: Run, reason: str) -> None:
        self.apply(run, run.machine.handle(Cancelled(reason=reason), time.time()))

    def reset_run(self, run: Run, steps: list[str]) -> None:
        if not self.accepting:
            raise InvalidRequest(f"the daemon is stopping; resume or retry run {run.id} after the next start")
        run.announced_finish = False
        self.runs.reopened(run)
        self.apply(run, run.machine.reset(steps, time.time()))
        self.executor.pump()

    def feed(self, run: Run, event: Any) -> None:
        self.apply(run, run.machine.handle(event, time.time()))
        self.broker.on_event(run, event)

    def apply(self, run: Run, actions: list[Action]) -> None:
        """Carry out the engine's actions for `run` (Emits wait for the next commit).

        Any action means the run's state moved (a Dispatch without a Persist still started an attempt), so the
        store hears of it: nothing is announced that the next flush does not write.
        """
        loop = asyncio.get_running_loop()
        if actions:
            self.store.changed(run)
        for action in actions:
            if isinstance(action, Dispatch):
                self.executor.dispatch(run.attempt(action))
            elif isinstance(action, Persist):
                self.store.changed(run)
            elif isinstance(action, Emit):
                self._emits.append((run, action.topic, action.data))
            elif isinstance(action, CancelTask):
                self.executor.cancel(run.id, action.task, action.attempt)
            elif isinstance(action, ScheduleRetry):
                loop.call_later(max(0.0, action.at - time.time()), self._timer, run.id)
            elif isinstance(action, Finish):
                self.executor.forget_run(run.id)
        if actions:
            self._dirty.set()
            self.broker.on_actions(run, actions)

    def _timer(self, run_id: str) -> None:
        run = self.runs.live(run_id)
        if run is not None and not run.finished:
            self.feed(run, TimerFired())
            self.executor.pump()

    def _on_attempt(self, run_id: str, event: Event) -> None:
        """What became of an attempt, from the executor: its result, or the verdict on it once lost."""
        run = self.runs.live(run_id)
        if run is not None:
            self.feed(run, event)

    def apply_retention(self, *, max_age_s: float | None = None, max_runs: int | None = None,
                        dry_run: bool = False, at_most: int | None = None) -> list[str]:
        """Remove expired finished runs (see retention.py), the oldest `at_most` of them if given; returns their ids."""
        age = self.settings.retention_days * 86400 if max_age_s is None else max_age_s
        limit = self.settings.retention_max_runs if max_runs is None else max_runs
        doomed = self.runs.expire(now=time.time(), max_age_s=age, max_runs=limit, dry_run=dry_run, at_most=at_most)
        if doomed and not dry_run:
            for run_id in doomed:
                self.executor.forget_run(run_id)
            self._dirty.set()
        return doomed

    async def _retention_loop(self) -> None:
        while True:
            while len(self.apply_retention(at_most=retention.BATCH)) == retention.BATCH:
                await self.committed()  # a backlog (say, after lowering a limit) goes one batch per commit
            await asyncio.sleep(RETENTION_EVERY_S)

    # -- commit --------------------------------------------------------------------------------------

    async def _committer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._commit()

    async def _commit(self) -> None:
        """Flush the store, then publish this tick's events and send its replies (group commit).

        Events are numbered and entered in the run's history before the flush, so the flush writes them too.
        """
        now = time.time()
        emitted = [(run, run.add_event(topic, data, now)) for run, topic, data in self._emits]
        self._emits.clear()
        self._unpublished += emitted
        self.broker.match_triggers(emitted)  # the runs they start are queued in this same commit
        events, self._unpublished = self._unpublished, []
        replies, self._replies = self._replies, []
        waiters, self._commit_waiters = self._commit_waiters, []
        token = self.broker.before_flush()
        try:
            if self.broker.has_writes():
                await asyncio.gather(self.store.flush(), self.broker.store.flush())
            else:
                await self.store.flush()
        except Exception as exc:  # noqa: BLE001 - a failing disk must not kill the loop; nothing is announced
            self.health.commit_failed(exc)  # logged once per outage; requests that need a commit are refused
            self._unpublished[:0], self._replies[:0], self._commit_waiters[:0] = events, replies, waiters
            self.broker.flush_failed(token)
            await asyncio.sleep(RETRY_S)
            self._dirty.set()
            return
        self.health.commit_succeeded()
        touched: set[Run] = set()
        for run, record in events:
            if record.topic == "run.finished":
                run.announced_finish = True
                self.runs.finished(run)
            touched.add(run)
        self.stats["events_published"] += len(events)
        self.broker.after_commit(token, [record for _, record in events])
        for run in touched:
            run.notify()
        for channel, frames in replies:
            channel.send(frames)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.runs.trim()  # finished runs beyond the cache leave memory, now that all of them is on disk
        if 0 < self.settings.retention_max_runs < self.runs.finished_count:
            self.apply_retention(at_most=retention.BATCH)  # a big backlog goes over several commits

    async def committed(self) -> None:
        """Return once everything changed so far is on disk (the next commit has flushed it)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.append(waiter)
        self._dirty.set()
        await waiter

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """An event that belongs to no run, on the broker's bus after the next commit (it may start triggers)."""
        self.broker.publish(topic, data, None)

    def reply_after_commit(self, channel: Channel, frames: list[bytes]) -> None:
        """Send `frames` on `channel` once everything changed so far is on disk."""
        self._replies.append((channel, frames))
        self._dirty.set()

    # -- submitting ----------------------------------------------------------------------------------

    async def submit_source(self, path: str, source: str, target: str | None = None, params: dict[str, Any] | None = None,
                            model: str | None = None, who: str = "daemon", *, plan: Plan | None = None,
                            idempotency_key: str | None = None) -> Run:
        """Start a run of the pipeline file `path` whose text is `source` (`tagent submit` and the folder watcher).

        The file is loaded in a worker unless `plan` is given (a declarative file, read without Python).
        Raises InvalidRequest while shutting down, PipelineLoadError / PipelineValidationError for a bad
        file, ConfigError for an agent step without a model.
        """
        if not self.accepting:
            raise InvalidRequest("the daemon is shutting down and accepts no new runs")
        if plan is None:
            plan = await submit.load_plan(self.executor, path, source, target)
        run = submit.new_run(plan, path=path, source=source, target=target, params=params,
                             model=model or self.settings.model, who=who, idempotency_key=idempotency_key)
        self.start_run(run)
        return run

    # -- workers socket -------------------------------------------------------------------------------------

    def _send_worker(self, identity: bytes, payload: bytes) -> bool:
        return self.workers_channel.send_now([identity, payload])

    def _on_worker_batch(self, batch: list[list[bytes]]) -> None:
        for frames in batch:
            try:
                self._on_worker_message(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the loop
                self.stats["bad_worker_messages"] += 1
                log.exception("bad message from worker %r", frames[0])
        self.executor.pump()

    def _on_worker_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.stats["bad_worker_messages"] += 1
            return
        identity, payload = frames
        msg = wire.from_worker_decoder.decode(payload)
        if self.executor.on_worker_message(identity, msg):  # a worker's own business (results too), or a stranger's
            return
        if isinstance(msg, wire.LogLine):
            run = self.runs.live(msg.run_id)
            if run is not None:
                run.add_log(msg.step, msg.level, msg.message, msg.ts)
                self.store.changed(run)
                run.notify()
        elif isinstance(msg, wire.MemoryGet):
            run = self.runs.live(msg.run_id)
            value = run.memory.get(msg.key) if run is not None else None
            self._send_worker(identity, wire.encode(wire.MemoryReply(req=msg.req, value=value)))
        elif isinstance(msg, wire.MemorySave):
            run = self.runs.live(msg.run_id)
            if run is not None:
                run.remember(msg.key, msg.value)
                self.store.changed(run)
            self._replies.append((self.workers_channel, [identity, wire.encode(wire.MemoryReply(req=msg.req))]))
            self._dirty.set()
        elif isinstance(msg, wire.ProgressNote):
            data = {"run_id": msg.run_id, "step": msg.step, "fraction": msg.fraction, "message": msg.message}
            self.broker.publish_now("step.progress", data)
        elif isinstance(msg, wire.BrokerCall):
            self.broker.on_worker_call(identity, msg)

    # -- status ------------------------------------------------------------------------------------------------

    def info(self) -> p.DaemonInfo:
        now = time.time()
        stats = dict(self.stats)
        stats.update(self.executor.stats())
        capacity = self.executor.capacity()
        stats["queued_tasks"] = capacity.queued
        stats["in_flight_tasks"] = capacity.in_flight
        stats["checkpoint_problems"] = list(self.store.problems)
        stats["replies_dropped"] = self.control.replies_dropped
        stats["runs"] = self.runs.stats()
        stats["llm_permits_granted"] = self.permits.granted
        stats["llm_endpoints"] = self.permits.stats()
        stats["broker"] = broker_views.summary(self.broker)
        stats["stopping"] = self.stopper.info()
        stats["checkpoint_problems"] += self.broker.store.problems
        stats["state_dir_problem"] = self.health.problem()
        return p.DaemonInfo(
            pid=os.getpid(), version=__version__, started_at=self.started_at, uptime_s=now - self.started_at,
            runtime_dir=str(self.runtime_dir), state_dir=str(self.state_dir),
            sockets={k: v.removeprefix("ipc://") for k, v in self.sockets.items()},
            workers=self.executor.workers(), runs_active=len(self.runs.active()), runs_total=len(self.runs),
            durable=self.store.durable, stats=stats,
            watch_dirs=self.watcher.folder_paths() if self.watcher is not None else [],
        )


def setup_logging(state_dir: Path, level: str, foreground: bool) -> int:
    """Log to state_dir/tagentd.log (and stderr in the foreground); returns the log file's fd for workers."""
    handlers: list[logging.Handler] = []
    log_path = state_dir / LOG_FILE
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    handlers.append(file_handler)
    if foreground:
        handlers.append(logging.StreamHandler())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level.upper())
    os.chmod(log_path, 0o600)
    return file_handler.stream.fileno()


def serve(settings: Settings, *, foreground_log: bool = True) -> int:
    """Run a daemon until it is stopped; returns the process exit code. Raises TagentError on bad setup."""
    runtime_dir = paths.ensure_private_dir(Path(settings.runtime_dir), "runtime dir")
    state_dir = paths.ensure_private_dir(Path(settings.state_dir), "state dir")
    lock = InstanceLock(runtime_dir)
    try:
        try:
            log_fd = setup_logging(state_dir, settings.log_level, foreground_log)
            store: RunStore = DurableStore(state_dir, settings.wal_segment_bytes) if settings.durable else MemoryStore()
            daemon = Daemon(settings, store)
        except OSError as exc:  # a file or subdir of the state dir we may not write (the dir itself was checked)
            raise paths.unwritable(state_dir, "state dir", exc) from None
        return asyncio.run(daemon.run(log_fd))
    finally:
        lock.close()
