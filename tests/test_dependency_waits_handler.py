"""The daemon's side of `ctx.dependency` (tagentd/control/dependency_waits.py), in process against the
handlers' fakes (tests/test_handlers.py's `World`): a wait is parked once however often the worker
re-sends it, lends its attempt's slot while parked, is answered after the commit, and a re-send of
an answered wait is answered again from the cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_handlers import WHO, World, run_async

from tagent_client import DependencyType, Pipeline
from tagent_client.core.events import StepSucceeded
from tagent_client.wire import protocol_broker as b
from tagentd.runs import submission
from tagentd.runs.run import Run
from tagentd.worker import wire


def soft_run(world: World) -> Run:
    """A running run whose `reader` SOFT-depends on `writer`: both dispatched, attempt 1."""
    pipeline = Pipeline("soft")
    pipeline.step("writer", fn=lambda ctx: 1, execution_mode="concurrent")
    pipeline.step("reader", fn=lambda ctx: 2, depends_on={"writer": DependencyType.SOFT}, execution_mode="concurrent")
    run = submission.new_run(pipeline.plan(), path="/p/soft.py", source="src", target=None, params=None, model=None,
                             who=WHO)
    world.ops.start_run(run)
    run.machine.start(0.0)
    return run


def reader_waits(run: Run, req: int, name: str = "writer") -> wire.DependencyWait:
    caller = b.StepRef(run_id=run.id, pipeline="soft", step="reader", task="reader", attempt=1)
    return wire.DependencyWait(req=req, caller=caller, name=name, wait=10.0)


def test_a_wait_is_parked_once_lends_its_slot_and_is_answered_after_the_commit(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a run whose `reader` waits for `writer`, still running
        run = soft_run(world)
        waits = world.messages.ports.dependency_waits
        world.from_worker(b"w1", reader_waits(run, 5))
        await asyncio.sleep(0)  # ok-sleep: let the wait park
        # When the worker re-sends the wait
        world.from_worker(b"w1", reader_waits(run, 5))
        # Then it is parked once, unanswered, with reader's slot lent
        assert waits.stats() == {"parked": 1, "answered": 0, "released": 0}
        assert world.replies_to(b"w1") == []
        assert ("lend_slot", run.id, "reader", 1, True) in world.ops.calls
        # When `writer` completes and the run's news goes out
        run.machine.handle(StepSucceeded(task="writer", attempt=1, output={"n": 1}), 1.0)
        run.notify()
        await asyncio.gather(*waits.parked.values())
        # Then the answer leaves only after the commit, with writer's output, and the slot is given back
        assert world.replies_to(b"w1") == []
        await world.commit.commit()
        answer = wire.DependencyReply(req=5, status="completed", output={"n": 1})
        assert world.replies_to(b"w1") == [answer]
        assert world.ops.calls[-1] == ("lend_slot", run.id, "reader", 1, False)
        # When the worker re-sends it (it lost the answer), the same answer goes back at once
        world.from_worker(b"w1", reader_waits(run, 5))
        assert world.replies_to(b"w1") == [answer, answer]
        assert waits.stats() == {"parked": 0, "answered": 1, "released": 0}
    run_async(test, tmp_path)


def test_a_wait_for_no_dependency_or_no_run_gets_a_not_found_error(tmp_path: Path) -> None:
    async def test(world: World) -> None:
        # Given a running run
        run = soft_run(world)
        waits = world.messages.ports.dependency_waits
        # When its step waits for a step that is not its dependency, and a step of an unknown run waits
        world.from_worker(b"w1", reader_waits(run, 1, name="nope"))
        stranger = b.StepRef(run_id="nosuchrun", pipeline="soft", step="reader", task="reader", attempt=1)
        world.from_worker(b"w1", wire.DependencyWait(req=2, caller=stranger, name="writer", wait=1.0))
        await asyncio.gather(*waits.parked.values())
        await world.commit.commit()
        # Then each is answered with a not_found error that says what is wrong
        first, second = world.replies_to(b"w1")
        assert isinstance(first, wire.DependencyReply) and first.code == "not_found"
        assert first.message == f"step 'reader' of run {run.id} has no dependency 'nope' (its dependencies: writer)"
        assert isinstance(second, wire.DependencyReply) and second.code == "not_found"
        assert second.message == "run nosuchrun is not running: step 'reader' waits for nothing"
    run_async(test, tmp_path)
