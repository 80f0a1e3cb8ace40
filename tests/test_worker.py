"""End-to-end tests of the worker process (tagentd.worker): the test plays the daemon over a real ROUTER socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tagent_client.core.events import Dispatch, StepFailed, StepSucceeded, StepTimedOut
from tagent_client.core.state import Phase
from tagentd.worker import wire
from tagentd.worker.wire import source_hash

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

File = tuple[str, str, str]  # (path, source, source hash) of a pipeline file, as a RunTask carries them

TOKEN = "0123456789abcdef"  # the fake daemon's token, handed to the workers it spawns

PIPELINE = """\
import asyncio

from pydantic import BaseModel
from tagent_client import Pipeline


class Greeting(BaseModel):
    text: str
    attempt: int


p = Pipeline("worker_test")


@p.task(output_schema=Greeting)
def greet(ctx, name="world"):
    return {"text": f"hello {name}", "attempt": ctx.attempt}


@p.task
def boom(ctx):
    raise ValueError("bad input: 42")


@p.task
async def slow(ctx):
    await asyncio.sleep(30)  # ok-sleep: the step's own work (or a yield), not a wait for something


@p.task
def spin(ctx):
    while True:
        pass


@p.task
async def remember(ctx):
    await ctx.memory.save("seen", {"count": 3})
    ctx.log.info("saved the count")
    ctx.progress(0.5, "half way")
    return await ctx.memory.get("seen")


@p.task
async def gated(ctx):
    return await ctx.memory.get("gate")


@p.task
def unsendable(ctx):
    return {"handle": object()}
"""


class FakeDaemon:
    """The daemon's end of workers.sock, played by the test: a ROUTER socket and the worker processes it spawned."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.endpoint = f"ipc://{tmp_path}/w.sock"
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.endpoint)
        self.inbox: list[tuple[bytes, Any]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.memory: dict[str, Any] = {}

    def spawn(self, wid: int = 1, capacity: int = 4, heartbeat: float = 0.2, grace: float = 0.3) -> subprocess.Popen[bytes]:
        """Start a worker and wait for its Hello."""
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{ROOT}", wire.TOKEN_ENV: TOKEN}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tagentd.worker", "--endpoint", self.endpoint, "--id", str(wid),
             "--capacity", str(capacity), "--heartbeat", str(heartbeat), "--grace", str(grace)],
            env=env, stderr=(self.tmp_path / f"worker{wid}.err").open("wb"),
        )
        self.procs.append(proc)
        hello = self.expect(wire.Hello, timeout=20)
        assert hello.pid == proc.pid and hello.token == TOKEN
        return proc

    def send(self, message: wire.WorkerMessage | bytes, wid: int = 1) -> None:
        frame = message if isinstance(message, bytes) else wire.encode(message)
        self.router.send_multipart([wire.identity(wid, TOKEN), frame])

    def _take(self, kind: type, where: Callable[[Any], bool]) -> Any:
        for index, (_, message) in enumerate(self.inbox):
            if isinstance(message, kind) and where(message):
                return self.inbox.pop(index)[1]
        return None

    def _receive(self, until: float) -> bool:
        """Receive one message into the inbox before `until`; False when the deadline passed."""
        remaining = until - time.monotonic()
        if remaining <= 0 or not self.router.poll(int(remaining * 1000) + 1):
            return False
        identity, frame = self.router.recv_multipart()
        messages, errors = wire.unpack(frame, wire.from_worker_decoder)  # a frame holds a loop turn's messages
        assert not errors
        self.inbox.extend((identity, message) for message in messages)
        return True

    def expect(self, kind: type, where: Callable[[Any], bool] = lambda m: True, timeout: float = 10.0) -> Any:
        """The first message of `kind` matching `where`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._take(kind, where)
            if found is not None:
                return found
            if not self._receive(deadline):
                pytest.fail(f"no {kind.__name__} within {timeout}s; got {[m for _, m in self.inbox][-5:]}")

    def expect_none(self, kind: type, where: Callable[[Any], bool] = lambda m: True, within: float = 1.5) -> None:
        """Fail if a message of `kind` matching `where` arrives in the next `within` seconds."""
        deadline = time.monotonic() + within
        while self._take(kind, where) is None:
            if not self._receive(deadline):
                return
        pytest.fail(f"unexpected {kind.__name__}")

    def done(self, task: str, timeout: float = 10.0) -> wire.TaskDone:
        return self.expect(wire.TaskDone, lambda m: m.event.task == task, timeout)

    def serve_memory(self, message: wire.MemoryGet | wire.MemorySave) -> None:
        """Answer a memory request as the daemon would."""
        if isinstance(message, wire.MemorySave):
            self.memory[message.key] = message.value
            self.send(wire.MemoryReply(req=message.req))
        else:
            self.send(wire.MemoryReply(req=message.req, value=self.memory.get(message.key)))

    def stderr(self, wid: int) -> str:
        return (self.tmp_path / f"worker{wid}.err").read_text()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.router.close()
        self.context.term()

    def __enter__(self) -> FakeDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path) as fake:
        yield fake


@pytest.fixture
def pipeline_file(tmp_path: Path) -> File:
    path = tmp_path / "worker_pipeline.py"
    path.write_text(PIPELINE)
    return str(path), PIPELINE, source_hash(PIPELINE)


def run_task(file: File, step: str, task: str | None = None, *, attempt: int = 1,
             timeout: float | None = None, with_source: bool = True, params: dict[str, Any] | None = None) -> wire.RunTask:
    path, source, hash_ = file
    dispatch = Dispatch(task=task or step, step=step, phase=Phase.RUN, attempt=attempt, inputs={}, timeout=timeout)
    return wire.RunTask(run_id="r1", source_hash=hash_, path=path, target=None,
                        source=source if with_source else None, task=dispatch, params=params or {})


def ack(done: wire.TaskDone) -> wire.TaskAcks:
    return wire.TaskAcks(keys=[(done.run_id, done.event.task, done.event.attempt)])


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    return proc.wait(timeout=timeout)


# -- start and load ---------------------------------------------------------------------


def test_a_worker_says_hello_and_heartbeats(fake_daemon: FakeDaemon) -> None:
    # Given a spawned worker (spawn waits for its Hello)
    fake_daemon.spawn(wid=1, capacity=3)

    # Then it heartbeats with nothing in flight
    beat = fake_daemon.expect(wire.Heartbeat)
    assert beat.worker_id == 1 and beat.running == [] and beat.dropped == 0


def test_load_pipeline_answers_with_its_plan_and_schema_names(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker
    fake_daemon.spawn()
    path, source, hash_ = pipeline_file

    # When it is asked to load the file
    fake_daemon.send(wire.LoadPipeline(req=7, source_hash=hash_, path=path, source=source))

    # Then it answers with the plan and the schema class names
    loaded = fake_daemon.expect(wire.Loaded)
    assert loaded.req == 7
    assert loaded.plan.name == "worker_test"
    assert [s.name for s in loaded.plan.steps] == ["greet", "boom", "slow", "spin", "remember", "gated", "unsendable"]
    assert loaded.schemas == {"greet": f"tagent_user_{hash_[:16]}:Greeting"}


def test_load_failures_are_one_line_with_a_code(fake_daemon: FakeDaemon, tmp_path: Path) -> None:
    # Given a worker, a file with a syntax error and a file with an invalid pipeline
    fake_daemon.spawn()
    broken = "from tagent_client import Pipeline\np = Pipeline('x'\n"
    invalid = "from tagent_client import Pipeline\np = Pipeline('bad').step('a', fn=print, depends_on=['nope'])\n"
    broken_path, invalid_path = tmp_path / "broken.py", tmp_path / "invalid.py"

    # When both are loaded
    fake_daemon.send(wire.LoadPipeline(req=1, source_hash=source_hash(broken), path=str(broken_path), source=broken))
    fake_daemon.send(wire.LoadPipeline(req=2, source_hash=source_hash(invalid), path=str(invalid_path), source=invalid))

    # Then each fails with its code, a one-line message naming the file, and the problems
    syntax = fake_daemon.expect(wire.LoadFailed, lambda m: m.req == 1)
    assert syntax.code == "load_failed"
    assert syntax.message.startswith(f"{broken_path}:2: syntax error:") and "\n" not in syntax.message
    bad = fake_daemon.expect(wire.LoadFailed, lambda m: m.req == 2)
    assert bad.code == "invalid_pipeline"
    assert bad.message.startswith(f"{invalid_path}: pipeline 'bad' is invalid:") and "\n" not in bad.message
    assert bad.problems == ["step 'a': depends on unknown step 'nope'"]


def test_a_malformed_frame_is_counted_and_dropped(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker
    fake_daemon.spawn()
    path, source, hash_ = pipeline_file

    # When it receives garbage, then a good message
    fake_daemon.send(b"\xc1 not msgpack")
    fake_daemon.send(wire.LoadPipeline(req=1, source_hash=hash_, path=path, source=source))

    # Then the good message is still served and the heartbeat counts the dropped frame
    fake_daemon.expect(wire.Loaded)
    fake_daemon.expect(wire.Heartbeat, lambda m: m.dropped == 1)


# -- running tasks ----------------------------------------------------------------------


def test_a_batch_runs_each_task_and_drops_only_the_message_that_does_not_decode(fake_daemon: FakeDaemon,
                                                                               pipeline_file: File) -> None:
    # Given a worker
    fake_daemon.spawn()

    # When one frame brings it three tasks (the file's text with the first only) around a malformed message
    tasks = [wire.encode(run_task(pipeline_file, "greet", f"t{i}", with_source=i == 0)) for i in range(3)]
    fake_daemon.send(wire.pack([tasks[0], b"\xc1 not msgpack", tasks[1], tasks[2]]))

    # Then every task runs and reports, and the heartbeat counts the one dropped message
    for i in range(3):
        done = fake_daemon.done(f"t{i}")
        assert isinstance(done.event, StepSucceeded), done.event
    fake_daemon.expect(wire.Heartbeat, lambda m: m.dropped == 1)



def test_a_function_step_succeeds_with_plain_data_output(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker that has never seen the file
    fake_daemon.spawn()

    # When a task is dispatched with the source, then another one without it
    fake_daemon.send(run_task(pipeline_file, "greet", "t1", params={"name": "ada"}))
    first = fake_daemon.done("t1")
    fake_daemon.send(run_task(pipeline_file, "greet", "t2", attempt=2, with_source=False))
    second = fake_daemon.done("t2")

    # Then both succeed, their pydantic outputs sent as plain dicts
    assert isinstance(first.event, StepSucceeded) and first.run_id == "r1"
    assert first.event.output == {"text": "hello ada", "attempt": 1}
    assert isinstance(second.event, StepSucceeded)
    assert second.event.output == {"text": "hello world", "attempt": 2}


def test_a_raising_step_fails_with_error_info(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "boom"))
    event = fake_daemon.done("boom").event
    assert isinstance(event, StepFailed)
    assert (event.error.type, event.error.message, event.error.retryable) == ("ValueError", "bad input: 42", False)
    assert "raise ValueError" in (event.error.traceback or "")


def test_an_output_that_is_not_plain_data_fails_the_attempt(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "unsendable"))
    event = fake_daemon.done("unsendable").event
    assert isinstance(event, StepFailed) and not event.error.retryable
    assert event.error.type == "StepOutputError" and "cannot encode object" in event.error.message


def test_a_task_for_an_unknown_file_without_source_fails_retryably(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "greet", with_source=False))
    event = fake_daemon.done("greet").event
    assert isinstance(event, StepFailed) and event.error.retryable
    assert "carried no source" in event.error.message


def test_a_slow_async_step_times_out_and_the_worker_carries_on(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker with a 0.3 s grace
    proc = fake_daemon.spawn(grace=0.3)

    # When an async step overruns its 0.2 s timeout
    fake_daemon.send(run_task(pipeline_file, "slow", timeout=0.2))
    done = fake_daemon.done("slow")
    fake_daemon.send(ack(done))

    # Then it is reported timed out, and the worker keeps serving past the grace period
    assert isinstance(done.event, StepTimedOut) and done.event.timeout == 0.2
    timed_out_at = time.monotonic()
    fake_daemon.expect(wire.Heartbeat, lambda m: time.monotonic() > timed_out_at + 1.0)
    assert proc.poll() is None
    fake_daemon.send(run_task(pipeline_file, "greet", with_source=False))
    assert isinstance(fake_daemon.done("greet").event, StepSucceeded)


def test_a_result_is_resent_until_acknowledged(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a finished task whose result was not acknowledged
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "greet"))
    first = fake_daemon.done("greet")

    # When the daemon stays silent, Then the same result comes again
    again = fake_daemon.done("greet", timeout=5)
    assert again.event == first.event

    # When it acknowledges, Then the re-sending stops
    fake_daemon.send(ack(again))
    fake_daemon.inbox.clear()
    fake_daemon.expect_none(wire.TaskDone, within=2.0)


def test_memory_log_and_progress_go_through_the_daemon(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker running a step that saves, logs, reports progress and reads back
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "remember"))

    # When the daemon serves the memory requests
    save = fake_daemon.expect(wire.MemorySave)
    assert (save.run_id, save.key, save.value) == ("r1", "seen", {"count": 3})
    fake_daemon.serve_memory(save)
    fake_daemon.serve_memory(fake_daemon.expect(wire.MemoryGet, lambda m: m.key == "seen"))

    # Then the step's output is what memory held, and its log line and progress arrived
    done = fake_daemon.done("remember")
    assert isinstance(done.event, StepSucceeded) and done.event.output == {"count": 3}
    line = fake_daemon.expect(wire.LogLine)
    assert (line.run_id, line.step, line.message) == ("r1", "remember", "saved the count")
    note = fake_daemon.expect(wire.ProgressNote)
    assert (note.fraction, note.message) == (0.5, "half way")


def test_tasks_run_concurrently(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a task blocked on a memory read the daemon has not answered yet
    fake_daemon.spawn(capacity=2)
    fake_daemon.send(run_task(pipeline_file, "gated"))
    gate = fake_daemon.expect(wire.MemoryGet, lambda m: m.key == "gate")

    # When another task is dispatched, Then it finishes while the first still waits
    fake_daemon.send(run_task(pipeline_file, "greet", with_source=False))
    assert isinstance(fake_daemon.done("greet").event, StepSucceeded)

    # And the first finishes once its read is answered
    fake_daemon.memory["gate"] = "open"
    fake_daemon.serve_memory(gate)
    assert fake_daemon.done("gated").event.output == "open"


def test_a_cancelled_task_stops_without_a_result(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a running task
    fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "slow"))
    fake_daemon.expect(wire.Heartbeat, lambda m: m.running == [("r1", "slow", 1)])

    # When it is cancelled
    fake_daemon.send(wire.CancelRunning(run_id="r1", task="slow", attempt=1))

    # Then it leaves the heartbeat and sends no result
    fake_daemon.expect(wire.Heartbeat, lambda m: m.running == [])
    fake_daemon.expect_none(wire.TaskDone, within=0.5)


# -- ending ----------------------------------------------------------------------------------


def test_a_stuck_sync_step_makes_the_worker_exit_70_after_reporting(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a worker with a 0.3 s grace
    proc = fake_daemon.spawn(grace=0.3)

    # When a sync step spins forever past its 0.2 s timeout
    fake_daemon.send(run_task(pipeline_file, "spin", timeout=0.2))

    # Then the timeout is reported, and once acknowledged the worker exits with EXIT_STUCK_STEP
    done = fake_daemon.done("spin")
    assert isinstance(done.event, StepTimedOut)
    fake_daemon.send(ack(done))
    assert wait_exit(proc) == wire.EXIT_STUCK_STEP == 70
    assert "still running" in fake_daemon.stderr(1)


def test_a_graceful_stop_finishes_running_tasks_and_refuses_new_ones(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    # Given a task in flight
    proc = fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "gated"))
    gate = fake_daemon.expect(wire.MemoryGet)

    # When the worker is told to stop gracefully and then given more work
    fake_daemon.send(wire.StopWorker(graceful=True))
    fake_daemon.send(run_task(pipeline_file, "greet", with_source=False))

    # Then the new task is refused as retryable, the running one completes, and the worker exits 0
    refused = fake_daemon.done("greet").event
    assert isinstance(refused, StepFailed) and refused.error.retryable
    fake_daemon.send(ack(wire.TaskDone(run_id="r1", event=refused)))
    assert proc.poll() is None
    fake_daemon.memory["gate"] = 1
    fake_daemon.serve_memory(gate)
    done = fake_daemon.done("gated")
    fake_daemon.send(ack(done))
    assert wait_exit(proc) == wire.EXIT_OK


def test_a_hard_stop_exits_at_once(fake_daemon: FakeDaemon, pipeline_file: File) -> None:
    proc = fake_daemon.spawn()
    fake_daemon.send(run_task(pipeline_file, "slow"))
    fake_daemon.expect(wire.Heartbeat, lambda m: m.running)
    fake_daemon.send(wire.StopWorker(graceful=False))
    assert wait_exit(proc, timeout=5) == wire.EXIT_OK


def test_a_refused_worker_exits_at_once(fake_daemon: FakeDaemon) -> None:
    # Given a worker
    proc = fake_daemon.spawn()

    # When the daemon refuses it (it was not started by this daemon)
    fake_daemon.send(wire.Refused(reason="not one of mine"))

    # Then it exits with EXIT_REFUSED, saying why
    assert wait_exit(proc) == wire.EXIT_REFUSED == 72
    assert "refused this worker: not one of mine" in fake_daemon.stderr(1)


def test_a_worker_whose_parent_is_not_the_given_pid_exits_before_saying_hello(fake_daemon: FakeDaemon) -> None:
    # Given the pid of a process that is not the worker's parent (as if its daemon died while it started)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{ROOT}", wire.TOKEN_ENV: TOKEN}
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        # When a worker is started to die with that pid
        proc = subprocess.Popen([sys.executable, "-m", "tagentd.worker", "--endpoint", fake_daemon.endpoint,
                                 "--id", "1", "--parent-pid", str(other.pid)], env=env, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=20)
    finally:
        other.kill()
        other.wait()

    # Then it exits at once with EXIT_LOST_DAEMON, without a hello
    assert proc.returncode == wire.EXIT_LOST_DAEMON, err
    assert b"is gone" in err
    fake_daemon.expect_none(wire.Hello, within=0.5)


def test_sigterm_stops_an_idle_worker(fake_daemon: FakeDaemon) -> None:
    proc = fake_daemon.spawn()
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == wire.EXIT_OK
