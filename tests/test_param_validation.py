"""Function-step parameters that nothing can fill are reported before any step runs.

A parameter is filled by `ctx`, a dependency's output, `item` (PARALLEL_MERGE) or a
submit param of its name. `validate()` reports misspellings and missing dependencies;
the submit params are checked when a run is submitted (docs/semantics.md, "Function
steps"). Issue 11, finding 6: `def second(ctx, frist)` used to pass `validate()` and
fail only at run time, after its upstream steps had run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client import ExecutionMode, Pipeline, run_agent
from tagent_client.errors import PipelineValidationError, exit_code_for
from tagent_client.run.context import StepContext

EXIT_INVALID = exit_code_for("invalid_pipeline")


def two_steps(second) -> Pipeline:  # noqa: ANN001 - any step function
    """first -> second, where `second` is the function under test."""
    p = Pipeline("p")
    p.step("first", fn=lambda ctx: 1)
    p.step("second", fn=second, depends_on=["first"])
    return p


def test_a_misspelt_dependency_parameter_is_reported_with_step_name_and_suggestion() -> None:
    # Given a step whose parameter misspells its dependency's name
    def second(ctx, frist):  # noqa: ANN001, ANN202
        return frist

    # When the pipeline is validated, without any params
    with pytest.raises(PipelineValidationError) as caught:
        two_steps(second).validate()

    # Then the problem names the step, the parameter and the likely intended name
    (problem,) = caught.value.problems
    assert problem.startswith("step 'second': parameter 'frist' of second() ")
    assert "did you mean 'first'?" in problem


def test_a_parameter_naming_a_step_that_is_not_a_dependency_is_reported() -> None:
    # Given a step that takes 'first' but does not depend on it
    p = Pipeline("p")
    p.step("first", fn=lambda ctx: 1)

    @p.task()
    def second(ctx, first):  # noqa: ANN001, ANN202
        return first

    # When / Then: validate() says to add the dependency
    assert p.problems() == [
        "step 'second': parameter 'first' of second() names step 'first', which is not among its depends_on: "
        "add it there, or rename the parameter"
    ]


def test_item_outside_a_parallel_merge_step_is_reported() -> None:
    def second(ctx, first, item):  # noqa: ANN001, ANN202
        return item

    problems = two_steps(second).problems()

    assert len(problems) == 1 and "parameter 'item' of second() is only filled in PARALLEL_MERGE steps" in problems[0]


def test_what_the_binding_rules_fill_is_never_reported() -> None:
    # Given parameters filled by ctx, a dependency, item (PARALLEL_MERGE), a default, **kwargs,
    # a first parameter annotated StepContext, and *args
    p = Pipeline("p")
    p.step("first", fn=lambda ctx: [1, 2])

    @p.task(depends_on=["first"], execution_mode=ExecutionMode.PARALLEL_MERGE, over="first")
    def fan(ctx, first, item, limit=3, *rest, **everything):  # noqa: ANN001, ANN002, ANN003, ANN202
        return item

    @p.task(depends_on=["fan"])
    def typed(context: StepContext, fan):  # noqa: ANN001, ANN202
        return fan

    # Then there is nothing to report, with or without params
    assert p.problems() == []
    assert p.problems(params={}) == []


def test_an_unknown_name_is_a_submit_param_until_the_params_say_otherwise() -> None:
    # Given a step that takes a name that is nothing in the pipeline (and no close miss of one)
    def second(ctx, company):  # noqa: ANN001, ANN202
        return company

    p = two_steps(second)

    # Then without params it is taken to be a submit param ...
    assert p.problems() == []
    # ... with the params it must be one of them, and a near miss among them is pointed out
    assert p.problems(params={"company": "Acme"}) == []
    (problem,) = p.problems(params={"compnay": "Acme"})
    assert "parameter 'company' of second() matches no dependency, 'ctx' or submit param" in problem
    assert "(given: compnay; 'compnay' looks misspelt)" in problem


def test_declared_params_make_validate_report_every_unmatched_name() -> None:
    # Given a pipeline that declares its submit params
    p = Pipeline("p", params=["company"])

    @p.task()
    def report(ctx, company, limit):  # noqa: ANN001, ANN202
        return company

    # Then a name that is neither declared nor anything else is reported without any params
    (problem,) = p.problems()
    assert problem.startswith("step 'report': parameter 'limit' of report() matches no dependency, 'ctx' or declared param")


def test_declared_params_survive_export_and_plan() -> None:
    p = Pipeline("p", params=["company"], model="test").step("a", goal="A")

    assert Pipeline.from_json(p.to_json()).params == ["company"]
    assert p.plan().params == ["company"]


def test_run_pipeline_refuses_params_that_leave_a_parameter_unfilled_before_any_step_runs() -> None:
    # Given an upstream step that records that it ran, and a step that needs the param 'company'
    ran: list[str] = []
    p = Pipeline("p")

    @p.task()
    def first(ctx):  # noqa: ANN001, ANN202
        ran.append("first")

    @p.task(depends_on=["first"])
    def second(ctx, first, company):  # noqa: ANN001, ANN202
        return company

    # When it is run with a misspelt param
    with pytest.raises(PipelineValidationError) as caught:
        run_agent(p, params={"compnay": "Acme"})

    # Then it is refused, saying which step and parameter, and nothing ran
    assert "step 'second': parameter 'company' of second() is not among the submit params" in caught.value.problems[0]
    assert ran == []
    # And with the param it runs
    assert run_agent(p, params={"company": "Acme"}).step_outputs["second"] == "Acme"


FRIST = """
    from tagent_client import Pipeline

    pipeline = Pipeline("typo")

    @pipeline.task()
    def first(ctx):
        return 1

    @pipeline.task(depends_on=["first"])
    def second(ctx, frist):
        return frist
"""

NEEDS_COMPANY = """
    from tagent_client import Pipeline

    pipeline = Pipeline("needs_company")

    @pipeline.task()
    def first(ctx):
        return 1

    @pipeline.task(depends_on=["first"], final=True)
    def second(ctx, first, company):
        return company
"""


@pytest.mark.timeout(90)
def test_tagent_submit_reports_a_misspelt_parameter_and_creates_no_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline file whose second step misspells its dependency
    path = write_pipeline(tmp_path, "typo.py", FRIST)

    # When it is submitted to a real daemon
    done = daemon.cli("submit", str(path))

    # Then submit fails (invalid pipeline) with the step, the name and the suggestion, and no run exists
    assert done.returncode == EXIT_INVALID, done.stderr
    assert "step 'second': parameter 'frist' of second()" in done.stderr
    assert "did you mean 'first'?" in done.stderr
    assert json.loads(daemon.cli("runs", "--json").stdout) == []


@pytest.mark.timeout(90)
def test_tagent_submit_checks_the_given_params_before_the_run_exists(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline file whose second step takes the submit param 'company'
    path = write_pipeline(tmp_path, "needs.py", NEEDS_COMPANY)

    # When it is submitted with the param misspelt
    refused = daemon.cli("submit", str(path), "--param", "compnay=Acme")

    # Then submit fails naming the step, the parameter and the misspelling, and no run (no step) started
    assert refused.returncode == EXIT_INVALID, refused.stderr
    assert "step 'second': parameter 'company' of second() is not among the submit params" in refused.stderr
    assert "'compnay' looks misspelt" in refused.stderr
    assert json.loads(daemon.cli("runs", "--json").stdout) == []

    # And with the param given it runs to the end
    done = daemon.cli("submit", str(path), "--param", "company=Acme", "--follow", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["final_output"] == "Acme"
