"""`WorkerPool`: spawns, watches, feeds and replaces the worker processes.

Guarantees:
- every dispatched attempt ends in exactly one report to the daemon: a result
  from the worker, or `on_lost(run_id, event)` when its worker died, stopped
  heartbeating, or overran the step's timeout plus grace (then the worker is
  killed); `DeathLedger` (deaths.py) decides who is charged, so the steps next
  to one that kills its worker are run again without using their retries;
- a dead worker is replaced on the next supervision tick (with back-off when
  workers die in a loop), so one bad step never stops the pool; workers are
  forked from a warm template process (tagentd.executor.spawner), so a replacement's
  first agent step is as quick as any other;
- queued work is dispatched round-robin across runs (fairness), each worker
  taking up to its capacity of concurrent steps; `pump` never offers work to a
  worker it has found dead, so it always returns;
- an isolated or quarantined step runs alone, in a worker started for it and
  stopped after it (at most `size` such workers at a time);
- only this pool's own workers get work: each is given the daemon's random token
  and must say it in its Hello; any other peer on workers.sock (a worker left over
  from another daemon) is sent `Refused` (admission.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tagent_client.events import Dispatch, Event, StepFailed, StepSucceeded, StepTimedOut
from tagent_client.protocol import WorkerInfo
from tagentd.executor.admission import Admission
from tagentd.executor.deaths import VERDICT_STATS, Cause, DeathLedger, how_it_ended
from tagentd.executor.queues import DispatchQueues
from tagentd.executor.spawner import Spawner, WorkerProcess
from tagentd.runs.run import Run
from tagentd.worker import wire

log = logging.getLogger("tagentd.pool")

EXIT_MEANINGS = {
    wire.EXIT_OK: "stopped",
    wire.EXIT_STUCK_STEP: "a timed-out step would not stop",
    wire.EXIT_LOST_DAEMON: "lost the daemon",
    wire.EXIT_REFUSED: "refused: not started by this daemon",
    -signal.SIGKILL: "killed",
    -signal.SIGTERM: "terminated",
    -signal.SIGSEGV: "segmentation fault",
}

LostCallback = Callable[[str, Event], None]  # (run_id, the verdict on an attempt whose worker is gone)


@dataclass
class Assignment:
    run: Run
    task: Dispatch
    worker: int
    sent_at: float
    deadline: float | None


@dataclass
class Worker:
    id: int
    proc: WorkerProcess
    capacity: int
    token: str  # the daemon's, part of its socket identity
    started_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    state: str = "starting"
    running: dict[tuple[str, str, int], Assignment] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    completed: int = 0
    loading: int = 0
    dedicated: bool = False  # started for one step that must run alone; stopped after it
    alone_for: tuple[Run, Dispatch] | None = None  # that step, until it is sent
    cause: Cause = Cause.UNKNOWN  # why it ends, when the pool ends it

    @property
    def identity(self) -> bytes:
        return wire.identity(self.id, self.token)

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) - self.loading


class WorkerPool:
    """The supervisor of N worker processes speaking tagentd.worker.wire over one ROUTER socket."""

    def __init__(self, *, size: int, capacity: int, endpoint: str, send: Callable[[bytes, bytes], bool],
                 on_lost: LostCallback, heartbeat_interval: float, heartbeat_timeout: float, grace: float,
                 recycle_after: int, load_timeout: float, log_file: int | None = None,
                 worker_args: list[str] | None = None, use_template: bool = True) -> None:
        self.size = size
        self.capacity = capacity
        self.endpoint = endpoint
        self.send = send
        self.on_lost = on_lost
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.grace = grace
        self.recycle_after = recycle_after
        self.load_timeout = load_timeout
        self.log_file = log_file
        self.worker_args = list(worker_args or [])
        self.workers: dict[int, Worker] = {}
        self.queues = DispatchQueues()
        self.loads: dict[int, tuple[asyncio.Future[wire.Loaded | wire.LoadFailed], int]] = {}
        self.accepting = True
        self.stats = collections.Counter[str]()
        self._next_id = 1
        self._next_req = 1
        self._deaths: collections.deque[float] = collections.deque(maxlen=10)
        self._ready = asyncio.Event()
        self.ledger = DeathLedger(stuck_window=grace + 10.0)
        self.admission = Admission(send, self.stats)
        self.spawner = Spawner(log_file=log_file, token=self.admission.token, stats=self.stats,
                               use_template=use_template)

    # -- processes ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker template; the workers follow on the supervision ticks once it is warm."""
        if self.size:
            self.spawner.start()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> Worker | None:
        """Start one worker; None while the template is still warming up (the next tick tries again)."""
        wid = self._next_id
        argv = ["--endpoint", self.endpoint, "--id", str(wid), "--capacity", str(self.capacity),
                "--heartbeat", str(self.heartbeat_interval), "--grace", str(self.grace), *self.worker_args]
        proc = self.spawner.spawn(argv)
        if proc is None:
            return None
        self._next_id += 1
        worker = Worker(id=wid, proc=proc, capacity=self.capacity, token=self.admission.token)
        self.workers[wid] = worker
        self.stats["workers_spawned"] += 1
        log.info("worker %d started (pid %d)", wid, proc.pid)
        return worker

    def _kill(self, worker: Worker, why: str) -> None:
        log.warning("killing worker %d (pid %d): %s", worker.id, worker.proc.pid, why)
        worker.state = "killed"
        try:
            worker.proc.kill()
        except ProcessLookupError:
            pass

    def _reap(self, worker: Worker, code: int) -> None:
        meaning = EXIT_MEANINGS.get(code, f"exit code {code}")
        del self.workers[worker.id]
        expected = worker.state in ("stopping", "recycling")
        if not expected:
            self._deaths.append(time.monotonic())
            self.stats["workers_lost"] += 1
            log.warning("worker %d (pid %d) ended: %s; %d step(s) in flight", worker.id, worker.proc.pid, meaning,
                        len(worker.running))
        self._judge(worker, code)
        if worker.alone_for is not None:  # it died before its step was sent: the step waits for another
            self.queues.put(*worker.alone_for, alone=True, first=True)
        for req, (future, wid) in list(self.loads.items()):
            if wid == worker.id and not future.done():
                future.set_exception(RuntimeError(f"worker {worker.id} ended while loading the pipeline: {meaning}"))
                del self.loads[req]

    def _judge(self, worker: Worker, code: int) -> None:
        """Report every step in flight on a worker that ended, each with the ledger's verdict."""
        jobs = [(job.run.id, job.task) for job in worker.running.values()]
        worker.running.clear()
        cause = Cause.POOL if worker.state == "stopping" else Cause.TIMEOUT if code == wire.EXIT_STUCK_STEP else worker.cause
        verdicts = self.ledger.died(worker.id, jobs, cause=cause, how=how_it_ended(code), alone=worker.dedicated,
                                    where=f"worker {worker.id} (pid {worker.proc.pid})", now=time.monotonic())
        for run_id, event in verdicts:
            self.stats[VERDICT_STATS[type(event).__name__]] += 1
            self.on_lost(run_id, event)

    def _may_spawn(self, now: float) -> bool:
        """Back-off: after 5 deaths within 5 s, start a worker at most every 2 s."""
        recent = [t for t in self._deaths if now - t < 5.0]
        return len(recent) < 5 or now - recent[-1] > 2.0

    async def supervise(self) -> None:
        """Reap, detect silence and overruns, replace, recycle — every tick, forever."""
        tick = min(0.1, self.heartbeat_interval)
        while True:
            self.check(time.monotonic())
            await asyncio.sleep(tick)

    def check(self, now: float) -> None:
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is not None:
                self._reap(worker, code)
                continue
            silent = now - worker.last_seen
            limit = self.heartbeat_timeout if worker.state != "starting" else max(30.0, self.heartbeat_timeout)
            if silent > limit and worker.state not in ("killed",):
                self._kill(worker, f"no heartbeat for {silent:.1f}s")
                continue
            for key, job in list(worker.running.items()):
                if job.deadline is not None and now > job.deadline:
                    del worker.running[key]
                    self.on_lost(job.run.id, self.ledger.overran(worker.id, job.run.id, job.task, alone=worker.dedicated,
                                                                 now=time.monotonic()))
                    worker.cause = Cause.TIMEOUT
                    self._kill(worker, f"step {job.task.step!r} of run {job.run.id} would not stop at its timeout")
            if worker.state == "recycling" and not worker.running and worker.loading == 0:
                worker.state = "stopping"
                self.send(worker.identity, wire.encode(wire.StopWorker(graceful=True)))
        if self.accepting:
            missing = self.size - sum(1 for w in self.workers.values()
                                      if w.state not in ("stopping", "recycling") and not w.dedicated)
            if missing > 0 and self._may_spawn(now):
                for _ in range(missing):
                    self._spawn()
        self.pump()

    # -- messages from workers ---------------------------------------------------------------

    def worker_for(self, identity: bytes) -> Worker | None:
        """This pool's worker with that socket identity, if it still has it."""
        wid = self.admission.worker_id(identity)
        return self.workers.get(wid) if wid is not None else None

    def on_hello(self, worker: Worker, msg: wire.Hello) -> None:
        if not self.admission.hello_matches(msg, worker.id, worker.proc.pid):
            self.admission.refuse(worker.identity, f"its hello (pid {msg.pid}) does not match worker {worker.id} "
                                                   f"(pid {worker.proc.pid}) of this daemon")
            self._kill(worker, "its hello did not match")
            return
        worker.state = "ready"
        worker.capacity = msg.capacity
        worker.last_seen = time.monotonic()
        self._ready.set()
        self.pump()

    def on_heartbeat(self, worker: Worker) -> None:
        worker.last_seen = time.monotonic()

    def on_done(self, worker: Worker | None, msg: wire.TaskDone) -> None:
        """Release the attempt's slot and acknowledge the result (duplicates are acknowledged too)."""
        event = msg.event
        if isinstance(event, (StepSucceeded, StepFailed)):  # that attempt did not kill its worker
            self.ledger.forget(msg.run_id, event.task)
        if worker is not None:
            worker.last_seen = time.monotonic()
            if isinstance(event, StepTimedOut):  # a sync step may go on running and end the worker (exit 70)
                self.ledger.timed_out(worker.id, (msg.run_id, event.task), time.monotonic())
            if worker.running.pop((msg.run_id, event.task, event.attempt), None) is not None:
                worker.completed += 1
                if self.recycle_after and worker.completed >= self.recycle_after and worker.state == "ready":
                    worker.state = "recycling"
            self.send(worker.identity, wire.encode(wire.TaskAck(run_id=msg.run_id, task=event.task, attempt=event.attempt)))

    def on_loaded(self, worker: Worker | None, msg: wire.Loaded | wire.LoadFailed) -> None:
        entry = self.loads.pop(msg.req, None)
        if worker is not None:
            worker.loading = max(0, worker.loading - 1)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    # -- work --------------------------------------------------------------------------------

    def enqueue(self, run: Run, task: Dispatch, *, first: bool = False) -> None:
        """Queue an attempt (at the front with `first`); one that must run alone waits for a worker of its own."""
        self.queues.put(run, task, alone=self.ledger.runs_alone(run.id, task), first=first)

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        self.queues.remove(run_id, task, attempt)
        for worker in self.workers.values():
            pending = worker.alone_for
            if pending is not None and (pending[0].id, pending[1].task, pending[1].attempt) == (run_id, task, attempt):
                worker.alone_for = None  # its worker is still starting: it will be stopped unused
            if worker.running.pop((run_id, task, attempt), None) is not None:
                self.send(worker.identity, wire.encode(wire.CancelRunning(run_id=run_id, task=task, attempt=attempt)))

    def forget_run(self, run_id: str) -> None:
        self.queues.forget_run(run_id)
        self.ledger.forget(run_id)

    @property
    def queued(self) -> int:
        return len(self.queues)

    def pump(self) -> int:
        """Hand queued tasks to workers with free slots, one run at a time in rotation.

        A worker leaves the rotation when it is full or found dead while sending (its task is queued again),
        so the loop ends whatever happens to the workers.
        """
        if not self.accepting:
            return 0
        sent = self._pump_alone()
        ready = [w for w in self.workers.values() if w.state == "ready" and not w.dedicated and w.free > 0]
        while ready and (waiting := self.queues.next_shared()) is not None:
            run, task = waiting
            worker = max(ready, key=lambda w: w.free)
            sent += self._send_task(worker, run, task)
            if worker.state != "ready" or worker.free <= 0:
                ready.remove(worker)
        return sent

    def _pump_alone(self) -> int:
        """Send each step that must run alone to the worker started for it, and start workers for those waiting."""
        sent = 0
        for worker in list(self.workers.values()):
            if worker.dedicated and worker.state == "ready":
                pending, worker.alone_for = worker.alone_for, None
                if pending is not None and self._send_task(worker, *pending):
                    sent += 1
                    self.stats["steps_run_alone"] += 1
                if worker.state == "ready":
                    worker.state = "recycling"  # nothing else is ever sent to it; stopped once its step is done
        dedicated = sum(1 for w in self.workers.values() if w.dedicated)
        now = time.monotonic()
        while self.queues.alone_waiting and dedicated < self.size and self._may_spawn(now):
            worker = self._spawn()
            if worker is None:  # the template is still warming up: the next tick tries again
                break
            worker.dedicated, worker.alone_for = True, self.queues.next_alone()
            dedicated += 1
        return sent

    def _send_task(self, worker: Worker, run: Run, task: Dispatch) -> int:
        """Send one attempt to `worker`: 1 if sent; 0 if the worker is gone (it is killed, the attempt queued again)."""
        src = run.source
        first = src.source_hash not in worker.sources
        msg = wire.RunTask(run_id=run.id, source_hash=src.source_hash, path=src.path, target=src.target,
                           source=src.source if first else None, task=task, params=run.state.params,
                           model=src.model, trigger=src.trigger)
        now = time.monotonic()
        deadline = now + task.timeout + self.grace + 2 * self.heartbeat_interval if task.timeout else None
        worker.running[(run.id, task.task, task.attempt)] = Assignment(run, task, worker.id, now, deadline)
        worker.sources.add(src.source_hash)
        if not self.send(worker.identity, wire.encode(msg)):
            del worker.running[(run.id, task.task, task.attempt)]
            self._kill(worker, "its socket is gone")
            self.enqueue(run, task, first=True)
            return 0
        self.stats["tasks_dispatched"] += 1
        return 1

    async def load(self, *, path: str, source: str, source_hash: str, target: str | None) -> wire.Loaded | wire.LoadFailed:
        """Import and validate a pipeline file in a worker (never here). Raises TimeoutError or RuntimeError."""
        deadline = time.monotonic() + self.load_timeout
        while True:
            ready = [w for w in self.workers.values() if w.state == "ready" and not w.dedicated]
            if ready:
                break
            self._ready.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no worker became ready to load the pipeline")
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                continue
        worker = max(ready, key=lambda w: w.free)
        req = self._next_req
        self._next_req += 1
        future: asyncio.Future[wire.Loaded | wire.LoadFailed] = asyncio.get_running_loop().create_future()
        self.loads[req] = (future, worker.id)
        worker.loading += 1
        worker.sources.add(source_hash)
        self.send(worker.identity, wire.encode(wire.LoadPipeline(req=req, source_hash=source_hash, path=path,
                                                                 source=source, target=target)))
        try:
            return await asyncio.wait_for(future, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            self.loads.pop(req, None)
            worker.cause = Cause.POOL  # the steps it runs are not to blame
            self._kill(worker, f"loading {path} took longer than {self.load_timeout:g}s")
            raise TimeoutError(f"loading {path} took longer than {self.load_timeout:g}s; does it do slow work at import time?") from None

    # -- shutdown and status ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(w.running) for w in self.workers.values())

    async def stop(self, wait_for_steps: float) -> None:
        """Stop dispatching; wait up to `wait_for_steps` for in-flight steps, then stop every worker."""
        self.accepting = False
        deadline = time.monotonic() + wait_for_steps
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in self.workers.values():
            worker.state = "stopping"
            if not self.send(worker.identity, wire.encode(wire.StopWorker(graceful=False))):
                worker.proc.terminate()  # not connected yet, so it cannot hear StopWorker; SIGTERM stops it
        deadline = time.monotonic() + 3.0
        while any(w.proc.poll() is None for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
            try:
                worker.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not exit after SIGKILL", worker.id, worker.proc.pid)
        self.spawner.close()

    def info(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(id=w.id, pid=w.proc.pid, state="alone" if w.dedicated and w.running else w.state,
                       running=len(w.running), capacity=w.capacity,
                       completed=w.completed, started_at=w.started_at)
            for w in self.workers.values()
        ]

    def identities(self) -> set[bytes]:
        """The socket identities of the workers the pool still has."""
        return {w.identity for w in self.workers.values()}

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.values() if w.proc.poll() is None]
