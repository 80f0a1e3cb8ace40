"""A starting run's first tasks leave before the engine has worked out the others (issue 17: 200 x 0.5 s waits).

A run of N independent steps used to be planned whole (each step decided, each task dispatched: ~8 us a step) and
only then handed to the executor, so the workers sat idle for the ~2 ms the daemon spent planning 200 steps, then
started their 100 steps each one after the other. `RunMachine.start(now, first=K)` dispatches the first K and puts
the rest off (`deferred`); the run driver sends those K (`Executor.pump`), then takes the rest from
`handle_deferred` in the same loop turn. The outcome is the same as one `start`: the same dispatches, in the same
order, all before the turn ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_executor import FakeExecutor, bare_driver

from tagent_client import ExecutionMode, Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, StepSucceeded
from tagent_client.define.plan import Plan
from tagentd.executor.interface import StepAttempt
from tagentd.runs import driver as driver_module

pytestmark = pytest.mark.timeout(30)


async def noop() -> None:
    return None


def independent(steps: int, max_concurrent: int = 512) -> Plan:
    """`steps` CONCURRENT steps that wait for nothing (bench/daemon.py's waits, without the wait)."""
    pipeline = Pipeline("independent", max_concurrent_steps=max_concurrent)
    for i in range(steps):
        pipeline.step(f"s{i:03d}", fn=noop, execution_mode=ExecutionMode.CONCURRENT)
    return pipeline.plan()


def dispatched(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [a.task for a in actions if isinstance(a, Dispatch)]


def test_start_with_first_dispatches_that_many_and_the_rest_come_from_handle_deferred_in_order() -> None:
    # Given a run of 40 independent steps, and the same run started whole
    whole = RunMachine.new(independent(40), "run-1")
    expected = whole.start(1.0)
    machine = RunMachine.new(independent(40), "run-1")
    # When it starts with first=16, then its deferred scheduling is handled
    early = machine.start(1.0, first=16)
    assert machine.deferred
    rest = machine.handle_deferred(1.0)
    # Then the first 16 tasks were dispatched at once, the other 24 after, in the order one start gives, with the
    # same events; and the run's state is the same
    assert dispatched(early) == dispatched(expected)[:16]
    assert dispatched(early) + dispatched(rest) == dispatched(expected)
    topics = [a.topic for a in early + rest if isinstance(a, Emit)]
    assert topics == [a.topic for a in expected if isinstance(a, Emit)]
    assert machine.state == whole.state


def test_first_never_lets_a_run_exceed_max_concurrent_steps_and_is_not_kept() -> None:
    # Given a run of 30 independent steps that may run 10 at once
    machine = RunMachine.new(independent(30, max_concurrent=10), "run-1")
    # When it starts with first=4, its deferred scheduling is handled, and one step ends
    early = machine.start(1.0, first=4)
    rest = machine.handle_deferred(1.0)
    more = machine.handle(StepSucceeded(task=dispatched(early)[0], attempt=1), 2.0)
    # Then 4 + 6 ran at first (the run's limit, not more), and a finished step makes room for one more as before
    assert len(dispatched(early)) == 4 and len(dispatched(rest)) == 6
    assert len(dispatched(more)) == 1


def test_a_starting_run_sends_its_first_tasks_before_the_engine_dispatches_the_others(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Given a run driver whose executor notes each dispatch and each time it is told to send
        driver = bare_driver(tmp_path)
        notes: list[str] = []

        class Noting(FakeExecutor):
            def dispatch(self, attempt: StepAttempt) -> None:
                notes.append("dispatch")
                super().dispatch(attempt)

            def pump(self) -> int:
                notes.append("pump")
                return super().pump()

        driver.executor = executor = Noting(on_result=driver.on_attempt, on_lost=driver.on_attempt, slots=512)
        executor.start()
        # When a run of 200 independent steps starts
        await driver.submit_source("/p/waits.py", "src", who="test", plan=independent(200))
        # Then the executor was first told to send after the run's first few tasks, before the engine dispatched the
        # others, and again once all 200 were dispatched: every task left in the turn the run started
        first = notes.index("pump")
        assert first < 200, f"the first send came after all {first} dispatches"
        assert first == driver_module.FIRST_DISPATCHES
        assert notes.count("dispatch") == 200 and notes[-1] == "pump"
        assert len(executor.sent) == 200

    asyncio.run(scenario())
