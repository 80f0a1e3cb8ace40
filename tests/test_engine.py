"""The run state machine (tagent_client.core.engine.RunMachine), driven directly.

Every test builds a plan with `Pipeline(...).plan()`, feeds events with a fake
`now`, and checks the actions and the state. No asyncio, no processes, no sleeps:
nothing here ever runs a step function.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from pydantic import BaseModel

from tagent_client import DependencyType, ExecutionMode, Pipeline, when
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import (
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Emit,
    Finish,
    Persist,
    ScheduleRetry,
    StepFailed,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    WorkerLost,
)
from tagent_client.core.result import PipelineResult
from tagent_client.core.rules import backoff_delay, gate_is_valid
from tagent_client.core.state import ErrorInfo, Phase, RunState, RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import Plan, RetrySpec, StepKind, StepSpec

pytestmark = pytest.mark.timeout(60)

SERIAL, CONCURRENT = ExecutionMode.SERIAL, ExecutionMode.CONCURRENT
PARALLEL_MERGE = ExecutionMode.PARALLEL_MERGE


def noop() -> None:
    return None


# -- helpers ------------------------------------------------------------------------------


def machine_for(pipeline: Pipeline, *, params: dict[str, Any] | None = None, seed: int = 7) -> RunMachine:
    return RunMachine.new(pipeline.plan(), "run-1", params=params, now=0.0, rng=random.Random(seed))


def started(pipeline: Pipeline, **kwargs: Any) -> tuple[RunMachine, list[Action]]:
    machine = machine_for(pipeline, **kwargs)
    return machine, machine.start(0.0)


def dispatched(actions: list[Action]) -> list[str]:
    return [a.task for a in actions if isinstance(a, Dispatch)]


def dispatch_of(actions: list[Action], task: str) -> Dispatch:
    found = [a for a in actions if isinstance(a, Dispatch) and a.task == task]
    assert len(found) == 1, f"expected one Dispatch of {task!r} in {actions}"
    return found[0]


def topics(actions: list[Action]) -> list[str]:
    return [a.topic for a in actions if isinstance(a, Emit)]


def finishes(actions: list[Action]) -> list[Finish]:
    return [a for a in actions if isinstance(a, Finish)]


def succeed(machine: RunMachine, task: str, output: Any = None, now: float = 1.0) -> list[Action]:
    return machine.handle(StepSucceeded(task=task, attempt=machine.state.tasks[task].attempt, output=output), now)


def fail(machine: RunMachine, task: str, *, retryable: bool, now: float = 1.0,
         message: str = "boom", type_: str = "ValueError") -> list[Action]:
    error = ErrorInfo(type=type_, message=message, retryable=retryable)
    return machine.handle(StepFailed(task=task, attempt=machine.state.tasks[task].attempt, error=error), now)


def status(machine: RunMachine, step: str) -> StepStatus:
    return machine.state.steps[step].status


def steps(pipeline: Pipeline, *names: str, mode: ExecutionMode = CONCURRENT, **options: Any) -> Pipeline:
    for name in names:
        pipeline.step(name, fn=noop, execution_mode=mode, **options)
    return pipeline


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


# -- conditions --------------------------------------------------------------------------------------


def _conditional(condition: Any) -> Pipeline:
    p = Pipeline("p")
    p.step("score", fn=noop)
    p.step("deep_dive", fn=noop, depends_on=["score"], condition=condition)
    p.step("report", fn=noop, depends_on=["deep_dive"])
    return p


def test_dsl_condition_true_runs_the_step() -> None:
    """Given deep_dive with condition score.value > 3, when score outputs 4, then deep_dive is dispatched."""
    machine, _ = started(_conditional(when("score.value") > 3))
    actions = succeed(machine, "score", output={"value": 4})
    assert dispatched(actions) == ["deep_dive"]


def test_dsl_condition_false_skips_the_step_with_the_condition_as_reason() -> None:
    """Given deep_dive with condition score.value > 3, when score outputs 2, then deep_dive and its dependent are SKIPPED."""
    machine, _ = started(_conditional(when("score.value") > 3))

    actions = succeed(machine, "score", output={"value": 2})

    assert dispatched(actions) == []
    assert status(machine, "deep_dive") is StepStatus.SKIPPED
    assert machine.state.steps["deep_dive"].skip_reason == "condition false: score.value > 3"
    assert machine.state.steps["report"].skip_reason == "upstream step 'deep_dive' skipped"
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_dsl_condition_can_read_params() -> None:
    """Given a condition on params.mode, then it decides by the submit-time params."""
    p = Pipeline("p").step("full", fn=noop, condition=when("params.mode") == "full")
    machine, actions = started(p, params={"mode": "quick"})
    assert status(machine, "full") is StepStatus.SKIPPED
    machine, actions = started(p, params={"mode": "full"})
    assert dispatched(actions) == ["full"]


def test_callable_condition_is_dispatched_as_a_condition_task_whose_true_output_runs_the_step() -> None:
    """Given a callable condition, when its dependency completes, then a CONDITION-phase task runs first;
    its True output makes the step itself run."""
    machine, _ = started(_conditional(lambda scope: scope["score"]["value"] > 3))

    actions = succeed(machine, "score", output={"value": 4})
    check = dispatch_of(actions, "deep_dive#condition")
    assert (check.phase, check.inputs) == (Phase.CONDITION, {"score": {"value": 4}})
    assert status(machine, "deep_dive") is StepStatus.PENDING

    actions = succeed(machine, "deep_dive#condition", output=True)
    run = dispatch_of(actions, "deep_dive")
    assert (run.phase, run.attempt) == (Phase.RUN, 1)


def test_callable_condition_false_output_skips_the_step() -> None:
    """Given a callable condition, when it returns False, then the step is SKIPPED with a 'condition false' reason."""
    machine, _ = started(_conditional(lambda scope: False))
    succeed(machine, "score", output={"value": 4})

    actions = succeed(machine, "deep_dive#condition", output=False)

    assert dispatched(actions) == []
    assert status(machine, "deep_dive") is StepStatus.SKIPPED
    assert machine.state.steps["deep_dive"].skip_reason.startswith("condition false: ")
    assert status(machine, "report") is StepStatus.SKIPPED


def test_callable_condition_that_fails_retryably_is_retried_while_its_step_stays_pending() -> None:
    """Given a callable condition, when it raises a retryable error, then it is retried and the step has not started."""
    machine, _ = started(_conditional(lambda scope: True))
    succeed(machine, "score", output={"value": 4})

    actions = fail(machine, "deep_dive#condition", retryable=True, now=2.0, type_="ConnectionError")
    assert [a.task for a in actions if isinstance(a, ScheduleRetry)] == ["deep_dive#condition"]
    assert status(machine, "deep_dive") is StepStatus.PENDING

    actions = machine.handle(TimerFired(), now=100.0)
    assert dispatch_of(actions, "deep_dive#condition").attempt == 2
    assert dispatched(succeed(machine, "deep_dive#condition", output=True, now=101.0)) == ["deep_dive"]


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


# -- dependency types ----------------------------------------------------------------------------------------


def _chain(kind: DependencyType = DependencyType.HARD, **options: Any) -> Pipeline:
    p = Pipeline("p")
    p.step("a", fn=noop)
    p.step("b", fn=noop, depends_on={"a": kind}, **options)
    p.step("c", fn=noop, depends_on=["b"])
    return p


def test_failed_hard_dependency_skips_the_whole_chain_below_it() -> None:
    """Given a -> b -> c (HARD), when a fails, then b and c are SKIPPED in the same call, naming their upstream."""
    machine, _ = started(_chain())

    actions = fail(machine, "a", retryable=False)

    assert machine.state.steps["b"].skip_reason == "upstream step 'a' failed"
    assert machine.state.steps["c"].skip_reason == "upstream step 'b' skipped"
    assert topics(actions).count("step.skipped") == 2
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]
    assert dispatched(actions) == []


def test_soft_dependency_is_not_waited_for_and_is_none_until_it_completes() -> None:
    """Given CONCURRENT b SOFT-depends on a, when the run starts, then a and b start together and b sees a=None."""
    machine, actions = started(_chain(DependencyType.SOFT, execution_mode=ExecutionMode.CONCURRENT))
    assert dispatched(actions) == ["a", "b"]
    assert dispatch_of(actions, "b").inputs == {"a": None}


def test_soft_dependency_that_completed_before_an_attempt_is_seen_by_it() -> None:
    """Given CONCURRENT b SOFT-depends on a and b's first attempt fails retryably, when a completes before
    b's retry, then the retry sees a's output."""
    machine, _ = started(_chain(DependencyType.SOFT, retry_delay=1.0, retry_jitter=0.0,
                                execution_mode=ExecutionMode.CONCURRENT))
    fail(machine, "b", retryable=True, now=0.5)
    succeed(machine, "a", output="facts", now=0.6)
    assert dispatch_of(machine.handle(TimerFired(), 2.0), "b").inputs == {"a": "facts"}


def test_failed_soft_dependency_never_fails_its_dependent() -> None:
    """Given CONCURRENT b SOFT-depends on a, when a fails after b completed, then b stays completed, c runs,
    yet the run fails (a itself is required)."""
    machine, _ = started(_chain(DependencyType.SOFT, execution_mode=ExecutionMode.CONCURRENT))

    succeed(machine, "b", output="B")
    actions = fail(machine, "a", retryable=False)
    assert dispatch_of(actions, "c").inputs == {"b": "B"}  # c is SERIAL: it waited for a to end, not to complete
    actions = succeed(machine, "c")
    assert machine.state.steps["b"].status is StepStatus.COMPLETED
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


def test_data_dependency_with_the_fields_present_runs() -> None:
    """Given b DATA-depends on a for fields url and meta.id, when a's output has them, then b runs."""
    machine, _ = started(_chain(DependencyType.DATA, data_fields={"a": ["url", "meta.id"]}))
    actions = succeed(machine, "a", output={"url": "u", "meta": {"id": 3}})
    assert dispatched(actions) == ["b"]


@pytest.mark.parametrize("output", [{"url": "u"}, {"url": "u", "meta": {"id": None}}, None])
def test_data_dependency_missing_a_field_fails_the_dependent_naming_the_field(output: Any) -> None:
    """Given b DATA-depends on a for meta.id, when a's output lacks it (or it is None), then b FAILS naming the field."""
    machine, _ = started(_chain(DependencyType.DATA, data_fields={"a": ["url", "meta.id"]}))

    actions = succeed(machine, "a", output=output)

    error = machine.state.steps["b"].error
    assert status(machine, "b") is StepStatus.FAILED
    assert error is not None and "meta.id" in error.message and "'a'" in error.message
    assert machine.state.steps["c"].skip_reason == "upstream step 'b' failed"
    assert "step.failed" in topics(actions)
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


class Verdict(BaseModel):
    valid: bool
    notes: str = ""


@pytest.mark.parametrize(
    ("gate_output", "passes"),
    [
        (True, True),
        ({"valid": True}, True),
        ({"is_valid": True}, True),
        (Verdict(valid=True), True),
        (False, False),
        ({"valid": False}, False),
        (Verdict(valid=False), False),
        ("looks fine", False),
        (None, False),
    ],
)
def test_validation_gate_lets_the_dependent_run_only_when_its_output_says_valid(gate_output: Any, passes: bool) -> None:
    """Given b VALIDATION-depends on gate a, when a outputs X, then b runs iff X says valid, else b is SKIPPED."""
    assert gate_is_valid(gate_output) is passes
    machine, _ = started(_chain(DependencyType.VALIDATION))

    actions = succeed(machine, "a", output=gate_output)

    if passes:
        assert dispatched(actions) == ["b"]
    else:
        assert status(machine, "b") is StepStatus.SKIPPED
        assert machine.state.steps["b"].skip_reason == "validation gate 'a' did not pass"
        assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_validation_gate_that_failed_skips_like_a_hard_dependency() -> None:
    """Given b VALIDATION-depends on a, when a fails, then b is SKIPPED as upstream failed."""
    machine, _ = started(_chain(DependencyType.VALIDATION))
    fail(machine, "a", retryable=False)
    assert machine.state.steps["b"].skip_reason == "upstream step 'a' failed"


# -- retries -----------------------------------------------------------------------------------------------------


def _retrying(**options: Any) -> Pipeline:
    defaults = {"max_retries": 3, "retry_delay": 1.0, "retry_backoff": 2.0, "retry_max_delay": 3.0, "retry_jitter": 0.1}
    return Pipeline("p").step("flaky", fn=noop, **{**defaults, **options})


def test_retryable_failures_back_off_exponentially_within_jitter_bounds_and_capped() -> None:
    """Given delay=1, backoff=2, max_delay=3, jitter=0.1, when `flaky` fails retryably three times,
    then each retry is scheduled at now + d with d in [base*0.9, base] for bases 1, 2, 3 (capped)."""
    machine, _ = started(_retrying())
    now = 10.0
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        actions = fail(machine, "flaky", retryable=True, now=now, type_="ConnectionError")
        (retry,) = [a for a in actions if isinstance(a, ScheduleRetry)]
        assert base * 0.9 <= retry.at - now <= base
        assert "step.retrying" in topics(actions)
        assert status(machine, "flaky") is StepStatus.RETRYING
        # a timer that fires early dispatches nothing and is re-armed for the due time
        assert machine.handle(TimerFired(), now=retry.at - 0.001) == [ScheduleRetry(task="", at=retry.at)]
        now = retry.at
        actions = machine.handle(TimerFired(), now=now)
        assert dispatch_of(actions, "flaky").attempt == attempt + 1
        now += 0.5


def test_jitter_comes_from_the_machine_rng_so_a_seed_makes_it_deterministic() -> None:
    """Given two machines with the same seed, when the same failure happens, then the retry times are equal."""
    times = []
    for _ in range(2):
        machine, _ = started(_retrying(), seed=42)
        actions = fail(machine, "flaky", retryable=True, now=5.0)
        times.append([a.at for a in actions if isinstance(a, ScheduleRetry)])
    assert times[0] == times[1]
    assert times[0][0] == 5.0 + backoff_delay(RetrySpec(delay=1.0, max_delay=3.0), 1, random.Random(42))


def test_timer_before_the_retry_is_due_is_rearmed_and_after_it_redispatches() -> None:
    """Given a retry due at t, when TimerFired comes before t, then only a re-armed timer; at t, attempt 2 is dispatched."""
    machine, _ = started(_retrying(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=10.0)
    assert machine.next_timer() == 11.0

    assert machine.handle(TimerFired(), now=10.5) == [ScheduleRetry(task="", at=11.0)]  # early: re-armed
    actions = machine.handle(TimerFired(), now=11.0)

    assert dispatch_of(actions, "flaky").attempt == 2
    assert status(machine, "flaky") is StepStatus.RUNNING
    assert machine.next_timer() is None


def test_non_retryable_failure_is_not_retried() -> None:
    """Given max_retries=3, when `flaky` raises a non-retryable error, then it FAILS at once and so does the run."""
    machine, _ = started(_retrying())

    actions = fail(machine, "flaky", retryable=False, message="bad input")

    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    assert status(machine, "flaky") is StepStatus.FAILED
    assert machine.state.steps["flaky"].attempts == 1
    assert machine.state.status is RunStatus.FAILED
    assert "flaky" in machine.state.error and "bad input" in machine.state.error


def test_exhausted_retries_fail_the_step_and_the_run_naming_the_step() -> None:
    """Given max_retries=2, when all three attempts fail retryably, then the step FAILS after attempt 3."""
    machine, _ = started(_retrying(max_retries=2, retry_jitter=0.0))
    now = 0.0
    for _ in range(2):
        fail(machine, "flaky", retryable=True, now=now)
        now = machine.next_timer()
        machine.handle(TimerFired(), now=now)

    actions = fail(machine, "flaky", retryable=True, now=now, message="still down")

    assert status(machine, "flaky") is StepStatus.FAILED
    assert machine.state.steps["flaky"].attempts == 3
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]
    assert "flaky" in machine.state.error and "still down" in machine.state.error


def test_timeout_is_retried_and_the_final_failure_says_timed_out() -> None:
    """Given timeout=5 and max_retries=1, when both attempts time out, then the step fails with 'timed out'."""
    machine, _ = started(_retrying(max_retries=1, timeout=5.0))

    actions = machine.handle(StepTimedOut(task="flaky", attempt=1, timeout=5.0), now=5.0)
    assert [a for a in actions if isinstance(a, ScheduleRetry)]
    machine.handle(TimerFired(), now=machine.next_timer())
    machine.handle(StepTimedOut(task="flaky", attempt=2), now=20.0)

    error = machine.state.steps["flaky"].error
    assert status(machine, "flaky") is StepStatus.FAILED
    assert error is not None and "timed out" in error.message and "5s" in error.message
    assert "timed out" in machine.state.error and "flaky" in machine.state.error


def test_lost_worker_is_retried() -> None:
    """Given max_retries=1, when the worker running `flaky` dies, then it is retried."""
    machine, _ = started(_retrying(max_retries=1))
    actions = machine.handle(WorkerLost(task="flaky", attempt=1, reason="segfault"), now=1.0)
    assert [a.task for a in actions if isinstance(a, ScheduleRetry)] == ["flaky"]
    assert "segfault" in machine.state.tasks["flaky"].error.message


def test_an_interrupted_attempt_runs_again_at_once_without_using_a_retry() -> None:
    """Given max_retries=0, when the worker running `flaky` dies for another step's reason (StepInterrupted),
    then `flaky` is dispatched again at once as attempt 2, the event says it was not charged, and its one
    attempt's worth of budget is intact: the next retryable failure still fails it (no retry to spare)."""
    machine, _ = started(_retrying(max_retries=0))

    actions = machine.handle(StepInterrupted(task="flaky", attempt=1, reason="worker 3 ended (exit 3)"), now=1.0)

    assert isinstance(actions[0], Persist)
    assert dispatch_of(actions, "flaky").attempt == 2
    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    [retrying] = [a for a in actions if isinstance(a, Emit) and a.topic == "step.retrying"]
    assert retrying.data["charged"] is False and retrying.data["retry_at"] == 1.0
    assert "worker 3 ended (exit 3)" in retrying.data["error"] and "WorkerLostError" in retrying.data["error"]
    task = machine.state.tasks["flaky"]
    assert (task.attempt, task.interrupted) == (2, 1)
    assert status(machine, "flaky") is StepStatus.RUNNING
    assert machine.handle(StepSucceeded(task="flaky", attempt=1, output="late"), now=1.5) == []
    fail(machine, "flaky", retryable=True, now=2.0)
    assert status(machine, "flaky") is StepStatus.FAILED


def test_interruptions_never_use_up_retries_however_many() -> None:
    """Given max_retries=1, when `flaky` is interrupted five times, then fails retryably once, then it is retried
    once more (attempt 7) and a second failure fails it: only the two failures counted."""
    machine, _ = started(_retrying(max_retries=1, retry_jitter=0.0))
    for attempt in range(1, 6):
        machine.handle(StepInterrupted(task="flaky", attempt=attempt), now=float(attempt))
    actions = fail(machine, "flaky", retryable=True, now=10.0)
    assert [a.task for a in actions if isinstance(a, ScheduleRetry)] == ["flaky"]
    assert [a for a in actions if isinstance(a, Emit) and a.topic == "step.retrying"][0].data["charged"] is True
    assert dispatch_of(machine.handle(TimerFired(), now=machine.next_timer()), "flaky").attempt == 7
    fail(machine, "flaky", retryable=True, now=20.0)
    assert status(machine, "flaky") is StepStatus.FAILED


def test_an_interrupted_item_reruns_alone_and_a_full_run_still_respects_max_concurrent_steps() -> None:
    """Given a PARALLEL_MERGE of 3 items with max_concurrent_steps=2, when item 0 is interrupted, then item 0 (not
    the queued item 2) takes the slot it freed, and the step's other running item is untouched."""
    p = Pipeline("p", max_concurrent_steps=2).step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2, 3],
                                                  max_retries=0)
    machine, actions = started(p)
    assert dispatched(actions) == ["fan[0]", "fan[1]"]

    actions = machine.handle(StepInterrupted(task="fan[0]", attempt=1), now=1.0)

    assert dispatched(actions) == ["fan[0]"] and dispatch_of(actions, "fan[0]").attempt == 2
    assert machine.state.tasks["fan[1]"].status is TaskStatus.RUNNING
    assert machine.state.tasks["fan[2]"].status is TaskStatus.QUEUED


def test_max_retries_zero_fails_on_the_first_retryable_error() -> None:
    """Given max_retries=0, when `flaky` fails retryably, then it FAILS without a retry."""
    machine, _ = started(_retrying(max_retries=0))
    actions = fail(machine, "flaky", retryable=True)
    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    assert status(machine, "flaky") is StepStatus.FAILED


# -- stale events ---------------------------------------------------------------------------------------------------


def test_events_for_an_old_attempt_an_unknown_task_or_a_finished_run_are_ignored() -> None:
    """Given a retried step, when events arrive for attempt 1, an unknown task, or after the end, they change nothing."""
    machine, _ = started(_retrying(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=1.0)
    machine.handle(TimerFired(), now=2.0)
    before = msgspec.msgpack.encode(machine.state)

    assert machine.handle(StepSucceeded(task="flaky", attempt=1, output="late"), now=3.0) == []
    assert machine.handle(StepSucceeded(task="nope", attempt=1), now=3.0) == []
    assert machine.handle(WorkerLost(task="flaky", attempt=1), now=3.0) == []
    assert msgspec.msgpack.encode(machine.state) == before

    succeed(machine, "flaky", output="ok", now=4.0)
    assert machine.finished
    assert machine.handle(StepSucceeded(task="flaky", attempt=2, output="dup"), now=5.0) == []
    assert machine.handle(Cancelled(), now=5.0) == []
    assert machine.state.steps["flaky"].output == "ok"
    assert machine.state.status is RunStatus.COMPLETED


# -- cancellation, fail_fast, optional steps -------------------------------------------------------------------------


def test_cancel_stops_running_tasks_and_cancels_every_unfinished_step() -> None:
    """Given a done step, two running ones and a pending one, when Cancelled, then running tasks get CancelTask,
    unfinished steps are CANCELLED, the done one stays COMPLETED, and the run is CANCELLED."""
    p = steps(Pipeline("p"), "done", "r1", "r2")
    p.step("later", fn=noop, depends_on=["r1"])
    machine, _ = started(p)
    succeed(machine, "done", output=1)

    actions = machine.handle(Cancelled(reason="user pressed ctrl-c"), now=2.0)

    assert sorted((a.task, a.attempt) for a in actions if isinstance(a, CancelTask)) == [("r1", 1), ("r2", 1)]
    assert {n: s.status for n, s in machine.state.steps.items()} == {
        "done": StepStatus.COMPLETED, "r1": StepStatus.CANCELLED, "r2": StepStatus.CANCELLED, "later": StepStatus.CANCELLED,
    }
    assert machine.state.status is RunStatus.CANCELLED
    assert machine.state.error == "user pressed ctrl-c"
    assert finishes(actions) == [Finish(status=RunStatus.CANCELLED)]
    assert succeed(machine, "r1") == []


def test_fail_fast_cancels_the_rest_of_the_run_when_a_required_step_fails() -> None:
    """Given fail_fast and two running steps, when one fails for good, then the other is cancelled and the run FAILS."""
    p = steps(Pipeline("p", fail_fast=True), "a", "b")
    p.step("c", fn=noop, depends_on=["b"])
    machine, _ = started(p)

    actions = fail(machine, "a", retryable=False, message="disk full")

    assert [a.task for a in actions if isinstance(a, CancelTask)] == ["b"]
    assert status(machine, "b") is StepStatus.CANCELLED and status(machine, "c") is StepStatus.CANCELLED
    assert machine.state.status is RunStatus.FAILED
    assert "fail_fast" in machine.state.error and "'a'" in machine.state.error
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


def test_fail_fast_ignores_optional_steps() -> None:
    """Given fail_fast, when a required=False step fails, then the run goes on."""
    p = Pipeline("p", fail_fast=True)
    p.step("extra", fn=noop, execution_mode=CONCURRENT, required=False)
    p.step("main", fn=noop, execution_mode=CONCURRENT)
    machine, _ = started(p)
    fail(machine, "extra", retryable=False)
    assert status(machine, "main") is StepStatus.RUNNING
    actions = succeed(machine, "main")
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_optional_step_failure_leaves_the_run_completed_but_listed_as_failed() -> None:
    """Given required=False `extra`, when it fails, then the run COMPLETES and the result lists `extra` as failed."""
    p = Pipeline("p")
    p.step("extra", fn=noop, execution_mode=CONCURRENT, required=False)
    p.step("main", fn=noop, execution_mode=CONCURRENT)
    machine, _ = started(p)
    fail(machine, "extra", retryable=False, message="optional thing broke")
    succeed(machine, "main", output="report")

    result = PipelineResult.from_state(machine.plan, machine.state)
    assert result.status == "completed" and result.success
    assert result.failed_steps == ["extra"]
    assert "optional thing broke" in result.error_details["extra"]
    assert result.step_outputs == {"main": "report"}


def test_final_output_is_the_single_sink_or_the_step_marked_final() -> None:
    """Given a -> b, then final_output is b's; given final=True on a, it is a's; given two sinks, it is None."""
    p = _chain()
    machine, _ = started(p)
    for name, out in [("a", 1), ("b", 2), ("c", 3)]:
        succeed(machine, name, output=out)
    assert PipelineResult.from_state(machine.plan, machine.state).final_output == 3

    p2 = steps(Pipeline("p"), "x", "y")
    machine, _ = started(p2)
    succeed(machine, "x", output="X")
    succeed(machine, "y", output="Y")
    assert PipelineResult.from_state(machine.plan, machine.state).final_output is None
    plan = msgspec.structs.replace(machine.plan, steps=[msgspec.structs.replace(machine.plan.steps[0], final=True),
                                                        machine.plan.steps[1]])
    assert PipelineResult.from_state(plan, machine.state).final_output == "X"


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
    machine, _ = started(_retrying(max_retries=1, retry_jitter=0.0))
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
    machine, _ = started(_retrying(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=10.0)
    crashed = RunMachine(machine.plan, _checkpoint(machine))

    actions = crashed.recover(now=10.5)

    assert [(a.task, a.at) for a in actions if isinstance(a, ScheduleRetry)] == [("flaky", 11.0)]
    assert dispatched(actions) == []
    assert dispatch_of(crashed.handle(TimerFired(), now=11.0), "flaky").attempt == 2


def test_reset_reruns_a_step_and_its_dependents_and_keeps_other_completed_outputs() -> None:
    """Given a finished FAILED run (a done, b failed, c skipped), when b is reset, then b and c are PENDING again,
    a keeps its output, b is dispatched with it, and the run can now complete."""
    machine, _ = started(_chain())
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
