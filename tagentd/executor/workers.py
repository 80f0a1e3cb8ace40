"""The local executor's worker processes: `Worker`, the record of one and of the attempts it runs, and
`WorkerSet`, all of them.

A worker's `state` moves starting -> ready -> (recycling ->) stopping, or to killed; `dedicated` workers are
started for one attempt that must run alone and stopped after it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tagent_client.wire.protocol import WorkerInfo
from tagentd.executor.deaths import Cause
from tagentd.executor.interface import AttemptKey, RunningAttempt, StepAttempt
from tagentd.executor.spawner import ProcessStarter, WorkerProcess
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


def exit_meaning(code: int) -> str:
    """A worker's exit status as a few words for the log."""
    return EXIT_MEANINGS.get(code, f"exit code {code}")


@dataclass
class Assignment:
    """An attempt sent to a worker: when, and when it is overdue (its timeout plus grace; None: never)."""

    attempt: StepAttempt
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
    running: dict[AttemptKey, Assignment] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)  # hashes of the pipeline files it has the code of
    completed: int = 0
    loading: int = 0
    dedicated: bool = False  # started for one step that must run alone; stopped after it
    alone_for: StepAttempt | None = None  # that step, until it is sent
    cause: Cause = Cause.UNKNOWN  # why it ends, when the pool ends it

    @property
    def identity(self) -> bytes:
        return wire.identity(self.id, self.token)

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) - self.loading


class WorkerSet:
    """The worker processes: started through the spawner and numbered, killed, and stopped all together.

    After 5 unexpected deaths within 5 s it starts a worker at most every 2 s (`may_spawn`), so a step
    that kills every worker it meets does not make the daemon fork in a loop.
    """

    def __init__(self, *, spawner: ProcessStarter, capacity: int, token: str, args: list[str],
                 counters: collections.Counter[str], ids: Iterator[int] | None = None) -> None:
        self.spawner = spawner
        self.capacity = capacity
        self.token = token
        self.args = args  # every worker's command line but its --id
        self.counters = counters
        self.by_id: dict[int, Worker] = {}
        self._ids = ids or itertools.count(1)  # shared by worker sets that share one socket: ids stay unique
        self._next_id = next(self._ids)
        self._deaths: collections.deque[float] = collections.deque(maxlen=10)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.by_id.values()))

    def get(self, wid: int) -> Worker | None:
        return self.by_id.get(wid)

    def spawn(self) -> Worker | None:
        """Start one worker; None while the template is still warming up (the next tick tries again)."""
        wid = self._next_id
        proc = self.spawner.spawn(["--id", str(wid), *self.args])
        if proc is None:
            return None
        self._next_id = next(self._ids)
        worker = Worker(id=wid, proc=proc, capacity=self.capacity, token=self.token)
        self.by_id[wid] = worker
        self.counters["workers_spawned"] += 1
        log.info("worker %d started (pid %d)", wid, proc.pid)
        return worker

    def kill(self, worker: Worker, why: str) -> None:
        log.warning("killing worker %d (pid %d): %s", worker.id, worker.proc.pid, why)
        worker.state = "killed"
        try:
            worker.proc.kill()
        except ProcessLookupError:
            pass

    def ended(self, worker: Worker, code: int) -> str:
        """Forget a worker whose process ended with status `code`; what the status means."""
        meaning = exit_meaning(code)
        del self.by_id[worker.id]
        if worker.state not in ("stopping", "recycling"):
            self._deaths.append(time.monotonic())
            self.counters["workers_lost"] += 1
            log.warning("worker %d (pid %d) ended: %s; %d step(s) in flight", worker.id, worker.proc.pid, meaning,
                        len(worker.running))
        return meaning

    def may_spawn(self, now: float) -> bool:
        """Back-off: after 5 deaths within 5 s, start a worker at most every 2 s."""
        recent = [t for t in self._deaths if now - t < 5.0]
        return len(recent) < 5 or now - recent[-1] > 2.0

    def shared_ready(self) -> list[Worker]:
        """The ready workers that take any step (not started for one step that runs alone)."""
        return [w for w in self.by_id.values() if w.state == "ready" and not w.dedicated]

    def in_flight(self) -> int:
        return sum(len(w.running) for w in self.by_id.values())

    def identities(self) -> set[bytes]:
        """The socket identities of the workers it still has."""
        return {w.identity for w in self.by_id.values()}

    def running(self) -> list[RunningAttempt]:
        """Every attempt in flight on these workers, with how long since it was sent."""
        now = time.monotonic()
        return [RunningAttempt(run_id=job.attempt.run_id, pipeline=job.attempt.pipeline, step=job.attempt.dispatch.step,
                               task=job.attempt.dispatch.task, attempt=job.attempt.dispatch.attempt, worker=worker.id,
                               elapsed_s=now - job.sent_at)
                for worker in self.by_id.values() for job in worker.running.values()]

    def info(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(id=w.id, pid=w.proc.pid, state="alone" if w.dedicated and w.running else w.state,
                       running=len(w.running), capacity=w.capacity, completed=w.completed, started_at=w.started_at)
            for w in self.by_id.values()
        ]

    async def stop(self, send: Callable[[bytes, bytes], bool]) -> None:
        """Tell every worker to stop, kill those still running after 3 s, and close the spawner."""
        for worker in self.by_id.values():
            worker.state = "stopping"
            if not send(worker.identity, wire.encode(wire.StopWorker(graceful=False))):
                worker.proc.terminate()  # not connected yet, so it cannot hear StopWorker; SIGTERM stops it
        deadline = time.monotonic() + 3.0
        while any(w.proc.poll() is None for w in self.by_id.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for worker in self.by_id.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
            try:
                worker.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not exit after SIGKILL", worker.id, worker.proc.pid)
        self.spawner.close()

    def kill_all(self) -> None:
        for worker in self.by_id.values():
            worker.proc.kill()
