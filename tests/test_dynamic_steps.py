"""Steps that add steps (`ctx.add_step`) and compensation (`compensate=`), in process (docs/semantics.md).

The functions are at module level: a step added at run time runs a function found by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tagent_client import Pipeline, RetryableError
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, StepFailed, StepSucceeded
from tagent_client.core.state import ErrorInfo, StepStatus
from tagent_client.define.spec import spec_of
from tagent_client.define.step import PipelineStep
from tagent_client.run.local import run_pipeline

CALLS: list[str] = []


def leaf(ctx: Any) -> str:
    CALLS.append(ctx.step_name)
    return ctx.step_name


def noop() -> None:
    return None


def run(p: Pipeline) -> Any:
    CALLS.clear()
    return asyncio.run(run_pipeline(p))


def adds(ctx: Any) -> str:
    ctx.add_step("x", fn=leaf, depends_on=["adder"])
    ctx.add_step("y", fn=leaf, depends_on=["x"])
    return "added"


def adds_on_retry(ctx: Any) -> int:
    ctx.add_step(f"try{ctx.attempt}", fn=leaf)
    if ctx.attempt == 1:
        raise RetryableError("first attempt fails after adding")
    return ctx.attempt


def test_added_steps_run_after_the_adding_step_and_are_marked() -> None:
    """Given a step that adds two chained steps, when the run ends, then both ran in order, marked added_by."""
    p = Pipeline("add")
    p.step("adder", fn=adds)
    result = run(p)
    assert result.status == "completed"
    assert CALLS == ["x", "y"]
    assert {n: m["added_by"] for n, m in result.step_metadata.items()} == {"adder": None, "x": "adder", "y": "adder"}


def test_a_retried_attempt_replaces_the_earlier_attempts_additions() -> None:
    """Given a step whose first attempt adds try1 and then fails, when its retry adds try2 and succeeds,
    then only try2 joins the run."""
    p = Pipeline("retry")
    p.step("adder", fn=adds_on_retry, max_retries=1, retry_delay=0.01)
    result = run(p)
    assert result.status == "completed"
    assert sorted(result.step_outputs) == ["adder", "try2"]


def closure_adder(ctx: Any) -> None:
    def inner(ctx: Any) -> int:
        return 1
    ctx.add_step("inner", fn=inner)


def duplicate_adder(ctx: Any) -> None:
    ctx.add_step("adder", fn=leaf)


def tools_adder(ctx: Any) -> None:
    ctx.add_step("t", goal="use a tool", tools=[leaf])


def bad_option_adder(ctx: Any) -> None:
    ctx.add_step("b", fn=leaf, no_such_option=1)


@pytest.mark.parametrize(("fn", "message"), [
    (closure_adder, "fn='inner' is a lambda or a function defined inside another"),
    (duplicate_adder, "the run already has a step named 'adder'"),
    (tools_adder, "Python tools cannot be given to a step added at run time"),
    (bad_option_adder, "unexpected keyword argument 'no_such_option'"),
])
def test_a_bad_add_step_fails_the_step_at_the_call_site(fn: Any, message: str) -> None:
    """Given a step calling ctx.add_step wrongly, when it runs, then it fails for good with a DynamicStepError
    that says what is wrong, and nothing is added."""
    p = Pipeline("bad")
    p.step("adder", fn=fn)
    result = run(p)
    assert result.status == "failed"
    assert result.step_metadata["adder"]["error_type"] == "DynamicStepError"
    assert result.step_metadata["adder"]["attempts"] == 1
    assert message in result.error_details["adder"]
    assert list(result.step_metadata) == ["adder"]


def _spec(name: str, deps: list[str]) -> Any:
    return spec_of(PipelineStep(name=name, fn=noop, depends_on=deps), [])


@pytest.mark.parametrize(("added", "message"), [
    ([_spec("n", ["ghost"])], "depending on unknown step(s) 'ghost'"),
    ([_spec("n", ["m"]), _spec("m", ["n"])], "in a cycle: n -> m -> n"),
    ([_spec("a", [])], "the run already has a step of that name"),
])
def test_the_engine_refuses_additions_that_do_not_fit_the_run(added: list[Any], message: str) -> None:
    """Given a running step, when its result adds steps with an unknown dependency, a cycle or a name in use,
    then the attempt fails with a DynamicStepError (not retried) and the run has no new step."""
    p = Pipeline("engine")
    p.step("a", fn=noop, max_retries=3)
    machine = RunMachine.new(p.plan(), "r1")
    dispatch = next(a for a in machine.start(0.0) if isinstance(a, Dispatch))
    machine.handle(StepSucceeded(task=dispatch.task, attempt=dispatch.attempt, added=added), 1.0)
    step = machine.state.steps["a"]
    assert step.status is StepStatus.FAILED
    assert step.error is not None and step.error.type == "DynamicStepError" and message in step.error.message
    assert list(machine.state.steps) == ["a"]


def test_retrying_the_adding_step_removes_its_additions_until_it_completes_again() -> None:
    """Given a completed run whose step added steps, when that step is run again (tagent retry), then what it
    added is gone until it completes again, and is then added once."""
    p = Pipeline("again")
    p.step("a", fn=noop)
    machine = RunMachine.new(p.plan(), "r1")
    first = next(a for a in machine.start(0.0) if isinstance(a, Dispatch))
    out = machine.handle(StepSucceeded(task=first.task, attempt=1, added=[_spec("n", ["a"])]), 1.0)
    n = next(a for a in out if isinstance(a, Dispatch))
    machine.handle(StepSucceeded(task=n.task, attempt=n.attempt), 2.0)
    assert machine.state.status.value == "completed" and list(machine.state.steps) == ["a", "n"]
    again = next(a for a in machine.reset(["a"], 3.0) if isinstance(a, Dispatch))
    assert list(machine.state.steps) == ["a"] and [s.name for s in machine.plan.steps] == ["a"]
    machine.handle(StepSucceeded(task=again.task, attempt=again.attempt, added=[_spec("n", ["a"])]), 4.0)
    assert list(machine.state.steps) == ["a", "n"] and machine.state.steps["n"].spec.added_by == "a"


UNDONE: list[tuple[str, Any]] = []


def book(ctx: Any) -> dict[str, int]:
    return {"booking": 1}


def cancel_booking(ctx: Any, output: Any) -> None:
    UNDONE.append(("book", output))


def pay(ctx: Any) -> int:
    return 30


def refund(ctx: Any, output: Any) -> None:
    UNDONE.append(("pay", output))


def flaky_refund(ctx: Any, output: Any) -> None:
    if ctx.attempt == 1:
        raise RetryableError("bank busy")
    UNDONE.append(("pay", output))


def ship(ctx: Any) -> None:
    raise ValueError("no ship")


def adds_a_compensated_step(ctx: Any) -> None:
    ctx.add_step("pay", fn=pay, compensate=refund, depends_on=["book"])
    ctx.add_step("ship", fn=ship, depends_on=["pay"])


def test_a_failed_run_compensates_its_completed_steps_in_reverse_order() -> None:
    """Given book -> pay -> ship with compensations on book and pay, when ship fails, then pay's compensation
    (retried once) and then book's run, each with its step's output, and the run ends rolled_back."""
    UNDONE.clear()
    p = Pipeline("trip")
    p.step("book", fn=book, compensate=cancel_booking)
    p.step("pay", fn=pay, depends_on=["book"], compensate=flaky_refund, compensate_retries=1)
    p.step("ship", fn=ship, depends_on=["pay"])
    result = run(p)
    assert result.status == "rolled_back"
    assert UNDONE == [("pay", 30), ("book", {"booking": 1})]
    assert result.compensations == {"book": "succeeded", "pay": "succeeded"}
    assert result.error is not None and "ship (ValueError: no ship)" in result.error


def test_added_steps_are_compensated_too() -> None:
    """Given steps added at run time with a compensation, when a later added step fails, then they are undone."""
    UNDONE.clear()
    p = Pipeline("trip2")
    p.step("book", fn=book, compensate=cancel_booking)
    p.step("plan", fn=adds_a_compensated_step, depends_on=["book"])
    result = run(p)
    assert result.status == "rolled_back"
    assert UNDONE == [("pay", 30), ("book", {"booking": 1})]


def test_a_run_that_completes_runs_no_compensation() -> None:
    """Given steps with compensations, when the run completes, then none runs."""
    UNDONE.clear()
    p = Pipeline("fine")
    p.step("book", fn=book, compensate=cancel_booking)
    assert run(p).status == "completed" and UNDONE == []


def test_compensate_must_be_a_function_or_a_goal() -> None:
    """Given compensate=42, when the pipeline is validated, then the problem names the step."""
    p = Pipeline("badcomp")
    p.step("a", fn=noop, compensate=42, compensate_timeout=-1)
    problems = p.problems()
    assert "step 'a': compensate= must be a function (ctx, output) or an agent goal (a string), got int" in problems
    assert "step 'a': compensate_timeout must be a positive number of seconds, got -1" in problems


def test_a_compensation_that_fails_leaves_the_run_rollback_failed_with_the_reason() -> None:
    """Given a step whose compensation fails for good, when the run fails, then it ends rollback_failed naming it."""
    p = Pipeline("bad_undo")
    p.step("pay", fn=pay, compensate=ship, compensate_retries=0)
    p.step("boom", fn=ship, depends_on=["pay"])
    result = run(p)
    assert result.status == "rollback_failed"
    assert result.compensations == {"pay": "failed: ValueError: no ship"}
    assert result.error is not None and "rollback failed: compensation of pay (ValueError: no ship)" in result.error


def test_a_cancel_during_a_rollback_changes_nothing() -> None:
    """Given a run rolling back, when it is cancelled, then the rollback goes on."""
    from tagent_client.core.events import Cancelled

    p = Pipeline("c")
    p.step("a", fn=noop, compensate=noop)
    p.step("b", fn=noop, depends_on=["a"])
    machine = RunMachine.new(p.plan(), "r1")
    a = next(x for x in machine.start(0.0) if isinstance(x, Dispatch))
    b = next(x for x in machine.handle(StepSucceeded(task=a.task, attempt=1), 1.0) if isinstance(x, Dispatch))
    error = ErrorInfo(type="ValueError", message="x")
    undo = next(x for x in machine.handle(StepFailed(task=b.task, attempt=1, error=error), 2.0) if isinstance(x, Dispatch))
    assert machine.state.status.value == "rolling_back" and undo.task == "a#compensate"
    assert machine.handle(Cancelled(), 3.0) == []
    machine.handle(StepSucceeded(task=undo.task, attempt=undo.attempt), 4.0)
    assert machine.state.status.value == "rolled_back" and machine.state.rolled_back_from.value == "failed"


def test_an_agent_goal_compensation_runs_with_the_steps_output() -> None:
    """Given a step whose compensation is an agent goal, when the run fails, then the agent runs (offline model)
    and the compensation is recorded."""
    p = Pipeline("agent_undo", model="test")
    p.step("pay", fn=pay, compensate="Refund the payment whose amount is the input 'pay'")
    p.step("boom", fn=ship, depends_on=["pay"])
    result = run(p)
    assert result.status == "rolled_back"
    assert result.compensations == {"pay": "succeeded"}


def item_adder(ctx: Any, item: str) -> str:
    ctx.add_step(f"after_{item}_{ctx.attempt}", fn=leaf, depends_on=["fan"])
    if item == "b" and ctx.attempt == 1:
        raise RetryableError("item b fails once after adding")
    return item


def test_a_parallel_merge_step_adds_what_each_items_latest_attempt_added_in_item_order() -> None:
    """Given a PARALLEL_MERGE step whose items each add a step, item b failing once after adding, when the
    step completes, then the run has one added step per item (b's from its retry), in item order."""
    p = Pipeline("fan")
    p.step("fan", fn=item_adder, execution_mode="parallel_merge", over=["a", "b"], max_retries=1, retry_delay=0.01)
    result = run(p)
    assert result.status == "completed"
    assert list(result.step_metadata) == ["fan", "after_a_1", "after_b_2"]


def test_a_compensation_goal_needs_a_model_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a function step whose compensation is an agent goal and no model anywhere, when the run starts,
    then it is refused up front, naming the step."""
    from tagent_client.errors import ConfigError

    monkeypatch.delenv("TAGENT_MODEL", raising=False)
    p = Pipeline("nomodel")
    p.step("pay", fn=pay, compensate="Refund it")
    with pytest.raises(ConfigError, match="pay"):
        asyncio.run(run_pipeline(p, model=None))


def test_compensations_survive_the_document_export() -> None:
    """Given a pipeline with an agent-goal compensation and a timeout, when it goes to TOML and back, then they
    are kept."""
    p = Pipeline("doc", model="test")
    p.step("pay", goal="Pay", compensate="Refund the payment", compensate_timeout=5, compensate_retries=1)
    again = Pipeline.from_toml(p.to_toml())
    step = again.steps["pay"]
    assert (step.compensate, step.compensate_timeout, step.compensate_retries) == ("Refund the payment", 5, 1)
