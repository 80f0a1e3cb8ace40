"""The run state machine (RunMachine), driven directly: a checkpointed state rebuilt and
recovered, reset of a step and its dependents, a held machine, and the order and
topics of the actions a run emits.

Driven as test_engine.py says (engine_helpers.py): a plan, events with a fake `now`, no step function run.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from engine_helpers import (
    CONCURRENT,
    PARALLEL_MERGE,
    chain_pipeline,
    dispatch_of,
    dispatched,
    fail,
    finishes,
    flaky_pipeline,
    noop,
    started,
    status,
    steps,
    succeed,
    topics,
)

from tagent_client import DependencyType, Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, Finish, Persist, ScheduleRetry, StepSucceeded, TimerFired
from tagent_client.core.state import RunState, RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import Plan, StepKind, StepSpec

pytestmark = pytest.mark.timeout(60)


# -- recovery, reset and checkpoints ---------------------------------------------------------------------------------------


def _checkpoint(machine: RunMachine) -> RunState:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(machine.state), type=RunState)


def test_run_state_round_trips_through_msgpack_and_a_rebuilt_machine_continues() -> None:
    """Given a run mid-way (one step done, one retrying, one running), when its state is encoded and decoded,
    then the decoded state equals the original and a machine built from it finishes the run."""
    p = steps(Pipeline("p"), "a", "b", retry_delay=1.0, retry_jitter=0.0)
    p.step("c", fn=noop, depends_on=["a", "b"])
    machine, _ = started(p)
    succeed(machine, "a", output={"facts": [1, 2], "nested": {"x": None}})
    fail(machine, "b", retryable=True, now=1.0)

    decoded = _checkpoint(machine)
    assert decoded == machine.state

    rebuilt = RunMachine(machine.plan, decoded, rng=random.Random(1))
    actions = rebuilt.handle(TimerFired(), now=2.0)
    assert dispatch_of(actions, "b").attempt == 2
    actions = succeed(rebuilt, "b", output="B", now=3.0)
    assert dispatch_of(actions, "c").inputs == {"a": {"facts": [1, 2], "nested": {"x": None}}, "b": "B"}
    actions = succeed(rebuilt, "c", output="C", now=4.0)
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_recover_redispatches_in_flight_tasks_with_the_next_attempt_without_using_the_retry_budget() -> None:
    """Given `flaky` (max_retries=1) running when the process crashed, when the machine is rebuilt and recovered,
    then `flaky` runs again as attempt 2, and a later retryable failure still gets its one retry."""
    machine, _ = started(flaky_pipeline(max_retries=1, retry_jitter=0.0))
    crashed = RunMachine(machine.plan, _checkpoint(machine), rng=random.Random(1))

    actions = crashed.recover(now=50.0)

    assert isinstance(actions[0], Persist)
    assert dispatch_of(actions, "flaky").attempt == 2
    assert crashed.state.tasks["flaky"].interrupted == 1
    assert crashed.handle(StepSucceeded(task="flaky", attempt=1, output="from the dead worker"), now=51.0) == []

    actions = fail(crashed, "flaky", retryable=True, now=52.0)
    assert [a for a in actions if isinstance(a, ScheduleRetry)], "the crash must not consume the retry budget"
    crashed.handle(TimerFired(), now=crashed.next_timer())
    assert crashed.state.tasks["flaky"].attempt == 3
    fail(crashed, "flaky", retryable=True, now=60.0)
    assert status(crashed, "flaky") is StepStatus.FAILED


def test_recover_keeps_the_time_of_a_pending_retry() -> None:
    """Given `flaky` waiting for a retry at t=11 when the process crashed, when recovered at t=10.5,
    then a ScheduleRetry for t=11 is issued and nothing is dispatched before then."""
    machine, _ = started(flaky_pipeline(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=10.0)
    crashed = RunMachine(machine.plan, _checkpoint(machine))

    actions = crashed.recover(now=10.5)

    assert [(a.task, a.at) for a in actions if isinstance(a, ScheduleRetry)] == [("flaky", 11.0)]
    assert dispatched(actions) == []
    assert dispatch_of(crashed.handle(TimerFired(), now=11.0), "flaky").attempt == 2


def test_reset_reruns_a_step_and_its_dependents_and_keeps_other_completed_outputs() -> None:
    """Given a finished FAILED run (a done, b failed, c skipped), when b is reset, then b and c are PENDING again,
    a keeps its output, b is dispatched with it, and the run can now complete."""
    machine, _ = started(chain_pipeline())
    succeed(machine, "a", output="A")
    fail(machine, "b", retryable=False)
    assert machine.state.status is RunStatus.FAILED

    actions = machine.reset(["b"], now=100.0)

    assert "run.resumed" in topics(actions)
    assert dispatch_of(actions, "b").inputs == {"a": "A"}
    assert (status(machine, "a"), status(machine, "c")) == (StepStatus.COMPLETED, StepStatus.PENDING)
    assert machine.state.status is RunStatus.RUNNING and machine.state.error is None
    succeed(machine, "b", output="B", now=101.0)
    actions = succeed(machine, "c", output="C", now=102.0)
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]
    assert machine.state.steps["a"].output == "A"


def test_a_reset_step_counts_its_attempts_on_and_gets_its_whole_retry_budget_again() -> None:
    """Given a step that failed for good after 1 + 2 retries, when it is reset, then its next attempts are
    numbered 4, 5, 6 (the Dispatch, the step.started event and `attempts` agree) and it again gets 2 retries."""
    machine, _ = started(steps(Pipeline("p"), "a", max_retries=2, retry_delay=0.0))  # a retry is due at once
    for now in (1.0, 2.0, 3.0):
        fail(machine, "a", retryable=True, now=now)
    assert status(machine, "a") is StepStatus.FAILED and machine.state.steps["a"].attempts == 3

    actions = machine.reset(["a"], now=10.0)
    numbers = [dispatch_of(actions, "a").attempt]
    for now in (11.0, 12.0):
        numbers.append(dispatch_of(fail(machine, "a", retryable=True, now=now), "a").attempt)
        assert machine.state.steps["a"].attempts == numbers[-1]
    fail(machine, "a", retryable=True, now=13.0)

    assert numbers == [4, 5, 6]
    assert [e.data["attempt"] for e in actions if isinstance(e, Emit) and e.topic == "step.started"] == [4]
    assert status(machine, "a") is StepStatus.FAILED and machine.state.steps["a"].attempts == 6


def test_a_reset_fan_out_step_numbers_its_items_and_merge_on_from_its_attempts() -> None:
    """Given a PARALLEL_MERGE step with a merge whose merge failed on attempt 1, when it is reset,
    then its items and its merge run as attempt 2, and the step shows 2 attempts."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=["x", "y"], merge=noop, max_retries=0)
    machine, _ = started(p)
    succeed(machine, "fan[0]")
    succeed(machine, "fan[1]")
    assert machine.state.tasks["fan#merge"].attempt == 1
    fail(machine, "fan#merge", retryable=False)

    actions = machine.reset(["fan"], now=10.0)
    assert [d.attempt for d in actions if isinstance(d, Dispatch)] == [2, 2]
    succeed(machine, "fan[0]")
    actions = succeed(machine, "fan[1]")

    assert dispatch_of(actions, "fan#merge").attempt == 2
    assert machine.state.steps["fan"].attempts == 2


def test_a_held_machine_dispatches_nothing_and_its_ready_tasks_stay_queued_for_the_next_start() -> None:
    """Given a running a and a queued c (one step at a time), when the machine is held (the daemon stops) and
    a succeeds, then c is not dispatched and stays PENDING with a QUEUED task, and a machine rebuilt from the
    state dispatches it as attempt 1."""
    machine, actions = started(steps(Pipeline("p", max_concurrent_steps=1), "a", "c"))
    assert dispatched(actions) == ["a"]

    machine.hold()
    actions = succeed(machine, "a", output="A")

    assert dispatched(actions) == [] and not finishes(actions)
    assert status(machine, "c") is StepStatus.PENDING and machine.state.tasks["c"].status is TaskStatus.QUEUED
    rebuilt = RunMachine(machine.plan, msgspec.msgpack.decode(msgspec.msgpack.encode(machine.state), type=RunState))
    assert dispatch_of(rebuilt.recover(now=5.0), "c").attempt == 1


# -- actions order, topics, diagnostics ----------------------------------------------------------------------------------------


def test_persist_comes_before_step_completed_and_run_finished_are_emitted() -> None:
    """Given a one-step run, when the step completes, then a Persist precedes each Emit of that call."""
    machine, _ = started(Pipeline("p").step("a", fn=noop))
    actions = succeed(machine, "a", output="x")

    completed = next(i for i, a in enumerate(actions) if isinstance(a, Emit) and a.topic == "step.completed")
    finished = next(i for i, a in enumerate(actions) if isinstance(a, Emit) and a.topic == "run.finished")
    assert any(isinstance(a, Persist) for a in actions[:completed])
    assert any(isinstance(a, Persist) for a in actions[completed + 1:finished])
    assert isinstance(actions[-1], Finish)


def test_event_topics_of_a_run_with_a_retry_a_failure_and_a_skip() -> None:
    """Given a -> b and an optional `c` that retries, then the run emits each lifecycle topic with run id and pipeline."""
    p = Pipeline("p")
    p.step("a", fn=noop, execution_mode=CONCURRENT)
    p.step("b", fn=noop, depends_on=["a"])
    p.step("c", fn=noop, execution_mode=CONCURRENT, required=False, retry_jitter=0.0)
    machine, actions = started(p)
    actions += fail(machine, "c", retryable=True, now=1.0)
    actions += machine.handle(TimerFired(), now=5.0)
    actions += fail(machine, "a", retryable=False, now=6.0)
    actions += succeed(machine, "c", now=7.0)

    assert topics(actions) == [
        "run.started", "step.started", "step.started", "step.retrying", "step.started",
        "step.failed", "step.skipped", "step.completed", "run.finished",
    ]
    emitted = [a for a in actions if isinstance(a, Emit)]
    assert all(e.data["run_id"] == "run-1" and e.data["pipeline"] == "p" for e in emitted)
    assert emitted[-1].data["status"] == "failed"


def test_a_cycle_that_validation_would_reject_fails_the_run_with_a_diagnostic_instead_of_hanging() -> None:
    """Given a hand-built plan where x and y depend on each other, when the run starts,
    then it FAILS at once with a 'no progress possible' message naming both steps."""
    plan = Plan(name="loop", steps=[
        StepSpec(name="ok", kind=StepKind.FUNCTION),
        StepSpec(name="x", kind=StepKind.FUNCTION, deps={"y": DependencyType.HARD}),
        StepSpec(name="y", kind=StepKind.FUNCTION, deps={"x": DependencyType.HARD}),
    ])
    machine = RunMachine.new(plan, "run-1")
    actions = machine.start(0.0)
    assert dispatched(actions) == ["ok"]

    actions = succeed(machine, "ok")

    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]
    assert "no progress possible" in machine.state.error and "x, y" in machine.state.error
    assert (status(machine, "x"), status(machine, "y")) == (StepStatus.CANCELLED, StepStatus.CANCELLED)


def test_task_states_are_cleaned_up_when_a_step_completes() -> None:
    """Given a PARALLEL_MERGE step, when it completes, then its item tasks are gone from the state (checkpoints stay small)."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2])
    machine, _ = started(p)
    assert machine.state.tasks["fan[0]"].status is TaskStatus.RUNNING
    succeed(machine, "fan[0]")
    succeed(machine, "fan[1]")
    assert machine.state.tasks == {}
