"""`LocalExecutor`: the `Executor` (interface.py) that runs steps in worker processes on this machine.

It spawns, watches, feeds and replaces the worker processes, which speak tagentd.worker.wire over the
daemon's workers socket. Besides the interface's guarantees:

- a lost attempt's verdict comes from `DeathLedger` (deaths.py): a worker that died, stopped heartbeating
  or overran a step's timeout plus grace (then it is killed) is charged so that the steps next to the one
  that killed it run again without using their retries;
- a dead worker is replaced on the next supervision tick (with back-off when workers die in a loop), so
  one bad step never stops the pool; workers are forked from a warm template process
  (tagentd.executor.spawner), so a replacement's first agent step is as quick as any other;
- waiting attempts are sent round-robin across runs (fairness, queues.py), each worker taking up to its
  capacity of concurrent steps; `pump` never offers work to a worker it has found dead, so it always returns;
- what a worker is sent in one loop turn (the tasks `pump` hands it, the acknowledgements of its results)
  leaves as one frame (outbox.py), or, when `pump` hands it more than FIRST_CHUNK tasks, as a few frames of
  growing size, the first sent as soon as it is encoded; a frame the worker cannot take puts each of its tasks
  back at the head of its line, in order, and the worker is killed;
- an isolated or quarantined step runs alone, in a worker started for it and stopped after it (at most
  `size` such workers at a time);
- only this daemon's own workers get work: each is given the daemon's random token and must say it in its
  Hello; any other peer on workers.sock (a worker left over from another daemon) is sent `Refused`
  (admission.py). Model-request permits of its workers go to the `PermitDesk` it is given (permits.py), and
  their circuit-breaker calls to the `BreakerDesk` (breakers.py);
- several executors may share one workers socket (the Ray executor's lanes, tagentd.executor.ray): given one
  `admission` and one `worker_ids` counter, their workers have one token and distinct numbers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from tagent_client.core.events import StepFailed, StepSucceeded, StepTimedOut
from tagent_client.define.plan import Plan
from tagent_client.errors import PipelineLoadError
from tagent_client.wire.protocol import WorkerInfo
from tagentd.executor.admission import Admission
from tagentd.executor.breakers import BreakerDesk
from tagentd.executor.curve import CurveGate
from tagentd.executor.deaths import VERDICT_STATS, Cause, DeathLedger, how_it_ended
from tagentd.executor.interface import Capacity, PipelineCode, Report, RunningAttempt, StepAttempt
from tagentd.executor.loading import PipelineLoads, plan_of
from tagentd.executor.outbox import Outbox
from tagentd.executor.permits import PermitDesk
from tagentd.executor.queues import DispatchQueues
from tagentd.executor.spawner import ProcessStarter, Spawner
from tagentd.executor.workers import Assignment, Worker, WorkerSet
from tagentd.metrics.instruments import Metrics
from tagentd.worker import wire

log = logging.getLogger("tagentd.pool")

#: The tasks of a worker's first frame of a turn that hands it many (the next frames hold 2x, 4x, ... as many).
FIRST_CHUNK = 8


class LocalExecutor:
    """The supervisor of N worker processes speaking tagentd.worker.wire over one ROUTER socket."""

    def __init__(self, *, size: int, capacity: int, endpoint: str, send: Callable[[bytes, bytes], bool],
                 on_result: Report, on_lost: Report, permits: PermitDesk, heartbeat_interval: float,
                 heartbeat_timeout: float, grace: float, recycle_after: int, load_timeout: float,
                 log_file: int | None = None, worker_args: list[str] | None = None, use_template: bool = True,
                 spawner: ProcessStarter | None = None, breakers: BreakerDesk | None = None,
                 curve: CurveGate | None = None, metrics: Metrics | None = None,
                 admission: Admission | None = None, worker_ids: Iterator[int] | None = None) -> None:
        self.size = size
        self.send = send
        self.on_result = on_result
        self.on_lost = on_lost
        self.permits = permits
        self.breakers = breakers
        self.metrics = metrics  # each attempt's result is counted once, when its slot is freed
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.grace = grace
        self.recycle_after = recycle_after
        self.load_timeout = load_timeout
        self.queues = DispatchQueues()
        self.outbox = Outbox(send)
        self.loads = PipelineLoads()
        self.accepting = True
        self.counters = collections.Counter[str]()
        self._ready = asyncio.Event()
        self.ledger = DeathLedger(stuck_window=grace + 10.0)
        self.admission = admission or Admission(send, self.counters)  # shared by executors that share one socket
        # with `curve`, the workers join over the CURVE tcp endpoint as remote ones do (one credential for the pool)
        credentials = curve.issue("local-pool", token=self.admission.token) if curve is not None else None
        if credentials is not None:
            endpoint = credentials.endpoint
        args = ["--endpoint", endpoint, "--capacity", str(capacity), "--heartbeat", str(heartbeat_interval),
                "--grace", str(grace), *(worker_args or [])]
        self.pool = WorkerSet(spawner=spawner or Spawner(log_file=log_file, token=self.admission.token,
                                                         stats=self.counters, use_template=use_template,
                                                         credentials=credentials),
                              capacity=capacity, token=self.admission.token, args=args, counters=self.counters,
                              ids=worker_ids)
        self._handlers: dict[type, Callable[[bytes, Worker | None, Any], None]] = {
            wire.TaskDone: self._on_done, wire.Heartbeat: self._on_heartbeat, wire.Hello: self._on_hello,
            wire.Loaded: self._on_loaded, wire.LoadFailed: self._on_loaded,
            wire.PermitRequest: self._on_permit_request, wire.PermitRelease: self._on_permit_release,
            wire.BreakerAsk: self._on_breaker_ask, wire.BreakerOutcome: self._on_breaker_outcome,
        }

    # -- processes ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker template; the workers follow on the supervision ticks once it is warm."""
        if self.size:
            self.pool.spawner.start()
        for _ in range(self.size):
            self.pool.spawn()

    def _reap(self, worker: Worker, code: int) -> None:
        meaning = self.pool.ended(worker, code)
        self._judge(worker, code)
        if self.breakers is not None:
            self.breakers.worker_gone(worker.identity)
        if worker.alone_for is not None:  # it died before its step was sent: the step waits for another
            self.queues.put(worker.alone_for, alone=True, first=True)
        self.loads.worker_ended(worker.id, meaning)

    def _judge(self, worker: Worker, code: int) -> None:
        """Report every step in flight on a worker that ended, each with the ledger's verdict."""
        jobs = [(job.attempt.run_id, job.attempt.dispatch) for job in worker.running.values()]
        worker.running.clear()
        cause = Cause.POOL if worker.state == "stopping" else Cause.TIMEOUT if code == wire.EXIT_STUCK_STEP else worker.cause
        verdicts = self.ledger.died(worker.id, jobs, cause=cause, how=how_it_ended(code), alone=worker.dedicated,
                                    where=f"worker {worker.id} (pid {worker.proc.pid})", now=time.monotonic())
        for run_id, event in verdicts:
            self.counters[VERDICT_STATS[type(event).__name__]] += 1
            self.on_lost(run_id, event)

    async def supervise(self) -> None:
        """Reap, detect silence and overruns, replace, recycle — every tick, forever; and sweep the permits."""
        await asyncio.gather(self._watch(), self.permits.supervise(self.pool.identities))

    async def _watch(self) -> None:
        tick = min(0.1, self.heartbeat_interval)
        while True:
            self.check(time.monotonic())
            await asyncio.sleep(tick)

    def check(self, now: float) -> None:
        for worker in self.pool:
            code = worker.proc.poll()
            if code is not None:
                self._reap(worker, code)
                continue
            silent = now - worker.last_seen
            limit = self.heartbeat_timeout if worker.state != "starting" else max(30.0, self.heartbeat_timeout)
            if silent > limit and worker.state not in ("killed",):
                self.pool.kill(worker, f"no heartbeat for {silent:.1f}s")
                continue
            for key, job in list(worker.running.items()):
                if job.deadline is not None and now > job.deadline:
                    del worker.running[key]
                    run_id, task = job.attempt.run_id, job.attempt.dispatch
                    self.on_lost(run_id, self.ledger.overran(worker.id, run_id, task, alone=worker.dedicated,
                                                             now=time.monotonic()))
                    worker.cause = Cause.TIMEOUT
                    self.pool.kill(worker, f"step {task.step!r} of run {run_id} would not stop at its timeout")
            if worker.state == "recycling" and not worker.running and worker.loading == 0:
                worker.state = "stopping"
                self._tell(worker, wire.StopWorker(graceful=True))
        if self.accepting:
            missing = self.size - sum(1 for w in self.pool.by_id.values()
                                      if w.state not in ("stopping", "recycling") and not w.dedicated)
            if missing > 0 and self.pool.may_spawn(now):
                for _ in range(missing):
                    self.pool.spawn()
        self.pump()
        self._deliver(None, everything=True)  # the acknowledgements that no frame took along

    # -- messages from workers ---------------------------------------------------------------

    def on_worker_message(self, identity: bytes, msg: wire.FromWorker) -> bool:
        """Hello, heartbeats, load answers, results and permits are the pool's; a stranger's messages are refused."""
        wid = self.admission.worker_id(identity)
        if wid is None:  # a stranger, e.g. left over from another daemon: nothing it says counts
            self.admission.refuse(identity, f"it was not started by this daemon (pid {os.getpid()})")
            return True
        handler = self._handlers.get(type(msg))
        if handler is None:
            return False
        handler(identity, self.pool.get(wid), msg)
        return True

    def _on_hello(self, identity: bytes, worker: Worker | None, msg: wire.Hello) -> None:
        if worker is None:
            return
        if not self.admission.hello_matches(msg, worker.id, worker.proc.pid):
            self.admission.refuse(worker.identity, f"its hello (pid {msg.pid}) does not match worker {worker.id} "
                                                   f"(pid {worker.proc.pid}) of this daemon")
            self.pool.kill(worker, "its hello did not match")
            return
        worker.state = "ready"
        worker.capacity = msg.capacity
        worker.last_seen = time.monotonic()
        self._ready.set()
        self.pump()

    def _on_heartbeat(self, identity: bytes, worker: Worker | None, msg: wire.Heartbeat) -> None:
        if worker is not None:
            worker.last_seen = time.monotonic()
            self.permits.on_heartbeat(identity, msg.permits)
            if self.breakers is not None:
                self.breakers.on_heartbeat(identity, msg.breakers)

    def _on_breaker_ask(self, identity: bytes, worker: Worker | None, msg: wire.BreakerAsk) -> None:
        if worker is not None and self.breakers is not None:
            self.breakers.on_ask(identity, msg)

    def _on_breaker_outcome(self, identity: bytes, worker: Worker | None, msg: wire.BreakerOutcome) -> None:
        if self.breakers is not None:
            self.breakers.on_outcome(identity, msg)

    def _on_permit_request(self, identity: bytes, worker: Worker | None, msg: wire.PermitRequest) -> None:
        if worker is not None:
            self.permits.on_request(identity, msg)

    def _on_permit_release(self, identity: bytes, worker: Worker | None, msg: wire.PermitRelease) -> None:
        self.permits.on_release(identity, msg)

    def _on_done(self, identity: bytes, worker: Worker | None, msg: wire.TaskDone) -> None:
        """Release the attempt's slot, acknowledge the result (duplicates too) and report it."""
        event = msg.event
        if isinstance(event, (StepSucceeded, StepFailed)):  # that attempt did not kill its worker
            self.ledger.forget(msg.run_id, event.task)
        if worker is not None:
            worker.last_seen = time.monotonic()
            if isinstance(event, StepTimedOut):  # a sync step may go on running and end the worker (exit 70)
                self.ledger.timed_out(worker.id, (msg.run_id, event.task), time.monotonic())
            job = worker.running.pop((msg.run_id, event.task, event.attempt), None)
            if job is not None:
                worker.completed += 1
                if self.metrics is not None:
                    used = msg.resources
                    self.metrics.attempt_ended(
                        job.attempt.pipeline, job.attempt.dispatch.step, event, time.monotonic() - job.sent_at,
                        None if used is None else (used.seconds, used.cpu_seconds, used.peak_rss_bytes))
                if self.recycle_after and worker.completed >= self.recycle_after and worker.state == "ready":
                    worker.state = "recycling"
            self.outbox.ack(worker, (msg.run_id, event.task, event.attempt))  # with its next frame, or the tick's
        self.on_result(msg.run_id, event)

    def _on_loaded(self, identity: bytes, worker: Worker | None, msg: wire.Loaded | wire.LoadFailed) -> None:
        if worker is not None:
            worker.loading = max(0, worker.loading - 1)
        self.loads.answered(msg)

    # -- work --------------------------------------------------------------------------------

    def dispatch(self, attempt: StepAttempt) -> None:
        """Queue an attempt; one that must run alone waits for a worker of its own."""
        self.queues.put(attempt, alone=self.ledger.runs_alone(attempt.run_id, attempt.dispatch))

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        key = (run_id, task, attempt)
        self.queues.remove(run_id, task, attempt)
        for worker in self.pool.by_id.values():
            if worker.alone_for is not None and worker.alone_for.key == key:
                worker.alone_for = None  # its worker is still starting: it will be stopped unused
            if worker.running.pop(key, None) is not None:
                self._tell(worker, wire.CancelRunning(run_id=run_id, task=task, attempt=attempt))

    def forget_run(self, run_id: str) -> None:
        self.queues.forget_run(run_id)
        self.ledger.forget(run_id)

    def pump(self) -> int:
        """Hand queued tasks to workers with free slots, one run at a time in rotation, then send each worker what
        this turn gave it (acknowledgements included); how many tasks were sent. A worker given many tasks gets them
        in frames of FIRST_CHUNK, twice that, and so on, each sent as soon as it is full, and the rest at the end:
        it starts the first while the daemon encodes the others, and a turn costs it a few wake-ups, not one per task.

        A worker leaves the rotation when it is full, so the loop ends whatever happens to the workers; one
        found dead when its frame is sent is killed and its tasks are queued again (the next pump offers them
        to the others).
        """
        if self.accepting:
            self._pump_alone()
            ready = [w for w in self.pool.shared_ready() if w.free > 0]
            free = [w.free for w in ready]  # each send takes one of its worker's slots
            chunks: dict[int, int] = {}  # per worker: how many tasks its next early frame waits for
            while ready and (attempt := self.queues.next_shared()) is not None:
                index = free.index(max(free))  # the freest worker (the first of them on a tie)
                worker = ready[index]
                self._send_task(worker, attempt)
                free[index] -= 1
                if self.outbox.attempts(worker) >= chunks.setdefault(worker.id, FIRST_CHUNK):
                    chunks[worker.id] *= 2
                    self._deliver(worker)  # it starts these while the rest are encoded
                    if worker.state == "killed":  # it could not take them: they are queued again, for the others
                        del ready[index], free[index]
                        continue
                if free[index] <= 0:
                    del ready[index], free[index]
        return self._deliver(None)

    def _tell(self, worker: Worker, message: wire.WorkerMessage) -> None:
        """Send `message` to `worker` now, after whatever waits for it in the outbox (the order is kept)."""
        self.outbox.put(worker, wire.encode(message))
        self._deliver(worker)

    def _deliver(self, worker: Worker | None, *, everything: bool = False) -> int:
        """Flush the outbox (only `worker`'s part, if given; acknowledgements alone only with `everything`); how many
        tasks left. A worker that could not take its frame is killed, and each task of that frame goes back to the
        head of its line, in order, exactly once."""
        if not len(self.outbox):
            return 0
        frames, sent, undelivered = self.outbox.flush(worker, everything=everything)
        self.counters["worker_frames_sent"] += frames
        self.counters["tasks_dispatched"] += sent
        for target, attempts in undelivered:
            for attempt in reversed(attempts):
                if target.running.pop(attempt.key, None) is not None:  # not cancelled meanwhile
                    self.queues.put(attempt, alone=self.ledger.runs_alone(attempt.run_id, attempt.dispatch), first=True)
            if target.state != "killed":
                self.pool.kill(target, "its socket is gone")
        return sent

    def _pump_alone(self) -> None:
        """Send each step that must run alone to the worker started for it, and start workers for those waiting."""
        for worker in self.pool:
            if worker.dedicated and worker.state == "ready":
                pending, worker.alone_for = worker.alone_for, None
                if pending is not None:
                    self._send_task(worker, pending)
                    self.counters["steps_run_alone"] += 1
                if worker.state == "ready":
                    worker.state = "recycling"  # nothing else is ever sent to it; stopped once its step is done
        dedicated = sum(1 for w in self.pool.by_id.values() if w.dedicated)
        now = time.monotonic()
        while self.queues.alone_waiting and dedicated < self.size and self.pool.may_spawn(now):
            worker = self.pool.spawn()
            if worker is None:  # the template is still warming up: the next tick tries again
                break
            worker.dedicated, worker.alone_for = True, self.queues.next_alone()
            dedicated += 1

    def _send_task(self, worker: Worker, attempt: StepAttempt) -> None:
        """Put one attempt in `worker`'s frame of this turn; it runs there from now on (unless the frame is refused)."""
        code, task = attempt.code, attempt.dispatch
        first = code.source_hash not in worker.sources
        msg = wire.RunTask(run_id=attempt.run_id, source_hash=code.source_hash, path=code.path, target=code.target,
                           source=code.source if first else None, task=task, params=attempt.params,
                           model=attempt.model, trigger=attempt.trigger, traceparent=attempt.traceparent)
        now = time.monotonic()
        deadline = now + task.timeout + self.grace + 2 * self.heartbeat_interval if task.timeout else None
        key = attempt.key
        worker.running[key] = Assignment(attempt, worker.id, now, deadline)
        worker.sources.add(code.source_hash)
        self.outbox.put(worker, wire.encode(msg), attempt)

    async def load(self, code: PipelineCode) -> Plan:
        """Import and validate a pipeline file in a worker (never here); see the interface."""
        try:
            answer = await self._load(code)
        except (TimeoutError, RuntimeError) as exc:
            raise PipelineLoadError(f"{code.path}: {exc}") from None
        return plan_of(answer, code.path)

    async def _load(self, code: PipelineCode) -> wire.Loaded | wire.LoadFailed:
        deadline = time.monotonic() + self.load_timeout
        while True:
            ready = self.pool.shared_ready()
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
        req, future = self.loads.begin(worker.id)
        worker.loading += 1
        worker.sources.add(code.source_hash)
        self.send(worker.identity, wire.encode(wire.LoadPipeline(req=req, source_hash=code.source_hash, path=code.path,
                                                                 source=code.source, target=code.target)))
        try:
            return await asyncio.wait_for(future, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            self.loads.abandon(req)
            worker.cause = Cause.POOL  # the steps it runs are not to blame
            self.pool.kill(worker, f"loading {code.path} took longer than {self.load_timeout:g}s")
            raise TimeoutError(f"loading {code.path} took longer than {self.load_timeout:g}s; "
                               "does it do slow work at import time?") from None

    # -- shutdown ------------------------------------------------------------------------------

    def hold(self) -> None:
        self.accepting = False  # what is queued stays queued: the daemon checkpoints it as it is

    async def stop(self, wait_for_steps: float) -> None:
        """Stop dispatching; wait up to `wait_for_steps` for in-flight steps, then stop every worker."""
        self.accepting = False
        deadline = time.monotonic() + wait_for_steps
        while self.pool.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.pool.stop(self.send)

    def kill_now(self) -> None:
        self.pool.kill_all()

    def cluster(self) -> None:
        """No cluster: its workers are processes on this machine."""
        return None

    # -- views ---------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        ready = self.pool.shared_ready()
        return Capacity(slots=sum(w.capacity for w in ready), free=sum(max(0, w.free) for w in ready),
                        in_flight=self.pool.in_flight(), queued=len(self.queues))

    def running(self) -> list[RunningAttempt]:
        return self.pool.running()

    def workers(self) -> list[WorkerInfo]:
        return self.pool.info()

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
