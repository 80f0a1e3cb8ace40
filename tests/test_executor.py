"""The `Executor` interface (tagentd/executor/interface.py) and the local executor's decisions, in process.

No daemon and no worker processes: the local executor is given fake processes (they live until a test ends
them) and a fake socket (it records what the executor sends), and the test speaks for the workers through
`on_worker_message`, as workers.sock would. The same decisions are exercised end to end, with real
processes, by test_pool_deaths.py, test_worker_life.py and test_daemon_e2e.py.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_executor import FakeExecutor

from tagent_client import Pipeline
from tagent_client.core.events import Dispatch, Event, StepInterrupted, StepSucceeded, StepTimedOut
from tagent_client.core.state import Phase
from tagent_client.errors import PipelineLoadError, PipelineValidationError
from tagentd.executor.interface import Capacity, Executor, PipelineCode, StepAttempt
from tagentd.executor.local import LocalExecutor
from tagentd.executor.permits import PermitDesk
from tagentd.runs.submission import new_run
from tagentd.worker import wire

pytestmark = pytest.mark.timeout(20)

CODE = PipelineCode(path="p.py", source="SOURCE", source_hash="f" * 64)
GRACE, HEARTBEAT = 1.0, 0.5


def attempt(run_id: str, task: str, number: int = 1, *, isolated: bool = False,
            timeout: float | None = None) -> StepAttempt:
    dispatch = Dispatch(task=task, step=task, phase=Phase.RUN, attempt=number, inputs={}, isolated=isolated,
                        timeout=timeout)
    return StepAttempt(run_id=run_id, pipeline="p", code=CODE, dispatch=dispatch, params={"n": 1})


class FakeProcess:
    """A worker process that lives until it is killed or the test ends it."""

    pids = itertools.count(900_001)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code

    def kill(self) -> None:
        if self.code is None:
            self.code = -signal.SIGKILL

    def terminate(self) -> None:
        if self.code is None:
            self.code = -signal.SIGTERM

    def wait(self, timeout: float | None = None) -> int:
        self.kill()
        assert self.code is not None
        return self.code


class World:
    """A local executor with fake processes (it is their spawner) and a fake socket (it records every send)."""

    def __init__(self, *, size: int = 2, capacity: int = 2, load_timeout: float = 5.0) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.frames: list[tuple[bytes, list[Any]]] = []  # each frame sent: to whom, the messages it held
        self.gone: set[int] = set()  # workers whose socket is gone: every send to them fails
        self.procs: dict[int, FakeProcess] = {}
        self.results: list[tuple[str, Event]] = []
        self.lost: list[tuple[str, Event]] = []
        self.executor = LocalExecutor(
            size=size, capacity=capacity, endpoint="ipc://nowhere", send=self.send,
            on_result=lambda run_id, event: self.results.append((run_id, event)),
            on_lost=lambda run_id, event: self.lost.append((run_id, event)), permits=PermitDesk({}, self.send),
            heartbeat_interval=HEARTBEAT, heartbeat_timeout=5.0, grace=GRACE, recycle_after=0,
            load_timeout=load_timeout, spawner=self)
        self.token = self.executor.admission.token
        self.capacity = capacity

    # the spawner
    def start(self) -> None:
        pass

    def spawn(self, argv: list[str]) -> FakeProcess:
        proc = FakeProcess()
        self.procs[int(argv[argv.index("--id") + 1])] = proc
        return proc

    def close(self) -> None:
        pass

    # the socket
    def send(self, identity: bytes, payload: bytes) -> bool:
        messages, errors = wire.unpack(payload, wire.to_worker_decoder)
        assert not errors
        if int(identity.split(b".")[0][1:]) in self.gone:
            return False
        self.frames.append((identity, messages))
        self.sent.extend((identity, message) for message in messages)
        return True

    def sent_of(self, kind: type) -> list[tuple[int, Any]]:
        """(worker id, message) of each message of that kind sent so far, oldest first."""
        return [(int(ident.split(b".")[0][1:]), msg) for ident, msg in self.sent if isinstance(msg, kind)]

    # the workers
    def says(self, wid: int, msg: Any) -> bool:
        return self.executor.on_worker_message(wire.identity(wid, self.token), msg)

    def ready(self, *wids: int) -> None:
        for wid in wids:
            hello = wire.Hello(worker_id=wid, pid=self.procs[wid].pid, capacity=self.capacity, token=self.token)
            assert self.says(wid, hello)

    def done(self, wid: int, run_id: str, task: str, number: int = 1) -> bool:
        return self.says(wid, wire.TaskDone(run_id=run_id, event=StepSucceeded(task=task, attempt=number)))


def started(**kwargs: Any) -> World:
    world = World(**kwargs)
    world.executor.start()
    world.ready(*world.procs)
    return world


# -- the interface ----------------------------------------------------------------------------------------------


def protocol_members() -> list[str]:
    return [name for name, value in vars(Executor).items() if inspect.isfunction(value) and not name.startswith("_")]


def ray_executor() -> type:
    from tagentd.executor.ray.executor import RayExecutor  # imports Ray: only this test pays for it

    return RayExecutor


@pytest.mark.parametrize("make", [lambda: LocalExecutor, ray_executor, lambda: FakeExecutor],
                         ids=["LocalExecutor", "RayExecutor", "FakeExecutor"])
def test_each_executor_has_every_method_of_the_interface_with_its_parameters(make: Callable[[], type]) -> None:
    """Given the Executor protocol, then the local and Ray executors and the tests' fake each have every one of its methods,
    with the same parameters and the same sync/async kind (so one can stand in for the other)."""
    implementation = make()
    assert len(protocol_members()) >= 14
    for name in protocol_members():
        wanted, got = getattr(Executor, name), getattr(implementation, name, None)
        assert got is not None, f"{implementation.__name__} has no {name}"
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(wanted), name
        params = [(p.name, p.kind) for p in inspect.signature(got).parameters.values()]
        assert params == [(p.name, p.kind) for p in inspect.signature(wanted).parameters.values()], name
    if implementation.__name__ != "RayExecutor":  # one runs for real in tests/test_ray_executor.py
        assert isinstance(World().executor if implementation is LocalExecutor else FakeExecutor(), Executor)


def test_a_run_gives_the_executor_plain_data_read_when_the_attempt_is_dispatched() -> None:
    """Given a run whose trigger is set after it was made (as the broker does), when the engine dispatches an
    attempt, then the executor gets the run's id, code by content, params, model and that trigger — no Run."""
    plan = Pipeline("trip").step("a", fn=lambda ctx: None).plan()
    run = new_run(plan, path="trip.py", source="TEXT", target=None, params={"k": 2}, model="test", who="test")
    run.source.trigger = {"id": "t1"}
    dispatch = Dispatch(task="a", step="a", phase=Phase.RUN, attempt=1, inputs={})

    got = run.attempt(dispatch)

    assert got.key == (run.id, "a", 1) and got.pipeline == "trip" and got.dispatch is dispatch
    assert (got.code.path, got.code.source, got.code.source_hash) == ("trip.py", "TEXT", run.source.source_hash)
    assert (got.params, got.model, got.trigger) == ({"k": 2}, "test", {"id": "t1"})


# -- the local executor's decisions -------------------------------------------------------------------------------


def test_attempts_go_to_free_slots_one_run_at_a_time_and_the_code_once_per_worker() -> None:
    """Given two ready workers with 2 slots each, when run x dispatches 5 attempts and run y 1, then 4 are sent,
    x and y taking turns, each worker's in one frame; each worker gets the file's text with its first attempt
    only; 2 wait, and the executor says it is saturated."""
    world = started()
    assert world.executor.capacity() == Capacity(slots=4, free=4, in_flight=0, queued=0)
    for task in ("x1", "x2", "x3", "x4", "x5"):
        world.executor.dispatch(attempt("x", task))
    world.executor.dispatch(attempt("y", "y1"))

    assert world.executor.pump() == 4

    tasks = world.sent_of(wire.RunTask)
    assert [(wid, msg.task.task) for wid, msg in tasks] == [(1, "x1"), (1, "x2"), (2, "y1"), (2, "x3")]
    assert [msg.source for _, msg in tasks] == ["SOURCE", None, "SOURCE", None]
    assert [len(messages) for _, messages in world.frames] == [2, 2]
    assert all(msg.params == {"n": 1} and msg.source_hash == CODE.source_hash for _, msg in tasks)
    capacity = world.executor.capacity()
    assert (capacity.free, capacity.in_flight, capacity.queued, capacity.saturated) == (0, 4, 2, True)
    assert sorted((r.run_id, r.task, r.worker) for r in world.executor.running()) == [
        ("x", "x1", 1), ("x", "x2", 1), ("x", "x3", 2), ("y", "y1", 2)]


def test_a_result_is_acknowledged_reported_and_frees_its_slot() -> None:
    """Given a full worker, when it reports a result, then the executor acknowledges it, reports it through
    on_result, and the next waiting attempt takes the slot."""
    world = started(size=1, capacity=1)
    world.executor.dispatch(attempt("x", "a"))
    world.executor.dispatch(attempt("x", "b"))
    world.executor.pump()

    assert world.done(1, "x", "a")
    world.executor.pump()

    assert [(wid, msg.keys) for wid, msg in world.sent_of(wire.TaskAcks)] == [(1, [("x", "a", 1)])]
    assert [(run_id, type(e).__name__, e.task) for run_id, e in world.results] == [("x", "StepSucceeded", "a")]
    assert [msg.task.task for _, msg in world.sent_of(wire.RunTask)] == ["a", "b"]
    assert world.executor.workers()[0].completed == 1


def test_the_results_of_one_frame_are_acknowledged_in_one_message_before_the_next_tasks() -> None:
    """Given a worker running three steps, when it reports all three in one frame (one loop turn), then the frame
    it gets back holds one acknowledgement of the three, first, and then the tasks that took their slots."""
    world = started(size=1, capacity=3)
    for task in "abcdef":
        world.executor.dispatch(attempt("x", task))
    world.executor.pump()
    frames_before = len(world.frames)

    assert all(world.done(1, "x", task) for task in "abc")
    world.executor.pump()

    [(_, messages)] = world.frames[frames_before:]
    assert [type(m).__name__ for m in messages] == ["TaskAcks", "RunTask", "RunTask", "RunTask"]
    assert messages[0].keys == [("x", "a", 1), ("x", "b", 1), ("x", "c", 1)]
    assert [m.task.task for m in messages[1:]] == ["d", "e", "f"]


def test_a_worker_that_dies_gets_a_verdict_for_each_step_it_ran_and_a_replacement() -> None:
    """Given a worker running two steps, when its process ends (a segfault), then each step is reported lost as
    interrupted (a bystander: not charged), the death is counted, and a new worker is started in its place."""
    world = started(size=1)
    world.executor.dispatch(attempt("x", "a"))
    world.executor.dispatch(attempt("x", "b"))
    world.executor.pump()

    world.procs[1].code = -signal.SIGSEGV
    world.executor.check(time.monotonic())

    assert sorted(e.task for _, e in world.lost) == ["a", "b"]
    assert all(isinstance(e, StepInterrupted) and "SIGSEGV" in e.reason for _, e in world.lost)
    assert world.results == [] and world.executor.capacity().in_flight == 0
    stats = world.executor.stats()
    assert (stats["workers_lost"], stats["steps_interrupted"], stats["workers_spawned"]) == (1, 2, 2)
    assert [w.id for w in world.executor.workers()] == [2]


def test_a_worker_that_dies_mid_batch_accounts_for_every_task_of_the_batch_exactly_once() -> None:
    """Given one worker sent six tasks in one frame, when it reports two of them (one frame of results) and dies
    with the other four running, then each of the six is reported exactly once: the two as results (acknowledged
    together, in one frame), the four as lost; none is sent again by the executor."""
    world = started(size=1, capacity=8)
    tasks = [f"t{i}" for i in range(6)]
    for task in tasks:
        world.executor.dispatch(attempt("x", task))
    assert world.executor.pump() == 6
    assert [[m.task.task for m in messages] for _, messages in world.frames] == [tasks]

    world.done(1, "x", "t1")
    world.done(1, "x", "t4")
    world.executor.pump()
    world.procs[1].code = -signal.SIGKILL
    world.executor.check(time.monotonic())

    reported = [e.task for _, e in world.results] + [e.task for _, e in world.lost]
    assert sorted(reported) == tasks
    assert [e.task for _, e in world.results] == ["t1", "t4"]
    assert [[m.keys for m in messages] for _, messages in world.frames[1:2]] == [[[("x", "t1", 1), ("x", "t4", 1)]]]  # the acks: one message
    assert [m.task.task for _, m in world.sent_of(wire.RunTask)] == tasks  # each sent once, by the first frame


def test_a_batch_its_worker_cannot_take_puts_each_task_back_once_in_order_for_the_next_worker() -> None:
    """Given two workers, one of whose socket is gone (every send to it fails), when a pump hands out four tasks,
    then that worker is killed and the tasks of its batch wait again, in their order, exactly once each; the
    next pump sends them to the other worker, and nothing is reported for them meanwhile."""
    world = started(size=2, capacity=6)
    world.gone = {1}
    for task in ("a", "b", "c", "d"):
        world.executor.dispatch(attempt("x", task))

    world.executor.pump()
    assert world.procs[1].code == -signal.SIGKILL
    first = [m.task.task for _, m in world.sent_of(wire.RunTask)]  # worker 2's batch
    put_back = [t for t in ("a", "b", "c", "d") if t not in first]
    assert put_back and world.executor.capacity().queued == len(put_back)

    assert world.executor.pump() == len(put_back)
    sent = [(wid, m.task.task) for wid, m in world.sent_of(wire.RunTask)]
    assert sent == [(2, t) for t in first] + [(2, t) for t in put_back]
    assert sorted(t for _, t in sent) == ["a", "b", "c", "d"]
    assert world.lost == [] and world.results == []


def test_a_step_past_its_timeout_plus_grace_is_reported_timed_out_and_its_worker_killed() -> None:
    """Given a step with a 1 s timeout and another on the same worker, when it is still running after its timeout
    plus grace, then it is reported timed out and the worker killed; once that worker has ended, the other step
    is reported interrupted (not charged)."""
    world = started(size=1)
    world.executor.dispatch(attempt("x", "slow", timeout=1.0))
    world.executor.dispatch(attempt("x", "other"))
    world.executor.pump()

    world.executor.check(time.monotonic() + 1.0 + GRACE + 2 * HEARTBEAT + 0.5)
    assert [(type(e).__name__, e.task) for _, e in world.lost] == [("StepTimedOut", "slow")]
    assert world.procs[1].code == -signal.SIGKILL

    world.executor.check(time.monotonic())
    assert [(type(e).__name__, e.task) for _, e in world.lost][1:] == [("StepInterrupted", "other")]


def test_an_isolated_step_runs_alone_in_a_worker_started_for_it_which_then_stops() -> None:
    """Given a ready shared worker, when an isolated step is dispatched, then a worker is started for it alone and
    the step is sent there only; once it reports, that worker is asked to stop and takes nothing else."""
    world = started(size=1)
    world.executor.dispatch(attempt("x", "lonely", isolated=True))

    assert world.executor.pump() == 0 and set(world.procs) == {1, 2}  # worker 2 is starting, for it
    world.ready(2)
    world.executor.dispatch(attempt("x", "shared"))
    world.executor.pump()

    assert [(wid, msg.task.task) for wid, msg in world.sent_of(wire.RunTask)] == [(2, "lonely"), (1, "shared")]
    assert {w.id: w.state for w in world.executor.workers()}[2] == "alone"
    world.done(2, "x", "lonely")
    world.executor.check(time.monotonic())
    assert [(wid, msg.graceful) for wid, msg in world.sent_of(wire.StopWorker)] == [(2, True)]
    assert world.executor.stats()["steps_run_alone"] == 1


def test_an_isolated_step_whose_worker_dies_before_it_is_sent_waits_for_the_next_one() -> None:
    """Given an isolated step and the worker started for it, when that worker dies before its hello, then the step
    is not lost (nothing is reported): the next worker started for it runs it."""
    world = started(size=1)
    world.executor.dispatch(attempt("x", "lonely", isolated=True))
    world.executor.pump()

    world.procs[2].code = -signal.SIGKILL
    world.executor.check(time.monotonic())
    world.ready(3)

    assert world.lost == [] and [(wid, msg.task.task) for wid, msg in world.sent_of(wire.RunTask)] == [(3, "lonely")]


def test_a_stranger_is_refused_and_only_the_executors_own_messages_are_handled() -> None:
    """Given a peer whose identity lacks the daemon's token, when it says anything, then it is refused and nothing
    else happens; from the executor's own worker, a hello or heartbeat is the executor's, a log line is not."""
    world = started(size=1)
    log_line = wire.LogLine(run_id="x", step="a", level=20, message="hi", ts=0.0)

    assert world.executor.on_worker_message(b"w1.not-the-token", log_line)
    assert [(ident, type(msg).__name__) for ident, msg in world.sent] == [(b"w1.not-the-token", "Refused")]
    assert world.executor.stats()["workers_refused"] == 1
    assert world.says(1, wire.Heartbeat(worker_id=1))
    assert not world.says(1, log_line)


def test_cancelled_attempts_are_never_sent_and_running_ones_are_told_to_stop() -> None:
    """Given one slot, attempt a running and b waiting, when both are cancelled, then b is never sent, a's worker
    is told to stop it, and nothing is reported for either."""
    world = started(size=1, capacity=1)
    world.executor.dispatch(attempt("x", "a"))
    world.executor.dispatch(attempt("x", "b"))
    world.executor.pump()

    world.executor.cancel("x", "b", 1)
    world.executor.cancel("x", "a", 1)
    world.executor.pump()

    assert [msg.task.task for _, msg in world.sent_of(wire.RunTask)] == ["a"]
    assert [(msg.run_id, msg.task) for _, msg in world.sent_of(wire.CancelRunning)] == [("x", "a")]
    assert world.executor.capacity().in_flight == 0 and world.results == world.lost == []


def test_after_hold_nothing_is_sent_and_what_waits_stays_waiting() -> None:
    """Given a ready worker, when the executor holds (a stop began) and an attempt is dispatched, then it is not
    sent, and it is counted as waiting."""
    world = started(size=1)
    world.executor.hold()
    world.executor.dispatch(attempt("x", "a"))

    assert world.executor.pump() == 0
    assert world.sent_of(wire.RunTask) == [] and world.executor.capacity().queued == 1


def test_a_pipeline_file_is_loaded_in_a_worker_and_its_answer_becomes_a_plan_or_an_error() -> None:
    """Given a ready worker, when a file is loaded, then the worker is asked to load it and its answer is the Plan;
    a validation failure is PipelineValidationError naming the path; a worker that ends mid-load, or none ready
    in time, is a one-line PipelineLoadError."""
    plan = Pipeline("good").step("a", fn=lambda ctx: None).plan()

    async def load_answered_with(world: World, answer: Any) -> Any:
        loading = asyncio.ensure_future(world.executor.load(CODE))
        while not world.sent_of(wire.LoadPipeline):
            await asyncio.sleep(0)  # let the load be sent
        wid, request = world.sent_of(wire.LoadPipeline)[-1]
        answer(wid, request.req)
        return await loading

    async def scenario() -> None:
        world = started(size=1)
        got = await load_answered_with(world, lambda wid, req: world.says(wid, wire.Loaded(req=req, plan=plan)))
        assert got.name == "good" and world.sent_of(wire.LoadPipeline)[0][1].source == "SOURCE"

        world = started(size=1)
        with pytest.raises(PipelineValidationError) as invalid:
            await load_answered_with(world, lambda wid, req: world.says(wid, wire.LoadFailed(
                req=req, code=PipelineValidationError.code, message="p.py: pipeline 'bad' is invalid: x",
                problems=["x"], pipeline="bad")))
        assert invalid.value.message == "p.py: pipeline 'bad' is invalid: x" and invalid.value.details["path"] == "p.py"

        world = started(size=1)

        def dies(wid: int, req: int) -> None:
            world.procs[wid].code = 3
            world.executor.check(time.monotonic())

        with pytest.raises(PipelineLoadError, match=r"^p\.py: worker 1 ended while loading the pipeline: exit code 3$"):
            await load_answered_with(world, dies)

        with pytest.raises(PipelineLoadError, match="no worker became ready"):
            await World(size=1, load_timeout=0.05).executor.load(CODE)

    asyncio.run(scenario())


# -- the fake ---------------------------------------------------------------------------------------------------


def test_the_fake_executor_sends_in_turn_and_reports_what_the_test_ends() -> None:
    """Given the fake with one slot, when two runs dispatch, then it sends one at a time in turn, and a finished or
    lost attempt is reported through on_result / on_lost, as a real executor does."""
    results: list[tuple[str, Event]] = []
    lost: list[tuple[str, Event]] = []
    fake = FakeExecutor(on_result=lambda r, e: results.append((r, e)), on_lost=lambda r, e: lost.append((r, e)),
                        slots=1)
    fake.start()
    fake.dispatch(attempt("x", "a"))
    fake.dispatch(attempt("y", "b"))

    assert fake.pump() == 1 and fake.capacity().saturated
    fake.finish(("x", "a", 1))
    assert fake.pump() == 1 and [r.run_id for r in fake.running()] == ["y"]
    fake.lose(("y", "b", 1), StepTimedOut(task="b", attempt=1, timeout=1.0))

    assert [(r, type(e).__name__) for r, e in results] == [("x", "StepSucceeded")]
    assert [(r, type(e).__name__) for r, e in lost] == [("y", "StepTimedOut")]
