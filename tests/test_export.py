"""Pipelines as JSON and TOML documents: round trips, references, malformed input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tagent_client import DependencyType, ExecutionMode, Pipeline, PipelineValidationError, when
from tagent_client.define.export import (
    from_json,
    from_toml,
    load_file,
    pipeline_from_dict,
    pipeline_to_dict,
    plan_from_dict,
    to_json,
    to_toml,
)
from tagent_client.define.plan import PLAN_FORMAT, StepKind
from tagent_client.define.validation import BUILTIN_TOOLS
from tagent_client.errors import PipelineLoadError

pytestmark = pytest.mark.timeout(30)

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"


class Facts(BaseModel):
    score: float
    sources: list[str]


class Report(BaseModel):
    class Section(BaseModel):
        title: str
        body: str

    title: str
    sections: list[Section]


def double(x: int) -> int:
    return 2 * x


def rich_pipeline() -> Pipeline:
    """A goal-only pipeline using every declarative option."""
    p = Pipeline(
        "research",
        "Find facts about a topic and write them up",
        global_constraints=["Cite every source", "No speculation"],
        shared_context={"audience": "engineers", "limits": {"words": 800, "ratio": 0.5}, "tags": ["a", 1, True]},
        model="openai:gpt-4o-mini",
        max_concurrent_steps=4,
        fail_fast=True,
        triggers=["cron:0 6 * * *", "file:inbox/*.md"],
        capabilities=["web"],
    )
    p.step("plan-it", goal="Plan the research", runner="tagent", timeout=30)
    p.step(
        "search",
        goal="Search the web for facts about {params.topic}.\nPrefer primary sources — «quoted» ones.",
        description="Collects facts",
        depends_on={"plan-it": DependencyType.SOFT},
        constraints=["At most 10 sources"],
        model="anthropic:claude-haiku",
        tools_filter=["send_message", "read_space"],
        output_schema=Facts,
        timeout=120.5,
        max_retries=5,
        retry_delay=0.25,
        retry_backoff=1.5,
        retry_max_delay=30,
        retry_jitter=0,
        execution_mode=ExecutionMode.CONCURRENT,
    )
    p.step("angles", goal="Look at it from one angle", execution_mode="parallel_merge",
           over=["cost", "risk", {"name": "impact", "weight": 2}], required=False, isolated=True)
    p.step("per_source", goal="Summarise one source", depends_on="search",
           execution_mode="parallel_merge", over="search.sources")
    p.step(
        "report",
        goal="Write the report",
        depends_on={"search": "data", "angles": "soft", "per_source": "validation"},
        data_fields={"search": ["score", "sources"]},
        condition=((when("search.score") >= 3.5) & ~when("search.sources").contains("spam.example"))
        | when("params.force").is_in([True, "yes"]) | when("shared.audience").exists(),
        tools_filter=[],
        output_schema=Report,
        final=True,
    )
    p.step("notify", goal="Tell the team", depends_on="report", output_schema=Report.Section,
           condition=when("report.title"))
    return p


# -- round trips ------------------------------------------------------------------


def test_json_round_trip_keeps_the_plan_and_the_schema_classes() -> None:
    # Given a rich goal-only pipeline
    p = rich_pipeline()
    # When it is written as JSON and read back
    back = from_json(to_json(p))
    # Then it plans the same, and schema references resolved to the very same classes
    assert back.plan() == p.plan()
    assert back.steps["search"].output_schema is Facts
    assert back.steps["report"].output_schema is Report
    assert back.steps["notify"].output_schema is Report.Section


def test_isolated_is_written_to_json_and_toml_and_read_back() -> None:
    # Given a pipeline with one isolated=True step among ordinary ones
    p = rich_pipeline()
    # When it is written as JSON and as TOML
    steps = {s["name"]: s for s in json.loads(to_json(p))["steps"]}
    toml_steps = {s["name"]: s for s in tomllib.loads(to_toml(p))["steps"]}
    # Then both documents say which step must run alone, and reading them back keeps it
    assert steps["angles"]["isolated"] is True and steps["report"]["isolated"] is False
    assert toml_steps["angles"]["isolated"] is True and toml_steps["report"]["isolated"] is False
    assert from_json(to_json(p)).steps["angles"].isolated is True
    assert from_toml(to_toml(p)).steps["angles"].isolated is True
    assert from_toml(to_toml(p)).steps["report"].isolated is False


def test_toml_round_trip_keeps_the_plan_and_the_schema_classes() -> None:
    p = rich_pipeline()
    back = from_toml(to_toml(p))
    assert back.plan() == p.plan()
    assert back.steps["report"].output_schema is Report
    assert back.steps["notify"].output_schema is Report.Section


def test_dict_round_trip_and_the_pipeline_methods_agree_with_the_module() -> None:
    # Given a rich pipeline
    p = rich_pipeline()
    # When the Pipeline methods are used
    as_dict, as_json, as_toml = p.to_dict(), p.to_json(), p.to_toml()
    # Then they give the module's output and read back to the same plan
    assert as_dict == pipeline_to_dict(p)
    assert as_json == to_json(p)
    assert as_toml == to_toml(p)
    for back in (Pipeline.from_dict(as_dict), Pipeline.from_json(as_json), Pipeline.from_toml(as_toml)):
        assert back.plan() == p.plan()


def test_the_document_is_the_plan_as_plain_data_with_a_format() -> None:
    # Given a rich pipeline
    p = rich_pipeline()
    # When it is turned into a dict
    data = pipeline_to_dict(p)
    # Then it is exactly the plan's builtins, starting with the format number
    assert data == msgspec.to_builtins(p.plan())
    assert next(iter(data)) == "format" and data["format"] == PLAN_FORMAT
    assert json.loads(to_json(p)) == data
    report = data["steps"][4]
    assert report["deps"] == {"search": "data", "angles": "soft", "per_source": "validation"}
    assert report["output_schema"] == f"{__name__}:Report"
    assert data["steps"][1]["retry"] == {"max_retries": 5, "delay": 0.25, "backoff": 1.5, "max_delay": 30, "jitter": 0}


def test_json_indent_is_configurable() -> None:
    p = Pipeline("tiny").step("a", goal="A")
    assert "\n" not in to_json(p, indent=None)
    assert to_json(p, indent=4).startswith('{\n    "format": 1,')


def test_toml_leaves_out_none_and_empty_defaults_but_keeps_an_empty_filter() -> None:
    # Given a pipeline with unset optional fields and an explicitly empty tools_filter
    p = Pipeline("tiny").step("a", goal="A").step("b", goal="B", tools_filter=[])
    # When it is written as TOML
    data = tomllib.loads(to_toml(p))
    # Then None values and empty default collections are absent, and [] meaning "no tools" stays
    assert "description" not in data and "model" not in data and "shared_context" not in data
    a, b = data["steps"]
    assert {"goal", "name", "kind"} <= set(a)
    assert not {"description", "timeout", "tools_filter", "deps", "constraints", "condition"} & set(a)
    assert b["tools_filter"] == []
    assert from_toml(to_toml(p)).plan() == p.plan()


def test_toml_refuses_a_null_inside_free_form_data() -> None:
    # Given a shared_context holding None, which TOML cannot write and leaving it out would change
    p = Pipeline("nulls", shared_context={"cfg": {"limit": None}}).step("a", goal="A")
    # When it is written as TOML / Then a one-line error says where, and JSON still works
    with pytest.raises(ValueError, match=r"^pipeline 'nulls' cannot be written as TOML: shared_context\.cfg\.limit is null"):
        to_toml(p)
    assert from_json(to_json(p)).plan() == p.plan()


def test_a_value_without_a_plain_form_is_refused_on_export() -> None:
    p = Pipeline("odd", shared_context={"when": object()}).step("a", goal="A")
    with pytest.raises(ValueError, match=r"^pipeline 'odd' cannot be exported: shared_context: "):
        pipeline_to_dict(p)


def test_a_goal_only_document_loads_without_the_defining_python(tmp_path: Path) -> None:
    # Given a goal-only pipeline without schemas, written to a file
    p = rich_pipeline()
    for step in p.steps.values():
        step.output_schema = None
    path = tmp_path / "research.toml"
    path.write_text(to_toml(p))
    # When a fresh interpreter that cannot import this test module loads it
    code = ("import sys; from tagent_client.define.export import load_file; "
            "p = load_file(sys.argv[1]); print(p.to_json(indent=None)); "
            "assert not [m for m in sys.modules if m.startswith('test_')]")
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR)}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=20)
    # Then it loads, and plans the same
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == pipeline_to_dict(p)


# -- references to Python ------------------------------------------------------------


def test_schemas_can_be_left_unresolved() -> None:
    # Given a document whose schema reference cannot be imported
    data = pipeline_to_dict(rich_pipeline())
    data["steps"][1]["output_schema"] = "no_such_module:Facts"
    # When it is read with resolve_schemas=False / Then no import is tried and schemas are unset
    back = pipeline_from_dict(data, resolve_schemas=False)
    assert all(step.output_schema is None for step in back.steps.values())


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("no_such_module:Facts", "cannot import output_schema 'no_such_module:Facts': ModuleNotFoundError"),
        (f"{__name__}:Missing", f"cannot import output_schema '{__name__}:Missing': AttributeError"),
        ("Facts", "output_schema 'Facts' is not a 'module:QualName' reference"),
        (f"{__name__}:make.<locals>.Inner", "was defined inside a function and cannot be imported"),
        (f"{__name__}:double", f"output_schema '{__name__}:double' is not a pydantic model"),
    ],
)
def test_an_unresolvable_schema_reference_names_the_step_and_the_reference(ref: str, expected: str) -> None:
    data = {"name": "p", "steps": [{"name": "a", "goal": "A", "output_schema": ref}]}
    with pytest.raises(PipelineLoadError) as caught:
        pipeline_from_dict(data)
    assert str(caught.value).startswith("pipeline data: steps[0] ('a'): ")
    assert expected in str(caught.value)


def test_a_function_step_is_exported_by_reference_and_refused_on_import_by_default() -> None:
    # Given a pipeline with a function step
    p = Pipeline("mixed").step("a", goal="A")
    p.task(double, name="twice", depends_on="a")
    # When it is exported
    data = pipeline_to_dict(p)
    # Then the step carries its function reference
    assert data["steps"][1]["kind"] == "function"
    assert data["steps"][1]["function"] == f"{__name__}:double"
    # And reading it back without resolve_functions says what is needed
    with pytest.raises(PipelineLoadError) as caught:
        from_json(to_json(p))
    assert str(caught.value) == (
        f"pipeline JSON: steps[1] ('twice'): is a function step ({__name__}:double); function steps need the Python "
        "file that defines the pipeline: load that file instead, or pass resolve_functions=True to import the function")


def test_a_function_step_is_imported_with_resolve_functions() -> None:
    p = Pipeline("mixed").step("a", goal="A")
    p.task(double, name="twice", depends_on="a")
    back = from_toml(to_toml(p), resolve_functions=True)
    assert back.steps["twice"].fn is double
    assert back.plan() == p.plan()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda p: p.tools.append(double), "steps[0] ('a'): uses the Python tools ['double']; tools need the Python file"),
        (lambda p: p.step("m", goal="M", execution_mode="parallel_merge", over=[1], merge=sum),
         "steps[1] ('m'): has a merge= function; Python functions need the Python file"),
        (lambda p: p.step("c", goal="C", condition=lambda scope: True),
         "steps[1] ('c'): has a callable condition; Python functions need the Python file"),
    ],
    ids=["tool", "merge", "callable-condition"],
)
def test_python_only_parts_are_refused_on_import(build: Any, expected: str) -> None:
    p = Pipeline("py").step("a", goal="A")
    build(p)
    with pytest.raises(PipelineLoadError, match=r"^pipeline JSON: " + expected.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        from_json(to_json(p), resolve_functions=True)


# -- malformed documents --------------------------------------------------------------


def _doc(**step: Any) -> dict[str, Any]:
    return {"format": 1, "name": "p", "steps": [{"name": "ok", "goal": "fine"}, {"name": "a", "goal": "A", **step}]}


MALFORMED: list[tuple[str, Any, str]] = [
    ("top-level-list", [1, 2], "expected a table of pipeline settings at the top, got list"),
    ("missing-name", {"steps": []}, "missing required key 'name'"),
    ("missing-steps", {"name": "p"}, "missing required key 'steps'"),
    ("name-wrong-type", {"name": 5, "steps": []}, "name: expected str, got int"),
    ("steps-wrong-type", {"name": "p", "steps": {"a": {}}}, "steps: expected array, got object"),
    ("step-wrong-type", {"name": "p", "steps": ["a"]}, "steps[0]: expected object, got str"),
    ("step-missing-name", {"name": "p", "steps": [{"goal": "A"}]}, "steps[0]: missing required key 'name'"),
    ("deps-as-list", _doc(deps=["ok"]), "steps[1].deps: expected object, got array"),
    ("unknown-dependency-type", _doc(deps={"ok": "strong"}),
     "steps[1].deps.ok: unknown dependency type 'strong'; expected one of 'hard', 'soft', 'data', 'validation'"),
    ("bad-kind", _doc(kind="robot"), "steps[1].kind: invalid enum value 'robot'; expected one of 'function', 'agent', 'tagent'"),
    ("bad-mode", _doc(mode="eventually"),
     "steps[1].mode: invalid enum value 'eventually'; expected one of 'serial', 'concurrent', 'conditional', 'parallel_merge'"),
    ("timeout-string", _doc(timeout="10s"), "steps[1].timeout: expected float | null, got str"),
    ("retry-wrong-type", _doc(retry={"max_retries": "3"}), "steps[1].retry.max_retries: expected int, got str"),
    ("tools-filter-string", _doc(tools_filter="send_message"), "steps[1].tools_filter: expected array | null, got str"),
    ("unknown-top-level-key", {"name": "p", "step": []}, "unknown key 'step'; did you mean 'steps'?"),
    ("unknown-step-key", _doc(depends_on=["ok"]), "steps[1]: unknown key 'depends_on'; expected one of: name, kind, deps"),
    ("unknown-retry-key", _doc(retry={"retries": 3}), "steps[1].retry: unknown key 'retries'; did you mean 'max_retries'?"),
    ("bad-condition", _doc(deps={"ok": "hard"}, condition={"op": "and", "args": [{"op": "~=", "path": "ok.x"}]}),
     "steps[1].condition.args[0]: unknown op '~='"),
    ("newer-format", {"format": PLAN_FORMAT + 1, "name": "p", "steps": []},
     f"format {PLAN_FORMAT + 1} is newer than this tagent_client reads (format {PLAN_FORMAT}); upgrade tagent_client"),
    ("format-not-a-number", {"format": "1", "name": "p", "steps": []}, "format: expected a positive integer, got '1'"),
    ("kind-without-function", _doc(kind="function"), "steps[1] ('a'): kind 'function' needs function = 'module:qualname'"),
    ("kind-contradicts-fields", _doc(kind="tagent"),
     "steps[1] ('a'): kind 'tagent' does not match the step, whose other keys make it 'agent'"),
]


@pytest.mark.parametrize(("data", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_document_gives_one_line_saying_where_and_what(data: Any, expected: str) -> None:
    # Given a malformed document / When it is read
    with pytest.raises(PipelineLoadError) as caught:
        pipeline_from_dict(data)
    # Then the error is one line: the source, the place, what is wrong
    message = str(caught.value)
    assert message.startswith(f"pipeline data: {expected}")
    assert "\n" not in message
    assert caught.value.code == "load_failed"


def test_plan_from_dict_checks_the_shape_without_importing_anything() -> None:
    # Given a document referring to modules that do not exist
    data = {"name": "p", "steps": [{"name": "a", "function": "nowhere:fn"}, {"name": "b", "goal": "B",
                                                                            "output_schema": "nowhere:Model"}]}
    # When only its plan is read / Then it is checked and returned, kinds filled in, nothing imported
    plan = plan_from_dict(data)
    assert [s.kind for s in plan.steps] == [StepKind.FUNCTION, StepKind.AGENT]
    assert plan.step("b").output_schema == "nowhere:Model"
    with pytest.raises(PipelineLoadError, match=r"^pipeline data: steps\[0\].deps: expected object"):
        plan_from_dict({"name": "p", "steps": [{"name": "a", "deps": 1}]})


def test_broken_json_and_toml_syntax_are_load_errors() -> None:
    with pytest.raises(PipelineLoadError, match=r"^pipeline JSON: not valid JSON: .*line 1 column"):
        from_json('{"name": "p", ')
    with pytest.raises(PipelineLoadError, match=r"^pipeline TOML: not valid TOML: .*line 2"):
        from_toml('name = "p"\nname = "q"\n')
    with pytest.raises(PipelineLoadError, match=r"^pipeline JSON: not valid JSON: duplicate key 'goal'"):
        from_json('{"name": "p", "steps": [{"name": "a", "goal": "A", "goal": "B"}]}')
    with pytest.raises(PipelineLoadError, match=r"^pipeline JSON: not valid JSON: NaN is not a JSON number"):
        from_json('{"name": "p", "steps": [{"name": "a", "goal": "A", "timeout": NaN}]}')


def test_a_well_formed_but_invalid_pipeline_reports_every_problem() -> None:
    # Given a document whose shape is right but whose pipeline is not
    text = """
        name = "broken"
        [[steps]]
        name = "a"
        goal = "A"
        deps = { ghost = "hard" }
        timeout = -1.0
        [[steps]]
        name = "a"
        goal = "again"
    """
    # When it is read / Then validation lists every problem
    with pytest.raises(PipelineValidationError) as caught:
        from_toml(text)
    assert caught.value.problems == [
        "duplicate step name 'a': each step needs a unique name",
        "step 'a': depends on unknown step 'ghost'",
        "step 'a': timeout must be positive seconds, got -1.0",
    ]


# -- files ---------------------------------------------------------------------------------


def test_load_file_chooses_the_format_by_suffix(tmp_path: Path) -> None:
    # Given the same pipeline written as .json and .TOML
    p = rich_pipeline()
    (tmp_path / "p.json").write_text(to_json(p), encoding="utf-8")
    (tmp_path / "p.TOML").write_text(to_toml(p), encoding="utf-8")
    # When each is loaded / Then both plan the same
    assert load_file(tmp_path / "p.json").plan() == p.plan()
    assert load_file(str(tmp_path / "p.TOML")).plan() == p.plan()


def test_load_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "p"\n[[steps]]\nname = "a"\ngoal = "A"\ndeps = ["b"]\n')
    with pytest.raises(PipelineLoadError, match=rf"^pipeline file {bad}: steps\[0\].deps: expected object, got array$"):
        load_file(bad)
    with pytest.raises(PipelineLoadError, match=r"unknown suffix '\.yaml'; expected \.json or \.toml$"):
        load_file(tmp_path / "p.yaml")
    with pytest.raises(PipelineLoadError, match=r"missing\.json: cannot read it: No such file or directory$"):
        load_file(tmp_path / "missing.json")


HAND_WRITTEN = '''
# A pipeline written by hand: `kind` may be left out, `retry` may be partial.
format = 1
name = "daily-digest"
description = "Summarise what changed today"
model = "openai:gpt-4o-mini"
global_constraints = ["Be brief"]
max_concurrent_steps = 2
triggers = ["cron:0 18 * * *"]

[shared_context]
team = "platform"

[[steps]]
name = "collect"
goal = "List today's merged changes"
timeout = 60
tools_filter = ["read_space"]
retry = { max_retries = 4, delay = 0.5 }

[[steps]]
name = "per_change"
goal = "Summarise one change"
deps = { collect = "hard" }
mode = "parallel_merge"
over = "collect.changes"

[[steps]]
name = "digest"
goal = "Write the digest for {shared.team}"
deps = { per_change = "hard", collect = "soft" }
condition = { op = ">", path = "collect.count", value = 0 }
constraints = ["Under 200 words"]
final = true
'''


def test_a_hand_written_toml_pipeline_loads_and_validates() -> None:
    # Given a TOML pipeline written by hand / When it is read
    p = from_toml(HAND_WRITTEN)
    # Then it is valid, and left-out keys took their defaults
    assert p.validate() is p
    plan = p.plan()
    assert (plan.name, plan.model, plan.max_concurrent_steps, plan.shared_context) == (
        "daily-digest", "openai:gpt-4o-mini", 2, {"team": "platform"})
    collect, per_change, digest = plan.steps
    assert {collect.kind, per_change.kind, digest.kind} == {StepKind.AGENT}
    assert collect.timeout == 60 and collect.tools_filter == ["read_space"]
    assert (collect.retry.max_retries, collect.retry.delay, collect.retry.backoff) == (4, 0.5, 2.0)
    assert per_change.mode is ExecutionMode.PARALLEL_MERGE and per_change.over == "collect.changes"
    assert digest.deps == {"per_change": DependencyType.HARD, "collect": DependencyType.SOFT}
    assert digest.mode is ExecutionMode.CONDITIONAL
    assert digest.condition == {"op": ">", "path": "collect.count", "value": 0}
    assert digest.final is True
    # And it survives its own round trip
    assert from_toml(to_toml(p)).plan() == plan


# -- property: any goal-only pipeline round-trips ---------------------------------------------

_names = st.from_regex(r"[a-z_][a-z0-9_\-]{0,11}", fullmatch=True).filter(lambda n: n not in ("shared", "params"))
_text = st.text(max_size=40)
_number = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
_scalar = st.one_of(st.booleans(), st.integers(-(2**53), 2**53), _number, _text)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)


@st.composite
def goal_only_pipelines(draw: st.DrawFn) -> Pipeline:
    names = draw(st.lists(_names, min_size=1, max_size=6, unique=True))
    p = Pipeline(draw(_names), draw(st.none() | _text), global_constraints=draw(st.lists(_text, max_size=2)),
                 shared_context=draw(st.dictionaries(_text, _json, max_size=3)), model=draw(st.none() | _text),
                 max_concurrent_steps=draw(st.integers(1, 64)), fail_fast=draw(st.booleans()))
    for i, name in enumerate(names):
        earlier = names[:i]
        deps = draw(st.dictionaries(st.sampled_from(earlier), st.sampled_from(["hard", "soft", "validation"]),
                                    max_size=3)) if earlier else {}
        condition = None
        if deps and draw(st.booleans()):
            condition = when(f"{draw(st.sampled_from(sorted(deps)))}.{draw(_names)}") > draw(_number)
        p.step(
            name,
            goal=draw(_text.filter(bool)),
            depends_on=deps,
            description=draw(st.none() | _text),
            constraints=draw(st.lists(_text, max_size=2)),
            timeout=draw(st.none() | _number),
            max_retries=draw(st.integers(0, 10)),
            retry_delay=draw(st.floats(0, 100)),
            retry_backoff=draw(st.floats(1, 10)),
            retry_jitter=draw(st.floats(0, 1)),
            tools_filter=draw(st.none() | st.lists(st.sampled_from(sorted(BUILTIN_TOOLS)), max_size=2)),
            model=draw(st.none() | _text),
            execution_mode=draw(st.sampled_from([ExecutionMode.SERIAL, ExecutionMode.CONCURRENT])),
            condition=condition,
            required=draw(st.booleans()),
            isolated=draw(st.booleans()),
        )
    return p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(goal_only_pipelines())
def test_any_goal_only_pipeline_round_trips_through_json_and_toml(p: Pipeline) -> None:
    assert from_json(to_json(p)).plan() == p.plan()
    assert from_toml(to_toml(p)).plan() == p.plan()
