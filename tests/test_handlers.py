"""The daemon's handlers, in-process, against fakes of the ports they are given: no daemon, no sockets.

The control handlers, the broker handlers (for a client and for a step), the worker-message table and
the run driver are built the way tagentd/app/daemon.py wires them, but with a `FakeOps` for the runs, a
`FakeChannel` for a socket and tests/fake_executor.py's `FakeExecutor` for the workers (as dramatiq's
StubBroker stands in for a broker). The group commit and the broker are the real ones (the broker with
its in-memory store).
The end-to-end tests (test_daemon_e2e.py, test_broker_*.py, ...) cover the same paths over real
sockets; these say which part answers what, in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fake_executor import FakeExecutor

from tagent_client import Pipeline
from tagent_client.core.events import Cancelled, StepSucceeded
from tagent_client.define.plan import Plan
from tagent_client.errors import InvalidRequest, PipelineLoadError
from tagent_client.wire import protocol as p
from tagent_client.wire import protocol_broker as b
from tagentd.app.commit import GroupCommit
from tagentd.broker.service import BrokerShell
from tagentd.control import handlers as control
from tagentd.control.broker_calls import BrokerCalls
from tagentd.control.dependency_waits import DependencyWaits
from tagentd.control.router import Router
from tagentd.control.server import ControlReplyShape
from tagentd.control.workers import WorkerMessages, WorkerPorts
from tagentd.runs import submission
from tagentd.runs.driver import RunDriver
from tagentd.runs.run import Run
from tagentd.runs.store import MemoryStore
from tagentd.runs.table import RunTable
from tagentd.settings.config import Settings
from tagentd.storage.health import StoreHealth
from tagentd.worker import wire

pytestmark = pytest.mark.timeout(10)

ME = {"uid": 1000, "pid": 4242}  # what a client reports; no OS credentials in-process: marked "reported"
WHO = "uid=1000 pid=4242 (reported)"


def plan_of(name: str, triggers: tuple[str, ...] = ()) -> Plan:
    pipeline = Pipeline(name, triggers=triggers)

    @pipeline.task
    def only() -> int:
        return 1

    return pipeline.plan()


# -- fakes of the ports -------------------------------------------------------------------------------------------


class FakeOps:
    """RunOps over a real run table; records every operation; loads the plans it was given."""

    def __init__(self) -> None:
        self.runs = RunTable(MemoryStore(), 16)
        self.accepting = True
        self.plans: dict[str, Plan] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.expire_error: Exception | None = None

    def start_run(self, run: Run) -> None:
        self.runs.add(run)
        self.calls.append(("start", run.id))

    def cancel_run(self, run: Run, reason: str) -> None:
        self.calls.append(("cancel", run.id, reason))

    def reset_run(self, run: Run, steps: list[str]) -> None:
        if not self.accepting:
            raise InvalidRequest(f"the daemon is stopping; resume or retry run {run.id} after the next start")
        self.calls.append(("reset", run.id, steps))

    def feed(self, run: Run, event: Any) -> None:
        self.calls.append(("feed", run.id, event))

    def changed(self, run: Run) -> None:
        self.calls.append(("changed", run.id))

    def lend_slot(self, run: Run, task: str, attempt: int, lent: bool) -> None:
        self.calls.append(("lend_slot", run.id, task, attempt, lent))

    async def load_plan(self, path: str, source: str, target: str | None = None) -> Plan:
        if path not in self.plans:
            raise PipelineLoadError(f"{path}:1: no pipeline in it")
        return self.plans[path]

    async def submit_source(self, path: str, source: str, target: str | None = None,
                            params: dict[str, Any] | None = None, model: str | None = None, who: str = "daemon", *,
                            plan: Plan | None = None, idempotency_key: str | None = None) -> Run:
        plan = plan or await self.load_plan(path, source, target)
        run = submission.new_run(plan, path=path, source=source, target=target, params=params, model=model, who=who,
                                 idempotency_key=idempotency_key)
        self.start_run(run)
        return run

    def expire(self, **limits: Any) -> list[str]:
        if self.expire_error is not None:
            raise self.expire_error
        return []


class FakeChannel:
    """A socket that keeps what is sent on it: queued (`send`) or at once (`send_now`)."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send(self, frames: list[bytes]) -> None:
        self.sent.append(frames)

    def send_now(self, frames: list[bytes]) -> bool:
        self.sent.append(frames)
        return True


class Participant:
    """A commit participant whose flush succeeds, or fails with `error`."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.heard: list[str] = []

    def prepare(self) -> str:
        return "token"

    def flush(self, token: str) -> Awaitable[None]:
        return self._flush()

    async def _flush(self) -> None:
        if self.error is not None:
            raise self.error

    def committed(self, token: str) -> None:
        self.heard.append("committed")

    def failed(self, token: str) -> None:
        self.heard.append("failed")


class World:
    """The parts as the daemon wires them, around the fakes."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(durable=False, state_dir=tmp_path, runtime_dir=tmp_path)
        self.ops = FakeOps()
        self.health = StoreHealth(tmp_path)
        self.commit = GroupCommit(self.health, retry_s=0.0)
        self.disk = Participant()
        self.broker = BrokerShell(self.settings, ops=self.ops, mark_dirty=self.commit.mark_dirty,
                                  steps_in_flight=lambda: [])
        self.commit.join(self.disk, self.broker)
        self.router = Router(lambda coro: asyncio.get_running_loop().create_task(coro))
        self.ports = control.Ports(settings=self.settings, ops=self.ops, broker=self.broker,
                                   submit_keys=submission.SubmitKeys(), status=self._no_status,
                                   watch=lambda: None, stop=self._no_stop, metrics=lambda: "")
        self.executor = FakeExecutor()
        self.workers = FakeChannel()
        self.stats: dict[str, Any] = {}
        calls = BrokerCalls(broker=self.broker, router=self.router, channel=self.workers)  # type: ignore[arg-type]
        waits = DependencyWaits(ops=self.ops, channel=self.workers, reply_after_commit=self.commit.reply_after_commit,  # type: ignore[arg-type]
                                spawn=self.router.spawn)
        self.messages = WorkerMessages(WorkerPorts(
            executor=self.executor, ops=self.ops, broker=self.broker, broker_calls=calls,  # type: ignore[arg-type]
            dependency_waits=waits,
            channel=self.workers, reply_after_commit=self.commit.reply_after_commit), self.stats)  # type: ignore[arg-type]

    @staticmethod
    def _no_status() -> p.DaemonInfo:
        raise AssertionError("not asked")

    @staticmethod
    def _no_stop(**how: Any) -> dict[str, Any]:
        raise AssertionError("not asked")

    async def ask(self, req: p.Request | b.BrokerRequest) -> p.Reply | p.ErrorReply:
        """Serve one control request as control.sock does, and decode the reply it delivers."""
        delivered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        handler, args = control.route(self.ports, req)  # type: ignore[arg-type]
        self.router.serve(handler, args, ControlReplyShape(req), delivered.set_result)  # type: ignore[arg-type]
        return p.decode_reply(await asyncio.wait_for(delivered, 2.0))

    def from_worker(self, identity: bytes, msg: wire.WorkerMessage) -> None:
        self.messages.on_batch([[identity, wire.encode(msg)]])

    def replies_to(self, identity: bytes) -> list[wire.WorkerMessage]:
        return [wire.to_worker_decoder.decode(frames[1]) for frames in self.workers.sent if frames[0] == identity]


def run_async(test: Callable[[World], Awaitable[None]], tmp_path: Path) -> None:
    asyncio.run(test(World(tmp_path)))


def started(world: World, name: str = "hello") -> Run:
    run = submission.new_run(plan_of(name), path=f"/p/{name}.py", source="src", target=None, params=None, model=None,
                             who=WHO)
    world.ops.start_run(run)
    run.machine.start(0.0)
    return run


# -- control requests ---------------------------------------------------------------------------------------------


def test_a_submit_starts_a_run_of_the_loaded_plan_audited_with_its_sender(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a file whose plan loads
        world.ops.plans["/p/hello.py"] = plan_of("hello")
        # When a client submits it
        reply = await world.ask(p.Submit(id=7, path="/p/hello.py", source="text", **ME))
        # Then the reply names the new run, which was started and is audited as submitted by the sender
        assert isinstance(reply, p.Reply) and reply.id == 7
        run = world.ops.runs.live(reply.result["run_id"])
        assert run is not None and ("start", run.id) in world.ops.calls
        assert reply.result["pipeline"] == "hello" and reply.result["steps"] == ["only"]
        assert [(e.who, e.what) for e in run.history] == [(WHO, "submit")]
    run_async(test, tmp_path)


def test_a_submit_of_a_pipeline_with_triggers_registers_it_and_starts_nothing(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a file whose pipeline declares a trigger
        world.ops.plans["/p/reacts.py"] = plan_of("reacts", triggers=("orders.new",))
        # When it is submitted
        reply = await world.ask(p.Submit(id=1, path="/p/reacts.py", source="text", **ME))
        # Then it is registered with the broker, and no run starts
        assert isinstance(reply, p.Reply) and reply.result["registered"] is True
        assert reply.result["triggers"] == ["orders.new"]
        assert list(world.broker.broker.registrations) == ["reacts"]
        assert not [c for c in world.ops.calls if c[0] == "start"]
    run_async(test, tmp_path)


def test_a_file_that_does_not_load_is_answered_with_its_error_code(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # When a file that does not load is submitted
        reply = await world.ask(p.Submit(id=2, path="/p/broken.py", source="text", **ME))
        # Then the TagentError the handler raised is the reply: its code and its one-line message
        assert isinstance(reply, p.ErrorReply) and reply.id == 2
        assert (reply.code, reply.message) == ("load_failed", "/p/broken.py:1: no pipeline in it")
    run_async(test, tmp_path)


def test_the_status_of_a_run_and_of_an_unknown_one(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a started run
        run = started(world)
        # When its status is asked for, and that of a run that does not exist
        known = await world.ask(p.GetRun(id=3, run_id=run.id, **ME))
        unknown = await world.ask(p.GetRun(id=4, run_id="nope", **ME))
        # Then the first is the run's detail, the second the NotFound error, saying how to list runs
        assert isinstance(known, p.Reply) and known.result["run_id"] == run.id and known.result["status"] == "running"
        assert isinstance(unknown, p.ErrorReply) and unknown.code == "not_found" and "'tagent runs'" in unknown.message
    run_async(test, tmp_path)


def test_a_cancel_is_audited_and_handed_to_the_runs(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a running run
        run = started(world)
        # When a client cancels it
        reply = await world.ask(p.Cancel(id=5, run_id=run.id, reason="changed my mind", **ME))
        # Then the run ops cancel it with the reason, and its history says who asked
        assert isinstance(reply, p.Reply) and reply.result["run_id"] == run.id
        assert ("cancel", run.id, "changed my mind") in world.ops.calls
        assert (WHO, "cancel") in [(e.who, e.what) for e in run.history]
    run_async(test, tmp_path)


def test_a_resume_while_stopping_is_refused_and_not_audited(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a cancelled run, and a daemon that has begun stopping
        run = started(world)
        run.machine.handle(Cancelled(reason="x"), 0.0)
        world.ops.accepting = False
        # When a client resumes it
        reply = await world.ask(p.Resume(id=6, run_id=run.id, **ME))
        # Then it is refused with invalid_request, nothing was reset, and the history has no resume
        assert isinstance(reply, p.ErrorReply) and reply.code == "invalid_request" and "stopping" in reply.message
        assert not [c for c in world.ops.calls if c[0] == "reset"]
        assert "resume" not in [e.what for e in run.history]
        # And once the daemon accepts work again, the same request resets the failed and cancelled steps
        world.ops.accepting = True
        again = await world.ask(p.Resume(id=7, run_id=run.id, **ME))
        assert isinstance(again, p.Reply) and ("reset", run.id, ["only"]) in world.ops.calls
    run_async(test, tmp_path)


def test_an_unexpected_exception_becomes_a_logged_internal_error_reply(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def test(world: World) -> None:
        # Given run ops with a bug in retention
        world.ops.expire_error = ZeroDivisionError("division by zero")
        # When a client asks for a gc
        with caplog.at_level(logging.ERROR, logger="tagentd.router"):
            reply = await world.ask(p.Gc(id=9, **ME))
        # Then it gets one reply, code "error", naming the request and the exception
        assert isinstance(reply, p.ErrorReply) and reply.id == 9
        assert (reply.code, reply.message) == ("error", "internal error in Gc: division by zero")
        # And the traceback is in the log
        [record] = [r for r in caplog.records if r.name == "tagentd.router"]
        assert record.getMessage() == "request Gc failed" and record.exc_info[0] is ZeroDivisionError
    run_async(test, tmp_path)


def test_an_async_handler_is_answered_when_it_ends(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a run with one event
        run = started(world)
        record = run.add_event("run.started", {}, 1.0)
        # When its events are long-polled (an async handler, in a task)
        reply = await world.ask(p.GetEvents(id=11, run_id=run.id, after=0, wait=0.0, **ME))
        # Then the batch has that event
        assert isinstance(reply, p.Reply)
        assert msgspec.convert(reply.result, p.EventBatch).events == [record]
    run_async(test, tmp_path)


def test_a_client_broker_request_goes_to_the_broker_handler_without_a_step(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # When a client writes a space key and reads it back
        put = await world.ask(b.SpacePut(id=1, space="notes", key="k", value=41, **ME))
        got = await world.ask(b.SpaceGet(id=2, space="notes", key="k", **ME))
        # Then both are answered by the broker, and the access log names the client as a run's history does
        assert isinstance(put, p.Reply) and put.result["version"] == 1
        assert isinstance(got, p.Reply) and got.result["value"] == 41
        assert [e.who for e in world.broker.broker.core.spaces["notes"].log] == [WHO, WHO]
    run_async(test, tmp_path)


# -- the group commit ---------------------------------------------------------------------------------------------


def test_a_parked_reply_leaves_only_once_the_commit_is_on_disk(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a reply parked for the next commit, and a disk that fails
        channel = FakeChannel()
        world.commit.reply_after_commit(channel, [b"client", b"reply"])  # type: ignore[arg-type]
        world.disk.error = OSError(28, "No space left on device")
        # When a commit runs
        await world.commit.commit()
        # Then the reply has not left, the participant was told, and the store's health says so
        assert channel.sent == [] and world.disk.heard == ["failed"]
        assert world.health.failing
        # When the disk is back and the commit is retried
        world.disk.error = None
        await world.commit.commit()
        # Then the reply leaves, once, after the participant heard that the commit is on disk
        assert channel.sent == [[b"client", b"reply"]] and world.disk.heard == ["failed", "committed"]
        assert not world.health.failing
        await world.commit.commit()
        assert channel.sent == [[b"client", b"reply"]]
    run_async(test, tmp_path)


def test_committed_returns_only_after_a_successful_commit(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a waiter for everything changed so far, and a failing disk
        world.disk.error = OSError(5, "Input/output error")
        waiting = asyncio.ensure_future(world.commit.committed())
        await asyncio.sleep(0)  # ok-sleep: let the waiter park
        # When a commit fails
        await world.commit.commit()
        # Then the waiter still waits
        assert not waiting.done()
        # And after the next, successful, commit it is released
        world.disk.error = None
        await world.commit.commit()
        await asyncio.wait_for(waiting, 1.0)
    run_async(test, tmp_path)


# -- worker messages ----------------------------------------------------------------------------------------------


def test_a_workers_result_reaches_its_run_whose_finish_is_announced_only_once_on_disk(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given the run driver, with an executor whose workers are this test, taking part in the commit
        store = MemoryStore()
        driver = RunDriver(settings=world.settings, runs=RunTable(store, 16), store=store,
                           stats={"events_published": 0}, mark_dirty=world.commit.mark_dirty,
                           committed=world.commit.committed)
        driver.executor = executor = FakeExecutor(on_result=driver.on_attempt, on_lost=driver.on_attempt)
        executor.start()
        world.commit.join(driver)
        # And a run whose one step was dispatched and sent to a worker
        run = await driver.submit_source("/p/hello.py", "src", who=WHO, plan=plan_of("hello"))
        [key] = executor.sent
        # When the worker reports the step done (the executor hands its result on)
        executor.finish(key, StepSucceeded(task=key[1], attempt=key[2], output=42))
        # Then the run's machine has it: the run is completed, but nobody is told before the commit
        assert run.state.status.value == "completed" and run.result().step_outputs == {"only": 42}
        assert not run.announced_finish and run.events_after(0) == []  # numbered by the commit, not before
        # And a failed commit does not announce it either
        world.disk.error = OSError(28, "No space left on device")
        await world.commit.commit()
        assert not run.announced_finish and driver.stats["events_published"] == 0
        # When a commit succeeds, the finish is announced, its event numbered in the run's history
        world.disk.error = None
        await world.commit.commit()
        assert run.announced_finish and [e.topic for e in run.events_after(0)][-1] == "run.finished"
        assert driver.stats["events_published"] == len(run.events_after(0))
    run_async(test, tmp_path)


def test_a_log_line_is_kept_with_its_run_and_wakes_its_readers(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a run whose logs are being followed
        run = started(world)
        follower = asyncio.ensure_future(run.wait_for_news(5.0))
        await asyncio.sleep(0)  # ok-sleep: let the follower park
        # When a step of it logs a line
        world.from_worker(b"w1", wire.LogLine(run_id=run.id, step="only", level=20, message="hi", ts=1.0))
        # Then the line is the run's, the next commit writes it, and the follower wakes
        assert [line.message for line in run.logs_after(0)] == ["hi"]
        assert ("changed", run.id) in world.ops.calls
        await asyncio.wait_for(follower, 1.0)
    run_async(test, tmp_path)


def test_a_memory_save_is_answered_only_after_its_commit(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a running run
        run = started(world)
        # When a step saves a value in the run's memory
        world.from_worker(b"w1", wire.MemorySave(req=3, run_id=run.id, key="k", value=[1, 2]))
        # Then the run remembers it and the next commit writes it, but the step has no answer yet
        assert run.memory["k"] == [1, 2] and ("changed", run.id) in world.ops.calls
        assert world.replies_to(b"w1") == []
        # And a failed commit does not answer it either
        world.disk.error = OSError(28, "No space left on device")
        await world.commit.commit()
        assert world.replies_to(b"w1") == []
        # When a commit succeeds, the answer leaves
        world.disk.error = None
        await world.commit.commit()
        assert world.replies_to(b"w1") == [wire.MemoryReply(req=3)]
    run_async(test, tmp_path)


def test_a_bad_worker_message_is_dropped_and_the_next_one_handled(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a running run
        run = started(world)
        # When a batch holds garbage, a wrong number of frames, a heartbeat and a step's memory write
        heartbeat = wire.Heartbeat(worker_id=9)
        world.messages.on_batch([[b"w1", b"\xc1garbage"],
                                 [b"w1", b"x", b"y"],
                                 [b"w1", wire.encode(heartbeat)],
                                 [b"w1", wire.encode(wire.MemorySave(req=1, run_id=run.id, key="k", value=1))]])
        # Then the garbage and the wrong frame count are counted and dropped, every decoded message is offered to
        # the executor first (a heartbeat is its business), and the step's request is handled
        assert world.stats["bad_worker_messages"] == 2
        assert [msg for _, msg in world.executor.messages][0] == heartbeat
        assert run.memory["k"] == 1
    run_async(test, tmp_path)


def test_a_batch_of_results_with_one_that_does_not_decode_hands_on_every_other_in_order(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a worker's frame that holds three results, a message that is not valid msgpack, one of an unknown
        # type, and a step's memory write (a Batch: what the worker sent in one loop turn)
        done = [wire.TaskDone(run_id="r", event=StepSucceeded(task=f"t{i}", attempt=1)) for i in range(3)]
        run = started(world)
        save = wire.MemorySave(req=1, run_id=run.id, key="k", value=2)
        frames = [wire.encode(done[0]), b"\xc1garbage", wire.encode(done[1]),
                  msgspec.msgpack.encode({"type": "no_such_message"}), wire.encode(done[2]), wire.encode(save)]
        # When it arrives
        world.messages.on_batch([[b"w1", wire.pack(frames)]])
        # Then the two bad ones are counted and dropped, and every other is handled, in the order it was sent
        assert world.stats["bad_worker_messages"] == 2
        assert [msg for _, msg in world.executor.messages] == [*done, save]
        assert run.memory["k"] == 2
    run_async(test, tmp_path)


def test_a_steps_broker_call_is_answered_after_the_commit_and_a_resend_from_the_cache(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a step of a running run
        run = started(world)
        step = b.StepRef(run_id=run.id, pipeline="hello", step="only", task="only", attempt=1)
        call = wire.BrokerCall(req=8, caller=step, op=b.SpacePut(space="notes", key="k", value=1))
        # When a step writes a space key
        world.from_worker(b"w1", call)
        # Then it is written, audited as the step, but not answered before the commit
        assert world.broker.broker.core.spaces["notes"].log[-1].who == str(step)
        assert world.replies_to(b"w1") == []
        await world.commit.commit()
        [reply] = world.replies_to(b"w1")
        assert isinstance(reply, wire.BrokerReply) and reply.req == 8 and reply.result["version"] == 1
        # When the worker re-sends the call (it lost the reply)
        world.from_worker(b"w1", call)
        # Then the same answer goes back at once, and the key is not written again
        assert world.replies_to(b"w1") == [reply, reply]
        assert world.broker.broker.core.spaces["notes"].entries["k"].version == 1
    run_async(test, tmp_path)


def test_a_steps_forbidden_broker_call_gets_its_error_code(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a step of a running run
        run = started(world)
        step = b.StepRef(run_id=run.id, pipeline="hello", step="only", task="only", attempt=1)
        # When it tries to change who may use a space (only a client may)
        world.from_worker(b"w1", wire.BrokerCall(req=2, caller=step, op=b.SpaceAllow(space="vault", pipelines=["x"])))
        await world.commit.commit()
        # Then its answer is the PermissionDenied the handler raised
        [reply] = world.replies_to(b"w1")
        assert isinstance(reply, wire.BrokerReply) and reply.code == "permission_denied"
        assert "only a client" in (reply.message or "")
    run_async(test, tmp_path)
