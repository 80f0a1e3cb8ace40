"""The run state machine (RunMachine), driven directly: whether a step runs at all, by its
condition (DSL or callable) and by the type of each dependency (HARD, SOFT, DATA,
VALIDATION).

Driven as test_engine.py says (engine_helpers.py): a plan, events with a fake `now`, no step function run.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import (
    chain_pipeline,
    dispatch_of,
    dispatched,
    fail,
    finishes,
    noop,
    started,
    status,
    succeed,
    topics,
)
from pydantic import BaseModel

from tagent_client import DependencyType, ExecutionMode, Pipeline, when
from tagent_client.core.events import Finish, ScheduleRetry, TimerFired
from tagent_client.core.rules import gate_is_valid
from tagent_client.core.state import Phase, RunStatus, StepStatus

pytestmark = pytest.mark.timeout(60)


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


# -- dependency types ----------------------------------------------------------------------------------------



def test_failed_hard_dependency_skips_the_whole_chain_below_it() -> None:
    """Given a -> b -> c (HARD), when a fails, then b and c are SKIPPED in the same call, naming their upstream."""
    machine, _ = started(chain_pipeline())

    actions = fail(machine, "a", retryable=False)

    assert machine.state.steps["b"].skip_reason == "upstream step 'a' failed"
    assert machine.state.steps["c"].skip_reason == "upstream step 'b' skipped"
    assert topics(actions).count("step.skipped") == 2
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]
    assert dispatched(actions) == []


def test_soft_dependency_is_not_waited_for_and_is_none_until_it_completes() -> None:
    """Given CONCURRENT b SOFT-depends on a, when the run starts, then a and b start together and b sees a=None."""
    machine, actions = started(chain_pipeline(DependencyType.SOFT, execution_mode=ExecutionMode.CONCURRENT))
    assert dispatched(actions) == ["a", "b"]
    assert dispatch_of(actions, "b").inputs == {"a": None}


def test_soft_dependency_that_completed_before_an_attempt_is_seen_by_it() -> None:
    """Given CONCURRENT b SOFT-depends on a and b's first attempt fails retryably, when a completes before
    b's retry, then the retry sees a's output."""
    machine, _ = started(chain_pipeline(DependencyType.SOFT, retry_delay=1.0, retry_jitter=0.0,
                                execution_mode=ExecutionMode.CONCURRENT))
    fail(machine, "b", retryable=True, now=0.5)
    succeed(machine, "a", output="facts", now=0.6)
    assert dispatch_of(machine.handle(TimerFired(), 2.0), "b").inputs == {"a": "facts"}


def test_failed_soft_dependency_never_fails_its_dependent() -> None:
    """Given CONCURRENT b SOFT-depends on a, when a fails after b completed, then b stays completed, c runs,
    yet the run fails (a itself is required)."""
    machine, _ = started(chain_pipeline(DependencyType.SOFT, execution_mode=ExecutionMode.CONCURRENT))

    succeed(machine, "b", output="B")
    actions = fail(machine, "a", retryable=False)
    assert dispatch_of(actions, "c").inputs == {"b": "B"}  # c is SERIAL: it waited for a to end, not to complete
    actions = succeed(machine, "c")
    assert machine.state.steps["b"].status is StepStatus.COMPLETED
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


def test_data_dependency_with_the_fields_present_runs() -> None:
    """Given b DATA-depends on a for fields url and meta.id, when a's output has them, then b runs."""
    machine, _ = started(chain_pipeline(DependencyType.DATA, data_fields={"a": ["url", "meta.id"]}))
    actions = succeed(machine, "a", output={"url": "u", "meta": {"id": 3}})
    assert dispatched(actions) == ["b"]


@pytest.mark.parametrize("output", [{"url": "u"}, {"url": "u", "meta": {"id": None}}, None])
def test_data_dependency_missing_a_field_fails_the_dependent_naming_the_field(output: Any) -> None:
    """Given b DATA-depends on a for meta.id, when a's output lacks it (or it is None), then b FAILS naming the field."""
    machine, _ = started(chain_pipeline(DependencyType.DATA, data_fields={"a": ["url", "meta.id"]}))

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
    machine, _ = started(chain_pipeline(DependencyType.VALIDATION))

    actions = succeed(machine, "a", output=gate_output)

    if passes:
        assert dispatched(actions) == ["b"]
    else:
        assert status(machine, "b") is StepStatus.SKIPPED
        assert machine.state.steps["b"].skip_reason == "validation gate 'a' did not pass"
        assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_validation_gate_that_failed_skips_like_a_hard_dependency() -> None:
    """Given b VALIDATION-depends on a, when a fails, then b is SKIPPED as upstream failed."""
    machine, _ = started(chain_pipeline(DependencyType.VALIDATION))
    fail(machine, "a", retryable=False)
    assert machine.state.steps["b"].skip_reason == "upstream step 'a' failed"
