"""`Pipeline.load(FILE[:NAME])` and param defaults (`Pipeline(params={...})`), issue 14, point 5.

`Pipeline.load` reads a pipeline file in this process by the same rules the daemon's workers use
for `tagent submit` (tagent_client/define/loading.py); every failure is one line naming the file.
Declared param defaults fill what a run is submitted without, in-process and through the daemon.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess

from tagent_client import Pipeline, run_agent
from tagent_client.errors import PipelineLoadError, PipelineValidationError

TWO = """
from tagent_client import Pipeline

research = Pipeline("research")
research.step("facts", fn=lambda ctx: {"facts": 3})

reporter = Pipeline("daily_report")
reporter.step("report", fn=lambda ctx: "report")
"""

DEFAULTS = """
from tagent_client import Pipeline

greeter = Pipeline("greeter", params={"name": "world", "times": 2})

@greeter.task(final=True)
def greet(ctx, name: str, times: int) -> dict:
    return {"text": " ".join([f"hello {name}"] * times), "params": dict(ctx.params)}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load_error(spec: str | Path) -> str:
    with pytest.raises(PipelineLoadError) as caught:
        Pipeline.load(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_load_returns_the_only_pipeline_of_a_file_ready_to_run(tmp_path: Path) -> None:
    # Given a file with one pipeline
    path = write(tmp_path, "one.py", "from tagent_client import Pipeline\np = Pipeline('one')\np.step('a', fn=lambda ctx: 41 + 1)\n")
    # When it is loaded (as a str and as a Path)
    pipeline = Pipeline.load(str(path))
    # Then it is that pipeline, and it runs
    assert isinstance(pipeline, Pipeline) and pipeline.name == "one"
    assert Pipeline.load(path).name == "one"
    assert run_agent(pipeline).step_outputs == {"a": 42}


def test_load_picks_one_of_several_by_variable_or_pipeline_name(tmp_path: Path) -> None:
    # Given a file with two pipelines
    path = write(tmp_path, "two.py", TWO)
    # When one is named by its variable, or by its .name
    # Then that one is returned
    assert Pipeline.load(f"{path}:reporter").name == "daily_report"
    assert Pipeline.load(f"{path}:daily_report").name == "daily_report"
    assert Pipeline.load(f"{path}:research").name == "research"


def test_load_of_a_pipeline_object_returns_it() -> None:
    pipeline = Pipeline("given").step("a", fn=lambda ctx: 1)
    assert Pipeline.load(pipeline) is pipeline


def test_load_errors_are_one_line_naming_the_file_and_what_to_do(tmp_path: Path) -> None:
    # Given files that cannot give one pipeline
    two = write(tmp_path, "two.py", TWO)
    none = write(tmp_path, "none.py", "x = 1\n")
    broken = write(tmp_path, "broken.py", "from tagent_client import Pipeline\n\np = Pipeline('x'\nq = 1 +\n")
    raising = write(tmp_path, "raising.py", "import os\n\nos.environ['NO_SUCH_VARIABLE_HERE']\n")
    # When each is loaded, Then the error says where and why
    assert load_error(tmp_path / "missing.py") == f"{tmp_path / 'missing.py'}: no such pipeline file"
    assert load_error(tmp_path) == f"{tmp_path}: is a directory, not a pipeline file"
    several = load_error(two)
    assert several.startswith(f"{two}: 2 pipelines found (research, reporter ('daily_report'))")
    assert f"pick one with FILE:NAME, e.g. {two}:research" in several
    assert load_error(f"{two}:nope") == f"{two}: no pipeline named 'nope' (found: research, reporter ('daily_report'))"
    assert load_error(none) == f"{none}: no Pipeline found at module level"
    assert load_error(broken).startswith(f"{broken}:3: syntax error:")
    assert load_error(raising) == f"{raising}:3: KeyError: 'NO_SUCH_VARIABLE_HERE'"


def test_load_reports_every_problem_of_an_invalid_definition(tmp_path: Path) -> None:
    # Given a file whose pipeline depends on a step it does not have
    path = write(tmp_path, "invalid.py", "from tagent_client import Pipeline\np = Pipeline('bad')\n"
                                          "p.step('a', fn=lambda ctx: 1, depends_on=['ghost'])\n")
    # When it is loaded, Then the validation error names the problem
    with pytest.raises(PipelineValidationError) as caught:
        Pipeline.load(path)
    assert caught.value.pipeline == "bad" and any("ghost" in p for p in caught.value.problems)


def test_load_reads_a_pipeline_document(tmp_path: Path) -> None:
    # Given a pipeline exported as TOML
    pipeline = Pipeline("documented", params={"company": "Acme"}).step("search", goal="Find facts about the company")
    path = tmp_path / "documented.toml"
    path.write_text(pipeline.to_toml())
    # When it is loaded, Then it is the same pipeline, its param defaults included
    loaded = Pipeline.load(path)
    assert loaded.name == "documented" and loaded.steps.names() == ["search"]
    assert loaded.param_defaults == {"company": "Acme"}


def test_declared_defaults_fill_the_params_a_run_is_not_given(tmp_path: Path) -> None:
    # Given a pipeline declaring its params with defaults
    greeter = Pipeline.load(write(tmp_path, "greeter.py", DEFAULTS))
    assert greeter.params == ["name", "times"] and greeter.problems() == []
    # When it runs without params, and with one of them
    plain = run_agent(greeter)
    given = run_agent(greeter, params={"name": "Ana"})
    # Then the defaults fill the function parameters and ctx.params; a given param wins
    assert plain.final_output == {"text": "hello world hello world", "params": {"name": "world", "times": 2}}
    assert given.final_output == {"text": "hello Ana hello Ana", "params": {"name": "Ana", "times": 2}}
    assert greeter.problems(params={"name": "x"}) == []  # `times` has a default: nothing is missing


def test_a_default_that_is_not_plain_data_is_a_problem() -> None:
    # Given a default no run's params could carry
    pipeline = Pipeline("odd", params={"when": object()}).step("a", fn=lambda ctx: 1)
    # Then validation says which param and why
    (problem,) = pipeline.problems()
    assert problem.startswith("default of param 'when' must be plain data")


@pytest.mark.timeout(90)
def test_the_daemon_fills_declared_defaults_and_a_submit_param_wins(make_daemon: Callable[..., DaemonProcess],
                                                                     tmp_path: Path) -> None:
    # Given a daemon and the pipeline declaring defaults
    daemon = make_daemon().start()
    path = write(tmp_path, "greeter.py", DEFAULTS)
    with daemon.client() as client:
        # When it is submitted without params, and with one
        plain = client.wait(client.submit(path).id, timeout=30)
        given = client.wait(client.submit(path, params={"times": 1}).id, timeout=30)
    # Then the run got the defaults, and the given param over its default
    assert plain.final_output == {"text": "hello world hello world", "params": {"name": "world", "times": 2}}
    assert given.final_output == {"text": "hello world", "params": {"name": "world", "times": 1}}
