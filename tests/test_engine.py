"""The run state machine (tagent_client.core.engine.RunMachine), driven directly: when steps are
dispatched (as soon as dependencies allow), SERIAL and CONCURRENT modes, PARALLEL_MERGE fan-outs.
Conditions and dependency types are in test_engine_gates.py; retries, stale events and
cancellation in test_engine_retries.py; recovery, reset, checkpoints and the order of actions
in test_engine_recovery.py.

Every test builds a plan with `Pipeline(...).plan()`, feeds events with a fake
`now`, and checks the actions and the state. No asyncio, no processes, no sleeps:
nothing here ever runs a step function. The drivers are in engine_helpers.py.
"""

from __future__ import annotations

import pytest
from engine_helpers import (
    CONCURRENT,
    PARALLEL_MERGE,
    SERIAL,
    dispatch_of,
    dispatched,
    fail,
    finishes,
    noop,
    started,
    status,
    steps,
    succeed,
    topics,
)

from tagent_client import Pipeline
from tagent_client.core.events import CancelTask, Dispatch, Finish, Persist, TimerFired
from tagent_client.core.state import Phase, RunStatus, StepStatus

pytestmark = pytest.mark.timeout(60)


# -- dispatch as soon as dependencies allow ---------------------------------------------------


def test_independent_steps_are_dispatched_at_start_with_lifecycle_events() -> None:
    """Given two CONCURRENT steps without dependencies, when the run starts, then both are dispatched at once."""
    machine, actions = started(steps(Pipeline("p"), "a", "b"))

    assert dispatched(actions) == ["a", "b"]
    assert topics(actions) == ["run.started", "step.started", "step.started"]
    assert isinstance(actions[0], Persist)
    assert machine.state.status is RunStatus.RUNNING
    assert status(machine, "a") is StepStatus.RUNNING
    first = dispatch_of(actions, "a")
    assert (first.phase, first.attempt, first.inputs) == (Phase.RUN, 1, {})


def test_dependent_starts_in_the_same_handle_call_without_waiting_for_unrelated_steps() -> None:
    """Given `slow` and `fast -> next`, when `fast` completes while `slow` runs, then `next` is dispatched right away."""
    p = steps(Pipeline("p"), "slow", "fast")
    p.step("next", fn=noop, depends_on=["fast"], execution_mode=CONCURRENT)
    machine, _ = started(p)

    actions = succeed(machine, "fast", output={"n": 1})

    assert dispatched(actions) == ["next"]
    assert dispatch_of(actions, "next").inputs == {"fast": {"n": 1}}
    assert status(machine, "slow") is StepStatus.RUNNING


def test_dispatch_carries_the_step_timeout() -> None:
    """Given a step with timeout=2.5, when dispatched, then the Dispatch says so (the shell enforces it)."""
    p = Pipeline("p").step("a", fn=noop, timeout=2.5)
    _, actions = started(p)
    assert dispatch_of(actions, "a").timeout == 2.5


def test_dispatch_says_whether_the_step_must_run_alone() -> None:
    """Given an isolated=True step and an ordinary one, when dispatched, then only the first Dispatch is isolated."""
    p = Pipeline("p").step("alone", fn=noop, isolated=True, execution_mode=CONCURRENT)
    p.step("shared_one", fn=noop, execution_mode=CONCURRENT)
    _, actions = started(p)
    assert dispatch_of(actions, "alone").isolated is True
    assert dispatch_of(actions, "shared_one").isolated is False


# -- SERIAL and CONCURRENT ---------------------------------------------------------------------


def test_serial_steps_never_overlap_and_run_in_definition_order() -> None:
    """Given three SERIAL steps and one CONCURRENT step, none dependent, when the run goes on,
    then the SERIAL ones run one at a time in definition order while the CONCURRENT one runs at once."""
    p = steps(Pipeline("p"), "s1", "s2", "s3", mode=SERIAL)
    p.step("c", fn=noop, execution_mode=CONCURRENT)
    machine, actions = started(p)
    assert dispatched(actions) == ["s1", "c"]

    assert dispatched(succeed(machine, "s1")) == ["s2"]
    assert status(machine, "s3") is StepStatus.PENDING
    assert dispatched(succeed(machine, "s2")) == ["s3"]
    succeed(machine, "c")
    actions = succeed(machine, "s3")
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_serial_step_waiting_for_a_retry_still_holds_the_serial_slot() -> None:
    """Given SERIAL s1 and s2, when s1 fails retryably, then s2 does not start until s1 has finished."""
    p = steps(Pipeline("p"), "s1", "s2", mode=SERIAL, retry_delay=1.0)
    machine, _ = started(p)

    actions = fail(machine, "s1", retryable=True, now=1.0)
    assert dispatched(actions) == []
    assert status(machine, "s1") is StepStatus.RETRYING

    actions = machine.handle(TimerFired(), now=5.0)
    assert dispatched(actions) == ["s1"]
    assert dispatched(succeed(machine, "s1", now=6.0)) == ["s2"]


def test_ready_serial_steps_start_in_definition_order_not_readiness_order() -> None:
    """Given SERIAL `a`, SERIAL `after_a` (depends on a) defined before SERIAL `b`, when `a` completes,
    then `after_a` takes the serial slot before `b`, although `b` was ready first."""
    p = Pipeline("p")
    p.step("a", fn=noop)
    p.step("after_a", fn=noop, depends_on=["a"])
    p.step("b", fn=noop)
    machine, actions = started(p)
    assert dispatched(actions) == ["a"]

    assert dispatched(succeed(machine, "a")) == ["after_a"]
    assert dispatched(succeed(machine, "after_a")) == ["b"]


def test_concurrent_steps_are_bounded_by_max_concurrent_steps() -> None:
    """Given five CONCURRENT steps and max_concurrent_steps=2, then at most two run, and a freed slot is refilled."""
    p = steps(Pipeline("p", max_concurrent_steps=2), "a", "b", "c", "d", "e")
    machine, actions = started(p)
    assert dispatched(actions) == ["a", "b"]

    assert dispatched(succeed(machine, "b")) == ["c"]
    assert dispatched(fail(machine, "a", retryable=False)) == ["d"]
    assert len(machine.running_tasks()) == 2


# -- PARALLEL_MERGE --------------------------------------------------------------------------------------


def test_parallel_merge_over_a_literal_list_merges_item_outputs_in_item_order() -> None:
    """Given a PARALLEL_MERGE step over three items, when items complete out of order,
    then the step completes only after the last one, with the outputs in item order."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=["x", "y", "z"])
    machine, actions = started(p)
    assert dispatched(actions) == ["fan[0]", "fan[1]", "fan[2]"]
    assert [(d.item, d.item_index) for d in actions if isinstance(d, Dispatch)] == [("x", 0), ("y", 1), ("z", 2)]
    assert topics(actions).count("step.started") == 1

    succeed(machine, "fan[2]", output="Z")
    succeed(machine, "fan[0]", output="X")
    assert status(machine, "fan") is StepStatus.RUNNING
    actions = succeed(machine, "fan[1]", output="Y")

    assert machine.state.steps["fan"].output == ["X", "Y", "Z"]
    assert machine.state.steps["fan"].attempts == 1
    assert "step.completed" in topics(actions)


def test_parallel_merge_over_params_path() -> None:
    """Given over='params.urls', then one item task per URL from the submit params."""
    p = Pipeline("p").step("fetch", fn=noop, execution_mode=PARALLEL_MERGE, over="params.urls")
    _, actions = started(p, params={"urls": ["u1", "u2"]})
    assert [a.item for a in actions if isinstance(a, Dispatch)] == ["u1", "u2"]


def test_parallel_merge_over_a_dependency_field() -> None:
    """Given over='search.urls', when search completes, then one item task per URL in its output."""
    p = Pipeline("p")
    p.step("search", fn=noop)
    p.step("fetch", fn=noop, depends_on=["search"], execution_mode=PARALLEL_MERGE, over="search.urls")
    machine, _ = started(p)

    actions = succeed(machine, "search", output={"urls": ["a", "b", "c"]})

    assert [(a.item, a.inputs) for a in actions if isinstance(a, Dispatch)] == [
        (u, {"search": {"urls": ["a", "b", "c"]}}) for u in "abc"
    ]


def test_parallel_merge_with_merge_function_dispatches_a_merge_task_with_item_outputs() -> None:
    """Given merge=, when all items complete, then a MERGE-phase task gets the outputs in item order
    and its output becomes the step's output."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2, 3], merge=sum)
    machine, _ = started(p)
    succeed(machine, "fan[1]", output=20)
    succeed(machine, "fan[2]", output=30)

    actions = succeed(machine, "fan[0]", output=10)
    merge = dispatch_of(actions, "fan#merge")
    assert (merge.phase, merge.item) == (Phase.MERGE, [10, 20, 30])
    assert status(machine, "fan") is StepStatus.RUNNING

    actions = succeed(machine, "fan#merge", output=60)
    assert machine.state.steps["fan"].output == 60
    assert machine.state.steps["fan"].attempts == 1
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_parallel_merge_over_an_empty_list_completes_with_an_empty_list() -> None:
    """Given over=[] and no merge, then the step completes at once with [] and nothing is dispatched."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over="params.items")
    machine, actions = started(p, params={"items": []})
    assert dispatched(actions) == []
    assert machine.state.steps["fan"].output == []
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_parallel_merge_over_an_empty_list_with_merge_still_merges() -> None:
    """Given over=[] with merge=, then the merge task runs with an empty list."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over="params.items", merge=len)
    _, actions = started(p, params={"items": []})
    assert dispatch_of(actions, "fan#merge").item == []


@pytest.mark.parametrize(("params", "shown"), [({"items": {"a": 1}}, "dict"), ({}, "missing"), ({"items": "abc"}, "str")])
def test_parallel_merge_over_something_that_is_not_a_list_fails_the_step(params: dict, shown: str) -> None:
    """Given over='params.items', when it is not a list, then the step FAILS saying what it got."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over="params.items")
    machine, actions = started(p, params=params)
    error = machine.state.steps["fan"].error
    assert status(machine, "fan") is StepStatus.FAILED
    assert error is not None and "params.items" in error.message and shown in error.message
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


def test_parallel_merge_retries_only_the_failed_item() -> None:
    """Given three items, when one fails retryably, then only that item is dispatched again."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2, 3], retry_delay=1.0)
    machine, _ = started(p)
    succeed(machine, "fan[0]", output="a")
    fail(machine, "fan[1]", retryable=True, now=1.0)

    actions = machine.handle(TimerFired(), now=10.0)
    assert dispatched(actions) == ["fan[1]"]
    assert dispatch_of(actions, "fan[1]").attempt == 2
    succeed(machine, "fan[2]", output="c", now=10.0)
    succeed(machine, "fan[1]", output="b", now=11.0)
    assert machine.state.steps["fan"].output == ["a", "b", "c"]
    assert machine.state.steps["fan"].attempts == 2


def test_parallel_merge_item_failing_for_good_fails_the_step_and_cancels_running_items() -> None:
    """Given three running items, when one fails non-retryably, then the step FAILS and the others are cancelled."""
    p = Pipeline("p").step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2, 3])
    machine, _ = started(p)

    actions = fail(machine, "fan[1]", retryable=False)

    assert sorted(a.task for a in actions if isinstance(a, CancelTask)) == ["fan[0]", "fan[2]"]
    assert status(machine, "fan") is StepStatus.FAILED
    assert succeed(machine, "fan[0]", output="late") == []
