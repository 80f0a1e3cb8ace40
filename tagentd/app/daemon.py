"""The daemon process: sockets, the asyncio loop, and the wiring between the parts.

This module only wires and runs: each part is given the ports it uses
(tagentd/plumbing/ports.py, tagentd/runs/ports.py), never the daemon. The start before it
(the dirs, the lock, control.sock and the porter that answers pings while this module loads)
is launch.py's.

- runs: `RunDriver` (tagentd/runs/driver.py) starts, feeds and stops them;
- the group commit: `GroupCommit` (commit.py), with the run driver, the broker and
  the watcher's seen-file as participants;
- control.sock: `ControlServer` and its handlers (tagentd/control/), every reply
  through one router (tagentd/control/router.py);
- workers.sock (a Unix stream socket the loop drives itself, tagentd/plumbing/framed.py):
  the executor (tagentd/executor/: where steps run, its workers' own messages) and the worker-message table for the steps' requests
  (tagentd/control/workers.py); with `worker_listen`, also a CURVE tcp endpoint for
  workers on other machines (tagentd/executor/curve.py), replies routed per worker
  (tagentd/plumbing/worker_sockets.py);
- events.sock and the broker: `BrokerShell` (tagentd/broker/service.py);
- the folder watcher (tagentd/watch/); stopping (stopping.py);
- the dashboard, when `web` is set: a process of its own that web.py starts and supervises.

Guarantees:
- one daemon per runtime dir (flock on the pidfile), dirs 0700, sockets 0600;
- no request, frame or worker message can raise out of the loop: every control
  request gets exactly one reply (tagentd/control/server.py), a bad worker
  message is dropped and counted;
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from tagent_client.wire import paths
from tagent_client.wire import protocol as p
from tagentd import __version__
from tagentd.app.commit import GroupCommit
from tagentd.app.executors import make_executor
from tagentd.app.notify import notify
from tagentd.app.stopping import Stopper
from tagentd.app.web import WebSupervisor
from tagentd.broker import views as broker_views
from tagentd.broker.service import BrokerShell
from tagentd.control import handlers as control
from tagentd.control.broker_calls import BrokerCalls
from tagentd.control.dependency_waits import DependencyWaits
from tagentd.control.porter import Porter
from tagentd.control.router import Router
from tagentd.control.server import ControlServer
from tagentd.control.workers import WorkerMessages, WorkerPorts
from tagentd.executor.breakers import BreakerDesk
from tagentd.executor.curve import CurveGate
from tagentd.executor.interface import Executor, RunningAttempt
from tagentd.executor.permits import PermitDesk
from tagentd.metrics.instruments import Metrics
from tagentd.plumbing import collector, lifeline
from tagentd.plumbing.framed import FrameListener
from tagentd.plumbing.worker_sockets import WorkerSockets
from tagentd.runs.driver import RunDriver
from tagentd.runs.durable import DurableStore
from tagentd.runs.store import MemoryStore, RunStore
from tagentd.runs.table import RunTable
from tagentd.settings.config import Settings
from tagentd.storage.health import StoreHealth
from tagentd.watch.rules import FolderSpec
from tagentd.watch.seen import SeenFiles
from tagentd.watch.watcher import Watcher

log = logging.getLogger("tagentd")


class Daemon:
    """Owns the sockets, the store, the executor and the parts, wires them together and runs the loop."""

    def __init__(self, settings: Settings, store: RunStore | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()  # the daemon's own registry; `get_metrics` renders it on request
        self.runtime_dir = Path(settings.runtime_dir)
        self.state_dir = Path(settings.state_dir)
        self.store: RunStore = store or MemoryStore()
        self.runs = RunTable(self.store, settings.run_cache_size)
        self.started_at = time.time()
        self.stats: dict[str, int] = {"requests": 0, "bad_frames": 0, "bad_worker_messages": 0, "events_published": 0}
        self.sockets = {
            "control": paths.endpoint(self.runtime_dir, paths.CONTROL_SOCKET),
            "events": paths.endpoint(self.runtime_dir, paths.EVENTS_SOCKET),
            "workers": f"unix://{self.runtime_dir / paths.WORKERS_SOCKET}",  # local workers: framed.py, not ZeroMQ
        }
        self._tasks: set[asyncio.Task[Any]] = set()
        self.health = StoreHealth(self.state_dir)
        self.commit = GroupCommit(self.health, on_commit=self.metrics.commit_observer())
        self.driver = RunDriver(settings=settings, runs=self.runs, store=self.store, stats=self.stats,
                                mark_dirty=self.commit.mark_dirty, committed=self.commit.committed)
        self.permits = PermitDesk(settings.endpoints, self._send_worker)
        self.watcher: Watcher | None = None
        self.dependency_waits: DependencyWaits | None = None  # made with the workers socket, in run()
        self.web: WebSupervisor | None = None  # started once the sockets answer, in run()
        self.broker = BrokerShell(settings, ops=self.driver, mark_dirty=self.commit.mark_dirty,
                                  steps_in_flight=self._steps_in_flight, runs_written=self.driver.all_written,
                                  on_fsync=self.metrics.fsync_observer("broker"))
        self.driver.observe(self.broker)
        self.breakers = BreakerDesk(settings.breaker_rules().rule_for, self._send_worker, self.publish)
        self.router = Router(self.spawn)
        self.submit_keys = self.driver.submit_keys
        ports = control.Ports(settings=settings, ops=self.driver, broker=self.broker, submit_keys=self.submit_keys,
                              status=self.info, watch=self._watch_info, stop=self.request_stop,
                              metrics=self.metrics.exposition)
        self.control = ControlServer(ports=ports, router=self.router, health=self.health, stats=self.stats,
                                     max_bytes=settings.max_message_bytes, reply_after_commit=self.commit.reply_after_commit)

    # -- lifecycle -------------------------------------------------------------------------------

    def _bind(self, zctx: zmq.Context, control_sock: zmq.Socket) -> None:
        """Take over control.sock (bound by launch.py, its porter answering pings meanwhile); bind the others."""
        self.zctx = zctx
        self.control.attach(control_sock)
        old = os.umask(0o177)
        try:
            self.broker.bind(self.zctx, self.sockets["events"])
            self.workers = FrameListener(self.sockets["workers"].removeprefix("unix://"), self.stats)
        finally:
            os.umask(old)
        self.workers_channel = WorkerSockets(self.workers, self.stats)
        self.curve: CurveGate | None = None
        if self.settings.worker_listen is not None:  # workers on other machines: tcp with CURVE, issued keys only
            self.curve = CurveGate(self.zctx, self.settings.worker_listen, self.stats,
                                   advertise=self.settings.worker_advertise)
            self.workers_channel.add_remote(self.curve.channel, self.curve.admits)
        for name in (paths.EVENTS_SOCKET, paths.WORKERS_SOCKET):
            os.chmod(self.runtime_dir / name, 0o600)

    async def run(self, folders: list[FolderSpec], zctx: zmq.Context, porter: Porter, log_fd: int | None = None) -> int:
        """Load and recover, then serve until stopped; the requests `porter` held are answered first.

        `folders`: the watched folders, checked by launch.py (`watch_folders`)."""
        if self.settings.otlp_endpoint:  # traces on: the SDK is imported only now (ConfigError if missing)
            from tagent_client.run.tracing import SCOPE
            from tagentd.plumbing import otlp
            from tagentd.runs.traces import RunTraces

            self.tracer_provider = otlp.start_exporting(self.settings.otlp_endpoint, "tagentd")
            self.driver.traces = RunTraces(self.tracer_provider.get_tracer(SCOPE), self.runs)
        seen = SeenFiles.load(self.state_dir, self.commit.mark_dirty)
        self.commit.join(self.driver, self.broker, seen)  # in this order: the runs' events go first (triggers)
        self.watcher = Watcher(self.settings, folders, ops=self.driver, register=self.broker.register,
                               publish=self.publish, seen=seen)
        self._bind(zctx, porter.sock)
        self.executor: Executor = make_executor(self.settings, endpoint=self.sockets["workers"], send=self._send_worker,
                                                report=self.driver.on_attempt, permits=self.permits,
                                                breakers=self.breakers, log_fd=log_fd, curve=self.curve,
                                                metrics=self.metrics)
        self.driver.executor = self.executor
        self.metrics.add_collector(self._scraped)
        self.stopper = Stopper(self.driver, self.executor, self.store)
        collecting = gc.isenabled()  # off already when `tagentd start` turned it off for the start-up (cli/main.py)
        gc.disable()  # recovery builds ~100 objects per unfinished run: full collections would double its time
        try:
            recovered = self.store.load()
        except OSError as exc:  # e.g. cutting a torn tail on a read-only or full disk
            raise paths.unwritable(self.state_dir, "state dir", exc) from None
        finally:
            if collecting:
                gc.enable()
        self.runs.restore(recovered)  # finished runs stay on disk (index entries) until someone asks for one
        for entry in recovered.entries:
            self.submit_keys.add(entry)
        for run in recovered.runs:
            self.driver.recover(run)
        self.broker.load()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopper.on_signal, sig)
        self.control.start(porter.handover(), porter.pings)
        calls = BrokerCalls(broker=self.broker, router=self.router, channel=self.workers_channel)
        self.dependency_waits = DependencyWaits(ops=self.driver, channel=self.workers_channel,
                                                reply_after_commit=self.commit.reply_after_commit, spawn=self.spawn)
        messages = WorkerMessages(WorkerPorts(executor=self.executor, ops=self.driver, broker=self.broker,
                                              broker_calls=calls, dependency_waits=self.dependency_waits,
                                              channel=self.workers_channel,
                                              reply_after_commit=self.commit.reply_after_commit,
                                              results_together=self.driver.results_together), self.stats)
        self.workers_channel.start(messages.on_batch)
        if self.curve is not None:
            self.curve.start()
        for coro in (self.executor.supervise(), self.commit.run(), self.driver.retention_loop(), self.broker.serve()):
            self.spawn(coro)
        if self.settings.web:
            self.web = WebSupervisor(self.settings, log_fd)
            self.spawn(self.web.run())
        log.info("tagentd %s ready: pid %d, %d workers, runtime dir %s, state dir %s", __version__, os.getpid(),
                 self.settings.workers, self.runtime_dir, self.state_dir)
        notify("READY=1")
        # What answering needs no part of starts once the control socket answers (these callbacks run after the
        # requests already waiting on it): workers (`tagentd start` does not wait for the worker template's imports,
        # and a step submitted meanwhile waits for a worker; the load waits up to `load_timeout`), the folder
        # watcher (watchdog; files dropped meanwhile are found by its first scan), prometheus-client
        # (metrics/instruments.py), and the garbage collector.
        # One per loop turn, so requests that arrive meanwhile are answered between them, not after all four.
        one_per_turn(loop, [self.executor.start, self.watcher.start, self.metrics.build, collect_after_start])
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
        if self.web is not None:
            await self.web.stop()
        await self.stopper.drain()
        await self.executor.stop(0.0)
        await self.commit.commit()
        await self.store.compact()  # the next start reads the index, not the WAL
        if self.driver.traces is not None:
            from tagentd.plumbing import otlp

            self.driver.traces.close_all("daemon_stopped")
            await asyncio.to_thread(otlp.stop_exporting, self.tracer_provider)
        await asyncio.sleep(0.05)  # let the last replies leave before the sockets close
        for task in list(self._tasks):
            task.cancel()
        self.store.close()
        self.control.close()
        if self.curve is not None:
            self.curve.close()
        self.workers_channel.close()
        self.broker.close()
        self.zctx.term()
        for name in (paths.CONTROL_SOCKET, paths.EVENTS_SOCKET, paths.WORKERS_SOCKET):
            (self.runtime_dir / name).unlink(missing_ok=True)
        log.info("tagentd stopped")

    # -- ports ------------------------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """An event that belongs to no run, on the broker's bus after the next commit (it may start triggers)."""
        self.broker.publish(topic, data, None)

    def _send_worker(self, identity: bytes, payload: bytes) -> bool:
        return self.workers_channel.send_now([identity, payload])

    def _scraped(self) -> Any:
        """The metric families read from the parts at a scrape (app/metering.py)."""
        from tagentd.app.metering import Scraped  # noqa: PLC0415 - prometheus-client's families: with the first scrape

        return Scraped(runs=self.runs, executor=self.executor, permits=self.permits, breakers=self.breakers,
                       broker=self.broker).collect()

    def _steps_in_flight(self) -> list[RunningAttempt]:
        """The attempts running on workers now (the broker's registry)."""
        return self.executor.running()

    def _watch_info(self) -> p.WatchInfo | None:
        return self.watcher.info() if self.watcher is not None else None

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
        stats["idempotency_keys"] = len(self.submit_keys)
        stats["runs"] = self.runs.stats()
        stats["llm_permits_granted"] = self.permits.granted
        stats["llm_endpoints"] = self.permits.stats()
        stats["breakers"] = self.breakers.stats()
        stats["broker"] = broker_views.summary(self.broker)
        stats["dependency_waits"] = self.dependency_waits.stats() if self.dependency_waits is not None else {}
        stats["stopping"] = self.stopper.info()
        stats["checkpoint_problems"] += self.broker.store.problems
        stats["state_dir_problem"] = self.health.problem()
        workers = self.executor.workers()
        # Workers start after the control socket answers: until then (the template's imports) they are "starting".
        stats["workers_starting"] = max(0, self.settings.workers - sum(1 for w in workers if w.state == "ready"))
        stats["web"] = self.web.info() if self.web is not None else {"enabled": False}
        return p.DaemonInfo(
            pid=os.getpid(), version=__version__, started_at=self.started_at, uptime_s=now - self.started_at,
            runtime_dir=str(self.runtime_dir), state_dir=str(self.state_dir),
            sockets={k: v.split("://", 1)[-1] for k, v in self.sockets.items()},
            workers=workers, runs_active=len(self.runs.active()), runs_total=len(self.runs),
            durable=self.store.durable, stats=stats,
            watch_dirs=self.watcher.folder_paths() if self.watcher is not None else [],
            cluster=self.executor.cluster(),
        )


def one_per_turn(loop: asyncio.AbstractEventLoop, calls: list[Callable[[], object]]) -> None:
    """Run `calls` in order, each in its own turn of `loop` (the sockets are polled between two of them)."""
    if not calls:
        return

    def step() -> None:
        try:
            calls[0]()
        finally:  # a failing call (logged by the loop) does not keep the later ones from running
            one_per_turn(loop, calls[1:])

    loop.call_soon(step)


def collect_after_start() -> None:
    """Turn the garbage collector back on if the start-up turned it off, after one collection, freezing what is left;
    then give the C heap's free pages back (what recovery and imports freed).

    `tagentd start --foreground` turns it off before its imports (cli/main.py): what start-up allocates (modules,
    classes, recovered runs) lives as long as the daemon, so collections during it freed next to nothing and cost
    a tenth of the time to the first answer. Frozen (`gc.freeze`), those objects are skipped by later collections,
    which come at the pace of `collector.tune()`.
    """
    if not gc.isenabled():
        gc.collect()
        gc.freeze()
        gc.enable()
    collector.tune()
    lifeline.release_free_memory()


def serve(settings: Settings, folders: list[FolderSpec], zctx: zmq.Context, porter: Porter, log_fd: int) -> int:
    """Build the daemon and run it until it is stopped (launch.py has claimed the dirs and bound control.sock);
    returns the process exit code. Raises TagentError on bad setup."""
    state_dir = Path(settings.state_dir)
    try:
        metrics = Metrics()
        store: RunStore = (DurableStore(state_dir, settings.wal_segment_bytes, on_fsync=metrics.fsync_observer("runs"))
                           if settings.durable else MemoryStore())
        daemon = Daemon(settings, store, metrics)
    except OSError as exc:  # a file or subdir of the state dir we may not write (the dir itself was checked)
        raise paths.unwritable(state_dir, "state dir", exc) from None
    return asyncio.run(daemon.run(folders, zctx, porter, log_fd))
