"""`WorkerPool`: spawns, watches, feeds and replaces the worker processes.

Guarantees:
- every dispatched attempt ends in exactly one report to the daemon: a result
  from the worker, or `on_lost(...)` when its worker died, stopped heartbeating,
  or overran the step's timeout plus grace (then the worker is killed);
- a dead worker is replaced on the next supervision tick (with back-off when
  workers die in a loop), so one bad step never stops the pool;
- queued work is dispatched round-robin across runs (fairness), each worker
  taking up to its capacity of concurrent steps; `pump` never offers work to a
  worker it has found dead, so it always returns.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tagent_client.events import Dispatch
from tagent_client.protocol import WorkerInfo

from . import wire
from .runs import Run

log = logging.getLogger("tagentd.pool")

EXIT_MEANINGS = {
    wire.EXIT_OK: "stopped",
    wire.EXIT_STUCK_STEP: "a timed-out step would not stop",
    wire.EXIT_LOST_DAEMON: "lost the daemon",
    -signal.SIGKILL: "killed",
    -signal.SIGTERM: "terminated",
    -signal.SIGSEGV: "segmentation fault",
}

LostCallback = Callable[[str, str, int, str, bool], None]


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
    proc: subprocess.Popen[bytes]
    capacity: int
    started_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    state: str = "starting"
    running: dict[tuple[str, str, int], Assignment] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    completed: int = 0
    loading: int = 0

    @property
    def identity(self) -> bytes:
        return f"w{self.id}".encode()

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) - self.loading


class WorkerPool:
    """The supervisor of N worker processes speaking tagentd.wire over one ROUTER socket."""

    def __init__(self, *, size: int, capacity: int, endpoint: str, send: Callable[[bytes, bytes], bool],
                 on_lost: LostCallback, heartbeat_interval: float, heartbeat_timeout: float, grace: float,
                 recycle_after: int, load_timeout: float, log_file: int | None = None,
                 worker_args: list[str] | None = None) -> None:
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
        self.queues: collections.OrderedDict[str, collections.deque[tuple[Run, Dispatch]]] = collections.OrderedDict()
        self.loads: dict[int, tuple[asyncio.Future[wire.Loaded | wire.LoadFailed], int]] = {}
        self.accepting = True
        self.stats = collections.Counter[str]()
        self._next_id = 1
        self._next_req = 1
        self._deaths: collections.deque[float] = collections.deque(maxlen=10)
        self._ready = asyncio.Event()

    # -- processes ---------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> Worker:
        wid = self._next_id
        self._next_id += 1
        argv = [sys.executable, "-m", "tagentd.worker", "--endpoint", self.endpoint, "--id", str(wid),
                "--capacity", str(self.capacity), "--heartbeat", str(self.heartbeat_interval), "--grace", str(self.grace),
                *self.worker_args]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log_file or subprocess.DEVNULL,
                                stderr=self.log_file or subprocess.DEVNULL, close_fds=True)
        worker = Worker(id=wid, proc=proc, capacity=self.capacity)
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
        for key, job in list(worker.running.items()):
            self.on_lost(job.run.id, job.task.task, job.task.attempt,
                         f"worker {worker.id} (pid {worker.proc.pid}) ended: {meaning}", False)
        worker.running.clear()
        for req, (future, wid) in list(self.loads.items()):
            if wid == worker.id and not future.done():
                future.set_exception(RuntimeError(f"worker {worker.id} ended while loading the pipeline: {meaning}"))
                del self.loads[req]

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
                    self.on_lost(job.run.id, job.task.task, job.task.attempt,
                                 f"step overran its timeout by more than {self.grace:g}s grace", True)
                    self._kill(worker, f"step {job.task.step!r} of run {job.run.id} would not stop at its timeout")
            if worker.state == "recycling" and not worker.running and worker.loading == 0:
                worker.state = "stopping"
                self.send(worker.identity, wire.encode(wire.StopWorker(graceful=True)))
        if self.accepting:
            missing = self.size - sum(1 for w in self.workers.values() if w.state not in ("stopping", "recycling"))
            recent = [t for t in self._deaths if now - t < 5.0]
            if missing > 0 and (len(recent) < 5 or now - recent[-1] > 2.0):
                for _ in range(missing):
                    self._spawn()
        self.pump()

    # -- messages from workers ---------------------------------------------------------------

    def worker_for(self, identity: bytes) -> Worker | None:
        try:
            return self.workers.get(int(identity[1:]))
        except ValueError:
            return None

    def on_hello(self, worker: Worker, msg: wire.Hello) -> None:
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
        if worker is not None:
            worker.last_seen = time.monotonic()
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

    def enqueue(self, run: Run, task: Dispatch) -> None:
        self.queues.setdefault(run.id, collections.deque()).append((run, task))

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        queue = self.queues.get(run_id)
        if queue:
            kept = [(r, d) for r, d in queue if not (d.task == task and d.attempt == attempt)]
            queue.clear()
            queue.extend(kept)
        for worker in self.workers.values():
            if worker.running.pop((run_id, task, attempt), None) is not None:
                self.send(worker.identity, wire.encode(wire.CancelRunning(run_id=run_id, task=task, attempt=attempt)))

    def forget_run(self, run_id: str) -> None:
        self.queues.pop(run_id, None)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def pump(self) -> int:
        """Hand queued tasks to workers with free slots, one run at a time in rotation.

        A worker leaves the rotation when it is full or found dead while sending (its task is queued again),
        so the loop ends whatever happens to the workers.
        """
        if not self.accepting or not self.queues:
            return 0
        sent = 0
        ready = [w for w in self.workers.values() if w.state == "ready" and w.free > 0]
        while self.queues and ready:
            run_id, queue = next(iter(self.queues.items()))
            if not queue:
                del self.queues[run_id]
                continue
            run, task = queue.popleft()
            self.queues.move_to_end(run_id)
            worker = max(ready, key=lambda w: w.free)
            sent += self._send_task(worker, run, task)
            if worker.state != "ready" or worker.free <= 0:
                ready.remove(worker)
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
            self.queues.setdefault(run.id, collections.deque()).appendleft((run, task))  # it keeps its place
            return 0
        self.stats["tasks_dispatched"] += 1
        return 1

    async def load(self, *, path: str, source: str, source_hash: str, target: str | None) -> wire.Loaded | wire.LoadFailed:
        """Import and validate a pipeline file in a worker (never here). Raises TimeoutError or RuntimeError."""
        deadline = time.monotonic() + self.load_timeout
        while True:
            ready = [w for w in self.workers.values() if w.state == "ready"]
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

    def info(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(id=w.id, pid=w.proc.pid, state=w.state, running=len(w.running), capacity=w.capacity,
                       completed=w.completed, started_at=w.started_at)
            for w in self.workers.values()
        ]

    def identities(self) -> set[bytes]:
        """The socket identities of the workers the pool still has."""
        return {w.identity for w in self.workers.values()}

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.values() if w.proc.poll() is None]
