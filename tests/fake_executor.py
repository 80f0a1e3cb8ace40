"""`FakeExecutor`: an `Executor` (tagentd/executor/interface.py) in this process, for tests without workers.

It does what the interface promises, with the test as its workers: `dispatch` queues an attempt, `pump`
"sends" waiting attempts to its `slots` (one run at a time in rotation, like the local executor), and the
test ends an attempt with `finish` (a worker's result, reported through `on_result`) or `lose` (a lost
attempt's verdict, through `on_lost`). `load` imports the pipeline file here, with the workers' own loader
(tagentd.worker.loader), so a test gets the real Plan or the real PipelineLoadError /
PipelineValidationError — the one thing a real executor never does in the daemon's process.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

from tagent_client.core.events import Event, StepSucceeded
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import WorkerInfo
from tagentd.executor.interface import AttemptKey, Capacity, PipelineCode, Report, RunningAttempt, StepAttempt
from tagentd.runs.driver import RunDriver
from tagentd.runs.store import MemoryStore, RunStore
from tagentd.runs.table import RunTable
from tagentd.settings.config import Settings
from tagentd.worker import wire
from tagentd.worker.loader import load_pipeline


async def committed_at_once() -> None:
    """A commit that is done at once (the driver's `committed`, for tests that do not commit)."""


def bare_driver(tmp_path: Path, *, store: RunStore | None = None, durable: bool = False) -> RunDriver:
    """A run driver over `store` (a fresh MemoryStore by default) with state and runtime in `tmp_path`, whose
    commits are done at once; the test gives it an executor (`driver.executor = ...`) before it submits."""
    store = MemoryStore() if store is None else store
    return RunDriver(settings=Settings(durable=durable, state_dir=tmp_path, runtime_dir=tmp_path),
                     runs=RunTable(store, 16), store=store, stats={"events_published": 0},
                     mark_dirty=lambda: None, committed=committed_at_once)


def ignore(run_id: str, event: Event) -> None:
    """A report nobody listens to."""


class FakeExecutor:
    """Attempts wait in `waiting` (per run) and run in `sent` until the test finishes or loses them."""

    def __init__(self, *, on_result: Report = ignore, on_lost: Report = ignore, slots: int = 8) -> None:
        self.on_result = on_result
        self.on_lost = on_lost
        self.slots = slots
        self.waiting: collections.OrderedDict[str, collections.deque[StepAttempt]] = collections.OrderedDict()
        self.sent: dict[AttemptKey, tuple[StepAttempt, float]] = {}
        self.cancelled: list[AttemptKey] = []  # running attempts told to stop
        self.loaded: list[PipelineCode] = []
        self.messages: list[tuple[bytes, wire.FromWorker]] = []  # what `on_worker_message` was given
        self.counters = collections.Counter[str]()
        self.state = "new"  # new -> started -> held -> stopped
        self.supervising = False

    # -- lifecycle

    def start(self) -> None:
        self.state = "started"

    async def supervise(self) -> None:
        self.supervising = True

    def hold(self) -> None:
        self.state = "held"

    async def stop(self, wait_for_steps: float) -> None:
        self.hold()
        self.state = "stopped"

    def kill_now(self) -> None:
        self.state = "stopped"

    # -- work

    def dispatch(self, attempt: StepAttempt) -> None:
        self.waiting.setdefault(attempt.run_id, collections.deque()).append(attempt)

    def pump(self) -> int:
        sent = 0
        while self.state == "started" and len(self.sent) < self.slots and self.waiting:
            run_id, line = next(iter(self.waiting.items()))
            attempt = line.popleft()
            if line:
                self.waiting.move_to_end(run_id)
            else:
                del self.waiting[run_id]
            self.sent[attempt.key] = (attempt, time.monotonic())
            self.counters["tasks_dispatched"] += 1
            sent += 1
        return sent

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        key = (run_id, task, attempt)
        line = self.waiting.get(run_id)
        if line is not None:
            kept = [a for a in line if a.key != key]
            line.clear()
            line.extend(kept)
        if self.sent.pop(key, None) is not None:
            self.cancelled.append(key)

    def forget_run(self, run_id: str) -> None:
        self.waiting.pop(run_id, None)

    async def load(self, code: PipelineCode) -> Plan:
        self.loaded.append(code)
        return load_pipeline(code.source_hash, code.path, code.source, code.target).plan()

    def on_worker_message(self, identity: bytes, msg: wire.FromWorker) -> bool:
        self.messages.append((identity, msg))
        return False  # it has no workers of its own: every message is a step's request for the daemon

    # -- what the test's "workers" do

    def finish(self, key: AttemptKey, event: Event | None = None) -> None:
        """The attempt's worker reports `event` (default: it succeeded with no output)."""
        attempt, _ = self.sent.pop(key)
        self.on_result(attempt.run_id, event or StepSucceeded(task=key[1], attempt=key[2]))

    def lose(self, key: AttemptKey, verdict: Event) -> None:
        """The attempt's worker is gone: report the verdict on it."""
        attempt, _ = self.sent.pop(key)
        self.on_lost(attempt.run_id, verdict)

    # -- views

    def capacity(self) -> Capacity:
        queued = sum(len(line) for line in self.waiting.values())
        return Capacity(slots=self.slots, free=max(0, self.slots - len(self.sent)), in_flight=len(self.sent),
                        queued=queued)

    def running(self) -> list[RunningAttempt]:
        now = time.monotonic()
        return [RunningAttempt(run_id=a.run_id, pipeline=a.pipeline, step=a.dispatch.step, task=a.dispatch.task,
                               attempt=a.dispatch.attempt, worker=1, elapsed_s=now - at) for a, at in self.sent.values()]

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(id=1, pid=0, state="ready", running=len(self.sent), capacity=self.slots, completed=0,
                           started_at=0.0)]

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def cluster(self) -> None:
        return None
