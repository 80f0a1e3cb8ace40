"""The pipeline definition API and its validation.

Validation reports every problem at once, one precise line each, and
`PipelineValidationError.problems` carries that list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from tagent_client import DependencyType, ExecutionMode, Pipeline, PipelineStep, PipelineValidationError, when
from tagent_client.define.conditions import Check, Condition
from tagent_client.define.pipeline import PipelineWarning
from tagent_client.define.plan import RetrySpec, StepKind, StepSpec
from tagent_client.define.validation import BUILTIN_TOOLS

pytestmark = pytest.mark.timeout(30)


class Facts(BaseModel):
    score: float
    items: list[str]


class Report(BaseModel):
    class Section(BaseModel):
        title: str

    sections: list[Section]


@dataclasses.dataclass
class NotAModel:
    x: int


def search_web(query: str) -> str:
    return query


def fetch(ctx: Any) -> dict[str, Any]:
    return {}


def only_problem(p: Pipeline) -> str:
    found = p.problems()
    assert len(found) == 1, found
    return found[0]


# -- building -----------------------------------------------------------------


def test_step_and_add_step_return_the_pipeline_for_chaining() -> None:
    # Given a pipeline
    p = Pipeline("chain")
    # When steps are added fluently, by keywords and ready-made
    same = p.step("a", goal="A").add_step(PipelineStep("b", goal="B", depends_on="a")).step("c", goal="C")
    # Then every call returned the pipeline and the steps keep definition order
    assert same is p
    assert [s.name for s in p.steps] == ["a", "b", "c"]
    assert p.validate() is p


def test_depends_on_accepts_a_list_a_string_and_a_mapping() -> None:
    # Given steps declaring dependencies in each accepted form
    p = Pipeline("deps").step("a", goal="A").step("b", goal="B")
    p.step("as_list", goal="x", depends_on=["a", "b"])
    p.step("as_str", goal="x", depends_on="a")
    p.step("as_map", goal="x", depends_on={"a": DependencyType.VALIDATION, "b": "soft"})
    # When they are normalised
    deps = {n: p.steps[n].dependencies for n in ("as_list", "as_str", "as_map")}
    # Then lists and strings mean HARD, and mapping values may be enum members or their strings
    assert deps["as_list"] == {"a": DependencyType.HARD, "b": DependencyType.HARD}
    assert deps["as_str"] == {"a": DependencyType.HARD}
    assert deps["as_map"] == {"a": DependencyType.VALIDATION, "b": DependencyType.SOFT}
    assert p.problems() == []


def test_an_unknown_dependency_type_is_refused_when_the_step_is_built() -> None:
    # Given / When a mapping names a dependency type that does not exist / Then the step is refused at once
    with pytest.raises(ValueError, match="bogus"):
        PipelineStep("b", goal="B", depends_on={"a": "bogus"})


def test_task_decorator_without_arguments_names_the_step_after_the_function() -> None:
    # Given a pipeline
    p = Pipeline("tasks")

    # When a function is decorated with a bare @p.task
    @p.task
    def load(ctx: Any) -> int:
        return 1

    # Then the function is returned unchanged and a function step carries its name
    assert callable(load) and load(None) == 1
    assert p.steps["load"].fn is load
    assert p.steps["load"].kind is StepKind.FUNCTION


def test_task_decorator_with_arguments_and_a_name_override() -> None:
    # Given a pipeline with a first step
    p = Pipeline("tasks").step("source", goal="Find it")

    # When @p.task(...) is given options and name=
    @p.task(name="shape", depends_on=["source"], timeout=5, max_retries=0)
    def reshape(source: Any) -> Any:
        return source

    # Then the step is named by name= and carries the options
    step = p.steps["shape"]
    assert "reshape" not in p.steps
    assert step.fn is reshape
    assert step.dependencies == {"source": DependencyType.HARD}
    assert (step.timeout, step.max_retries) == (5, 0)
    assert p.problems() == []


def test_tool_decorator_offers_the_function_to_every_agent_step() -> None:
    # Given a pipeline with two agent steps
    p = Pipeline("tools").step("a", goal="A").step("b", goal="B")

    # When a function is registered with @p.tool
    @p.tool
    def lookup(term: str) -> str:
        return term

    # Then the function is returned unchanged and both steps may use it
    assert lookup("x") == "x"
    assert p.tools == [lookup]
    assert p.tools_for("a") == {"lookup": lookup}
    assert p.tools_for("b") == {"lookup": lookup}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (when("a.ok"), {"op": "truthy", "path": "a.ok"}),
        ("a.ok", {"op": "truthy", "path": "a.ok"}),
        (when("a.score") > 1, {"op": ">", "path": "a.score", "value": 1}),
    ],
    ids=["ref", "path-string", "condition"],
)
def test_condition_given_a_ref_a_path_or_a_condition_becomes_a_condition(given: Any, expected: dict[str, Any]) -> None:
    # Given a serial step with a declarative condition
    p = Pipeline("cond").step("a", goal="A").step("b", goal="B", depends_on="a", condition=given)
    # When it is normalised
    step = p.steps["b"]
    # Then it is a Condition with that data, and the step became CONDITIONAL
    assert isinstance(step.condition, Condition)
    assert step.condition.to_data() == expected
    assert step.execution_mode is ExecutionMode.CONDITIONAL
    assert p.problems() == []


def test_condition_given_a_callable_stays_a_callable() -> None:
    # Given a step whose condition is a Python function of the scope
    def is_good(scope: dict[str, Any]) -> bool:
        return True

    p = Pipeline("cond").step("a", goal="A").step("b", goal="B", depends_on="a", condition=is_good)
    # Then it is kept as is and the step is CONDITIONAL
    assert p.steps["b"].condition is is_good
    assert p.steps["b"].execution_mode is ExecutionMode.CONDITIONAL
    assert p.problems() == []


def test_condition_keeps_an_explicit_non_serial_mode() -> None:
    # Given a CONCURRENT step with a condition
    p = Pipeline("cond").step("a", goal="A")
    p.step("b", goal="B", depends_on="a", condition=when("a.ok"), execution_mode=ExecutionMode.CONCURRENT)
    # Then the mode is not overridden
    assert p.steps["b"].execution_mode is ExecutionMode.CONCURRENT


def test_condition_of_another_type_is_refused_when_the_step_is_built() -> None:
    with pytest.raises(TypeError, match="condition must be a Condition"):
        PipelineStep("b", goal="B", condition=42)


def test_constraints_given_as_one_string_become_a_list() -> None:
    p = Pipeline("c").step("a", goal="A", constraints="Be brief")
    assert p.steps["a"].constraints == ["Be brief"]


# -- plan() ---------------------------------------------------------------------


def test_plan_describes_an_agent_step_field_by_field() -> None:
    # Given an agent step using every declarative option
    p = Pipeline("plan", tools=[search_web])
    p.step("facts", goal="Find facts", output_schema=Facts)
    p.step(
        "report",
        goal="Write the report",
        description="The final write-up",
        depends_on={"facts": "data"},
        data_fields={"facts": ["score", "items"]},
        condition=(when("facts.score") > 3.5) & when("params.publish"),
        constraints=["Cite sources"],
        model="openai:gpt-4o-mini",
        tools_filter=["search_web", "send_message"],
        output_schema=Report,
        timeout=90,
        max_retries=4,
        retry_delay=0.5,
        retry_backoff=3.0,
        retry_max_delay=20.0,
        retry_jitter=0.2,
        required=False,
        final=True,
    )
    # When it is planned
    spec = p.plan().step("report")
    # Then the StepSpec carries each of them as plain data
    assert spec == StepSpec(
        name="report",
        kind=StepKind.AGENT,
        deps={"facts": DependencyType.DATA},
        mode=ExecutionMode.CONDITIONAL,
        goal="Write the report",
        description="The final write-up",
        constraints=["Cite sources"],
        model="openai:gpt-4o-mini",
        tools=["search_web"],
        tools_filter=["search_web", "send_message"],
        output_schema=f"{__name__}:Report",
        timeout=90,
        retry=RetrySpec(max_retries=4, delay=0.5, backoff=3.0, max_delay=20.0, jitter=0.2),
        condition={"op": "and", "args": [
            {"op": ">", "path": "facts.score", "value": 3.5},
            {"op": "truthy", "path": "params.publish"},
        ]},
        condition_is_callable=False,
        data_fields={"facts": ["score", "items"]},
        required=False,
        final=True,
    )


def test_plan_describes_function_tagent_and_parallel_merge_steps() -> None:
    # Given a function step, a tagent step, a parallel-merge step with a merge and a callable-condition step
    p = Pipeline("plan", "Kinds of steps", global_constraints=["No PII"], shared_context={"k": 1},
                 model="m", max_concurrent_steps=3, fail_fast=True, triggers=["t"], capabilities=["c"])
    p.step("load", fn=fetch)
    p.step("think", goal="Plan the work", runner="tagent", depends_on="load")
    p.step("each", goal="Handle one", depends_on="load", execution_mode="parallel_merge",
           over=("x", "y"), merge=lambda items: items)
    p.step("maybe", goal="Perhaps", depends_on="each", condition=lambda scope: True)
    # When it is planned
    plan = p.plan()
    # Then each kind is described, with the function referenced as module:qualname
    assert plan.step("load").kind is StepKind.FUNCTION
    assert plan.step("load").function == f"{__name__}:fetch"
    assert plan.step("load").goal is None
    assert plan.step("think").kind is StepKind.TAGENT
    assert plan.step("think").runner == "tagent"
    assert plan.step("each").mode is ExecutionMode.PARALLEL_MERGE
    assert plan.step("each").over == ["x", "y"]
    assert plan.step("each").has_merge is True
    assert plan.step("maybe").condition is None
    assert plan.step("maybe").condition_is_callable is True
    assert plan.step("maybe").mode is ExecutionMode.CONDITIONAL
    # And the pipeline-level settings
    assert (plan.name, plan.description, plan.global_constraints, plan.shared_context) == (
        "plan", "Kinds of steps", ["No PII"], {"k": 1})
    assert (plan.model, plan.max_concurrent_steps, plan.fail_fast, plan.triggers, plan.capabilities) == (
        "m", 3, True, ["t"], ["c"])
    assert [s.name for s in plan.steps] == ["load", "think", "each", "maybe"]


def test_plan_refers_to_a_nested_schema_by_its_qualified_name() -> None:
    p = Pipeline("nested").step("a", goal="A", output_schema=Report.Section)
    assert p.plan().step("a").output_schema == f"{__name__}:Report.Section"


def test_plan_of_an_invalid_pipeline_raises_with_every_problem() -> None:
    p = Pipeline("bad").step("a", goal="A", depends_on="ghost").step("b")
    with pytest.raises(PipelineValidationError) as caught:
        p.plan()
    assert caught.value.problems == [
        "step 'a': depends on unknown step 'ghost'",
        "step 'b': needs a goal= (agent step) or fn= (function step)",
    ]


def test_tools_for_is_narrowed_by_tools_filter() -> None:
    # Given pipeline tools, a step tool, and steps with and without a filter
    def summarise(text: str) -> str:
        return text

    def translate(text: str) -> str:
        return text

    p = Pipeline("tools", tools=[search_web, summarise])
    p.step("all", goal="A", tools=[translate])
    p.step("some", goal="B", tools=[translate], tools_filter=["translate", "search_web", "send_message"])
    p.step("none", goal="C", tools_filter=[])
    # Then an unfiltered step sees every tool, a filtered one only the named ones
    assert p.tools_for("all") == {"search_web": search_web, "summarise": summarise, "translate": translate}
    assert p.tools_for("some") == {"search_web": search_web, "translate": translate}
    assert p.tools_for("none") == {}
    assert p.problems() == []


# -- validation: one problem at a time ----------------------------------------------


def _pm(**options: Any) -> Pipeline:
    return Pipeline("p").step("src", goal="S", output_schema=Facts).step(
        "each", goal="E", depends_on="src", execution_mode=ExecutionMode.PARALLEL_MERGE, **options)


def _data(fields: Any) -> Pipeline:
    return Pipeline("p").step("src", goal="S", output_schema=Facts).step(
        "use", goal="U", depends_on={"src": DependencyType.DATA}, data_fields={"src": fields})


SINGLE_PROBLEMS: list[tuple[str, Callable[[], Pipeline], str]] = [
    ("duplicate",
     lambda: Pipeline("p").step("a", goal="A").step("a", goal="B").step("a", goal="C"),
     "duplicate step name 'a': each step needs a unique name"),
    ("unknown-dependency",
     lambda: Pipeline("p").step("a", goal="A", depends_on=["ghost"]),
     "step 'a': depends on unknown step 'ghost'"),
    ("self-dependency",
     lambda: Pipeline("p").step("a", goal="A", depends_on="a"),
     "step 'a': depends on itself"),
    ("tools-filter-string",
     lambda: Pipeline("p").step("a", goal="A", tools_filter="send_message"),
     "step 'a': tools_filter must be a list of tool names, got 'send_message'"),
    ("schema-dict",
     lambda: Pipeline("p").step("a", goal="A", output_schema={"score": float}),
     "step 'a': output_schema must be a pydantic BaseModel subclass, got {'score': <class 'float'>}"),
    ("schema-dataclass",
     lambda: Pipeline("p").step("a", goal="A", output_schema=NotAModel),
     f"step 'a': output_schema must be a pydantic BaseModel subclass, got {NotAModel!r}"),
    ("schema-instance",
     lambda: Pipeline("p").step("a", goal="A", output_schema=Facts(score=1, items=[])),
     "step 'a': output_schema must be a pydantic BaseModel subclass, got Facts(score=1.0, items=[])"),
    ("data-field-missing",
     lambda: _data(["score", "rating"]),
     "step 'use': DATA dependency 'src' has no field 'rating' in its output_schema Facts"),
    ("data-without-fields",
     lambda: Pipeline("p").step("src", goal="S").step("use", goal="U", depends_on={"src": "data"}),
     "step 'use': DATA dependency 'src' needs data_fields={'src': [...]} naming the fields it requires"),
    ("data-fields-not-a-list",
     lambda: _data("score"),
     "step 'use': data_fields['src'] must be a list of field names, got 'score'"),
    ("data-fields-on-hard-dependency",
     lambda: Pipeline("p").step("src", goal="S").step("use", goal="U", depends_on="src", data_fields={"src": ["x"]}),
     "step 'use': data_fields names 'src', which is not a DATA dependency of this step"),
    ("condition-unknown-step",
     lambda: Pipeline("p").step("a", goal="A").step("b", goal="B", depends_on="a", condition=when("x.y") > 1),
     "step 'b': condition refers to unknown step 'x'"),
    ("condition-not-a-dependency",
     lambda: Pipeline("p").step("a", goal="A").step("b", goal="B", condition=when("a.y") > 1),
     "step 'b': condition refers to 'a', which is not among its depends_on"),
    ("conditional-without-condition",
     lambda: Pipeline("p").step("a", goal="A", execution_mode="conditional"),
     "step 'a': execution_mode CONDITIONAL needs a condition= (when(...) or a function) or constraints= "
     "(the step's model then judges them before the step runs)"),
    ("parallel-merge-without-over",
     lambda: _pm(),
     "step 'each': PARALLEL_MERGE needs over= (a list, or a path like 'params.items' or 'dep.field')"),
    ("over-bad-root",
     lambda: _pm(over="elsewhere.items"),
     "step 'each': over='elsewhere.items' must start with 'params', 'shared' or one of its dependencies"),
    ("over-wrong-type",
     lambda: _pm(over=3),
     "step 'each': over= must be a list or a path string, got int"),
    ("over-on-serial-step",
     lambda: Pipeline("p").step("a", goal="A", over=[1, 2]),
     "step 'a': over= and merge= only apply to execution_mode PARALLEL_MERGE"),
    ("timeout-zero",
     lambda: Pipeline("p").step("a", goal="A", timeout=0),
     "step 'a': timeout must be positive seconds, got 0"),
    ("timeout-string",
     lambda: Pipeline("p").step("a", goal="A", timeout="10"),
     "step 'a': timeout must be positive seconds, got '10'"),
    ("timeout-nan",
     lambda: Pipeline("p").step("a", goal="A", timeout=float("nan")),
     "step 'a': timeout must be positive seconds, got nan"),
    ("isolated-not-bool",
     lambda: Pipeline("p").step("a", goal="A", isolated="yes"),
     "step 'a': isolated must be True or False, got 'yes'"),
    ("max-retries-negative",
     lambda: Pipeline("p").step("a", goal="A", max_retries=-1),
     "step 'a': max_retries must be an integer >= 0, got -1"),
    ("max-retries-float",
     lambda: Pipeline("p").step("a", goal="A", max_retries=1.5),
     "step 'a': max_retries must be an integer >= 0, got 1.5"),
    ("max-retries-bool",
     lambda: Pipeline("p").step("a", goal="A", max_retries=True),
     "step 'a': max_retries must be an integer >= 0, got True"),
    ("neither-goal-nor-fn",
     lambda: Pipeline("p").step("a"),
     "step 'a': needs a goal= (agent step) or fn= (function step)"),
    ("both-goal-and-fn",
     lambda: Pipeline("p").step("a", goal="A", fn=fetch),
     "step 'a': has both goal= and fn=; a step is either an agent or a function"),
    ("fn-not-callable",
     lambda: Pipeline("p").step("a", fn="fetch"),
     "step 'a': fn= must be callable, got str"),
    ("goal-not-a-string",
     lambda: Pipeline("p").step("a", goal=["A"]),
     "step 'a': goal= must be a string, got list"),
    ("runner-unknown",
     lambda: Pipeline("p").step("a", goal="A", runner="shell"),
     "step 'a': runner must be 'function', 'agent' or 'tagent', got 'shell'"),
    ("runner-contradicts-fn",
     lambda: Pipeline("p").step("a", fn=fetch, runner="tagent"),
     "step 'a': runner='tagent' but the step has fn=; runner 'function' needs fn=, 'agent' and 'tagent' take no fn="),
    ("runner-function-without-fn",
     lambda: Pipeline("p").step("a", goal="A", runner="function"),
     "step 'a': runner='function' but the step has no fn=; runner 'function' needs fn=, 'agent' and 'tagent' take no fn="),
    ("two-finals",
     lambda: Pipeline("p").step("a", goal="A", final=True).step("b", goal="B", final=True),
     "only one step may be final=True, got a, b"),
    ("no-steps",
     lambda: Pipeline("p"),
     "pipeline has no steps"),
    ("max-concurrent-zero",
     lambda: Pipeline("p", max_concurrent_steps=0).step("a", goal="A"),
     "max_concurrent_steps must be a positive integer, got 0"),
    ("pipeline-name",
     lambda: Pipeline("my pipeline").step("a", goal="A"),
     "pipeline name 'my pipeline' must start with a letter or _ and use only letters, digits, _ and -"),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in SINGLE_PROBLEMS], ids=[c[0] for c in SINGLE_PROBLEMS])
def test_each_problem_is_reported_in_one_precise_line(build: Callable[[], Pipeline], expected: str) -> None:
    # Given a pipeline with exactly one thing wrong
    p = build()
    # When it is validated
    with pytest.raises(PipelineValidationError) as caught:
        p.validate()
    # Then that one problem is reported, word for word, by problems() and by the error
    assert p.problems() == [expected]
    assert caught.value.problems == [expected]
    assert caught.value.pipeline == p.name


RETRY_SETTINGS = [
    {"retry_delay": -1},
    {"retry_backoff": 0.5},
    {"retry_max_delay": -0.1},
    {"retry_jitter": 1.5},
    {"retry_delay": None},
    {"retry_backoff": float("inf")},
]


@pytest.mark.parametrize("settings", RETRY_SETTINGS, ids=[next(iter(s)) + "=" + repr(next(iter(s.values()))) for s in RETRY_SETTINGS])
def test_bad_retry_settings_are_reported_with_their_values(settings: dict[str, Any]) -> None:
    # Given a step with one bad retry setting
    p = Pipeline("p").step("a", goal="A", **settings)
    # Then one problem names the rule and shows the values
    problem = only_problem(p)
    assert problem.startswith("step 'a': retry settings need delay >= 0, backoff >= 1, max_delay >= 0 and 0 <= jitter <= 1")
    (key, value), = settings.items()
    assert f"{key.removeprefix('retry_')}={value!r}" in problem


@pytest.mark.parametrize("name", ["1st", "has space", "dotted.name", "trailing\n", "", "shared", "params"])
def test_an_invalid_step_name_is_reported(name: str) -> None:
    p = Pipeline("p").step(name, goal="A")
    assert only_problem(p) == (
        f"step {name!r}: name must start with a letter or _, use letters, digits, _ and -, and not be 'shared' or 'params'")


@pytest.mark.parametrize("name", ["a", "_private", "fetch-data", "Step_2"])
def test_valid_step_names_are_accepted(name: str) -> None:
    assert Pipeline("p").step(name, goal="A").problems() == []


# -- validation: what is allowed ------------------------------------------------------


def test_builtin_broker_tools_need_no_registration() -> None:
    # Given a step filtering down to every built-in broker tool and no registered tool
    p = Pipeline("p").step("a", goal="A", tools_filter=sorted(BUILTIN_TOOLS))
    # Then nothing is wrong
    assert "send_message" in BUILTIN_TOOLS
    assert p.problems() == []


def test_step_tools_count_for_tools_filter() -> None:
    p = Pipeline("p").step("a", goal="A", tools=[search_web], tools_filter=["search_web"])
    assert p.problems() == []


def test_a_data_dependency_may_name_a_nested_field_of_a_schema_field() -> None:
    assert _data(["score", "items.0"]).problems() == []


def test_a_data_dependency_on_a_step_without_schema_is_not_checked_field_by_field() -> None:
    p = Pipeline("p").step("src", goal="S").step("use", goal="U", depends_on={"src": "data"}, data_fields={"src": ["any"]})
    assert p.problems() == []


def test_conditions_on_shared_and_params_need_no_dependency() -> None:
    p = Pipeline("p").step("a", goal="A", condition=(when("shared.flag") == True) | when("params.force"))  # noqa: E712
    assert p.problems() == []


@pytest.mark.parametrize("over", [[1, 2, 3], ("x",), "params.items", "shared.items", "src.items"])
def test_parallel_merge_over_a_list_or_a_rooted_path(over: Any) -> None:
    assert _pm(over=over).problems() == []


# -- validation: cycles ------------------------------------------------------------------------


def test_a_cycle_is_reported_as_its_path() -> None:
    # Given a -> b -> c -> a (each arrow: the right step depends on the left one)
    p = Pipeline("p")
    p.step("a", goal="A", depends_on="c").step("b", goal="B", depends_on="a").step("c", goal="C", depends_on="b")
    # Then one problem names the cycle, starting and ending at the same step
    assert p.problems() == ["dependency cycle: a -> b -> c -> a"]


def test_two_separate_cycles_are_two_problems() -> None:
    # Given two disjoint cycles and a healthy step between them
    p = Pipeline("p")
    p.step("a", goal="A", depends_on="b").step("b", goal="B", depends_on="a")
    p.step("ok", goal="OK")
    p.step("x", goal="X", depends_on="y").step("y", goal="Y", depends_on=["x", "ok"])
    # Then each cycle is reported once
    assert p.problems() == ["dependency cycle: a -> b -> a", "dependency cycle: x -> y -> x"]


def test_a_long_chain_validates_without_hitting_the_recursion_limit() -> None:
    # Given 3000 steps, each depending on the next one, and the last closing a cycle
    n = 3000
    p = Pipeline("long")
    for i in range(n):
        p.step(f"s{i}", goal="G", depends_on=f"s{i + 1}" if i < n - 1 else [])
    assert p.problems() == []
    # When the last step depends on the first
    p.steps[f"s{n - 1}"].depends_on = {"s0": DependencyType.HARD}
    # Then the whole cycle is one problem
    (problem,) = p.problems()
    assert problem.startswith("dependency cycle: s0 -> s2999 -> s2998 -> ")
    assert problem.endswith(" -> s1 -> s0")


# -- validation: all problems at once -------------------------------------------------


def test_every_problem_of_a_pipeline_is_reported_together() -> None:
    # Given a pipeline with many things wrong at once
    p = Pipeline("many", max_concurrent_steps=0)
    p.step("fetch", goal="Fetch", output_schema=Facts)
    p.step("fetch", goal="Fetch again")
    p.step("loop_a", goal="A", depends_on="loop_b")
    p.step("loop_b", goal="B", depends_on="loop_a")
    p.step("use", goal="Use", depends_on={"fetch": "data", "ghost": "hard"}, data_fields={"fetch": ["rating"]},
           tools_filter=["browse"], timeout=-5, condition=when("other.x") > 1)
    p.step("each", fn=fetch, execution_mode="parallel_merge", max_retries=-1)
    # When it is validated
    with pytest.raises(PipelineValidationError) as caught:
        p.validate()
    # Then every problem is listed, in a stable order
    expected = [
        "duplicate step name 'fetch': each step needs a unique name",
        "max_concurrent_steps must be a positive integer, got 0",
        "step 'use': depends on unknown step 'ghost'",
        "step 'use': DATA dependency 'fetch' has no field 'rating' in its output_schema Facts",
        "step 'use': condition refers to unknown step 'other'",
        "step 'use': timeout must be positive seconds, got -5",
        "step 'each': PARALLEL_MERGE needs over= (a list, or a path like 'params.items' or 'dep.field')",
        "step 'each': max_retries must be an integer >= 0, got -1",
        "dependency cycle: loop_a -> loop_b -> loop_a",
    ]
    assert caught.value.problems == expected
    assert p.problems() == expected
    # And the message counts them and lists each on its own line
    message = str(caught.value)
    assert message.startswith(f"pipeline 'many' is invalid ({len(expected)} problem(s)):")
    assert all(f"\n  - {line}" in message for line in expected)


def test_a_valid_pipeline_has_no_problems_and_validate_returns_it() -> None:
    p = Pipeline("ok").step("a", goal="A", output_schema=Facts).step(
        "b", goal="B", depends_on={"a": "data"}, data_fields={"a": ["score"]}, condition=when("a.score") >= 2)
    assert p.problems() == []
    assert p.validate() is p


def test_condition_objects_compare_by_data_in_plans() -> None:
    # Given two pipelines built the same way
    def build() -> Pipeline:
        return Pipeline("p").step("a", goal="A").step("b", goal="B", depends_on="a", condition=when("a.n") > 1)

    # Then their plans are equal even though the Condition objects are distinct
    one, two = build(), build()
    assert one.steps["b"].condition is not two.steps["b"].condition
    assert isinstance(one.steps["b"].condition, Check)
    assert one.plan() == two.plan()


@pytest.mark.parametrize(("pipeline", "expected"), [
    (lambda: Pipeline("p", tools=[search_web]).step("a", goal="A", tools_filter=["search_web", "browse"]),
     "pipeline 'p': step 'a': tools_filter names 'browse', which no tool provides (known: search_web); "
     "the step runs without them"),
    (lambda: Pipeline("p").step("a", goal="A", tools_filter=["web_search", "price_comparison"]),
     "pipeline 'p': step 'a': tools_filter names 'web_search', 'price_comparison', which no tool provides "
     "(known: none); the step runs without them"),
])
def test_a_tools_filter_naming_tools_nobody_provides_is_a_warning_that_names_them(
        pipeline: Callable[[], Pipeline], expected: str) -> None:
    """The design documents filter on tool names (`tools_filter=["web_search", "price_comparison"]`) that a
    deployment may not have: the pipeline is valid, and the warning names the missing tools."""
    # Given a step whose tools_filter names tools no tool provides
    p = pipeline()
    # When it is validated
    with pytest.warns(PipelineWarning) as caught:
        p.validate()
    # Then it is valid, with one warning naming exactly the missing tools
    assert p.problems() == []
    assert [str(w.message) for w in caught] == [expected]


def test_the_design_documents_data_shapes_are_the_pipeline_s_own() -> None:
    """pipeline-architecture.md, "1. Pipeline Definition": the dataclass form of PipelineStep with id and
    retry_count, `add_step`, and `pipeline.steps` as the list of steps."""
    # Given steps in the documents' dataclass form, added with add_step
    p = Pipeline("shapes", "the documents' shapes")
    p.add_step(PipelineStep(id="step_1", name="search", goal="Search", retry_count=0, max_retries=3))
    p.add_step(PipelineStep(name="report", goal="Report", depends_on=["search"]))
    # Then pipeline.steps is the list of those steps, in order, also found by name
    assert isinstance(p.steps, list)
    assert [(s.id, s.name, s.retry_count, s.max_retries) for s in p.steps] == [
        ("step_1", "search", 0, 3), ("step_2", "report", 0, 2)]
    assert p.steps[1] is p.steps["report"] and "search" in p.steps and p.steps.get("ghost") is None
    assert len(p.plan().steps) == 2


def test_pipeline_of_a_pipeline_is_a_copy_that_does_not_share_steps() -> None:
    """pipeline-architecture.md, Example 1 runs `run_agent(Pipeline(company_research))`: a copy."""
    # Given a pipeline
    original = Pipeline("orig", "desc", model="test", global_constraints=["be brief"]).step("a", goal="A")
    # When it is copied and the copy is changed
    copy = Pipeline(original)
    copy.step("b", goal="B", depends_on=["a"])
    copy.steps["a"].constraints.append("only in the copy")
    copy.steps["a"].tools.append(search_web)
    copy.global_constraints.append("copy only")
    # Then the copy has the original's definition, and the original is unchanged
    assert (copy.name, copy.description, copy.model) == ("orig", "desc", "test")
    assert [s.name for s in copy.steps] == ["a", "b"]
    assert [s.name for s in original.steps] == ["a"]
    assert original.steps["a"].constraints == [] and original.global_constraints == ["be brief"]
    assert original.steps["a"].tools == [] and copy.steps["a"] is not original.steps["a"]
    assert copy.plan().steps[0].goal == "A"
