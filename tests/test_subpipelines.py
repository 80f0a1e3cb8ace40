"""Sub-pipeline steps (`pipeline=`): child runs with real daemons, and the same pipelines in-process.

Every child step leaves a trace outside the daemon: a line "child_run_id step attempt company" appended
(O_APPEND, fsync) to the effects file named in the run's params, so a test counts how often each child's
steps really ran, whatever the daemon believes. A child step can be held at a gate (a file that does not
exist yet) so that a kill -9 or a cancel lands while the children run.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until

from tagent_client import Pipeline, run_agent
from tagent_client.core.children import child_run_id
from tagent_client.errors import PipelineLoadError, PipelineValidationError

pytestmark = pytest.mark.timeout(120)

# A child pipeline (research) and a parent (portfolio) that starts one child per company.
PORTFOLIO = '''\
import asyncio
import os

from tagent_client import Pipeline, RetryableError


def trace(ctx, what):
    fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.run_id} {what} {ctx.attempt} {ctx.params['company']}\\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def look(ctx, company, effects, gate=""):
    trace(ctx, "look")
    while gate and not os.path.exists(gate):
        await asyncio.sleep(0.05)  # ok-sleep: the step's own work is to wait for its gate
    if company.startswith("bad"):
        raise RetryableError(f"no data on {company}")
    return {"company": company, "score": len(company)}


def summarize(ctx, look):
    trace(ctx, "summarize")
    return {"company": look["company"], "rating": look["score"] * 10}


research = Pipeline("research", params=["company", "effects", "gate"])
research.step("look", fn=look, max_retries=0)
research.step("summarize", fn=summarize, depends_on=["look"], final=True)

portfolio = Pipeline("portfolio")
portfolio.step("companies", fn=lambda names: names)
portfolio.step("each", pipeline=research, over="companies", max_retries=RETRIES, retry_delay=0.05,
               params=lambda ctx, item: {"company": item, "effects": ctx.params["effects"],
                                         "gate": ctx.params.get("gate", "")})
'''


def write(directory: Path, name: str, source: str, **values: object) -> Path:
    for key, value in values.items():
        source = source.replace(key, repr(value))
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def effects(path: Path) -> list[tuple[str, str, int, str]]:
    if not path.exists():
        return []
    return [(r, s, int(a), c) for r, s, a, c in (line.split() for line in path.read_text().splitlines())]


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    return make_daemon(workers=2).start()


def submit(daemon: DaemonProcess, path: Path, **params: object) -> str:
    with daemon.client() as c:
        return c.submit(str(path), params=params).id


def test_a_child_run_per_item_gives_the_step_their_final_outputs_linked_both_ways(daemon: DaemonProcess,
                                                                                  tmp_path: Path) -> None:
    """Given a parent whose step runs the `research` pipeline once per company
    When it runs through the daemon and in-process
    Then the step's output is the children's final outputs in item order, equal in both; each child is a run of
    its own whose id comes from the parent, that names its parent, and the parent names its children (status,
    runs --tree)."""
    path = write(tmp_path, "portfolio.py", PORTFOLIO, RETRIES=0)
    companies = ["acme", "globex", "initech"]
    run_id = submit(daemon, path, names=companies, effects=str(tmp_path / "fx"))
    with daemon.client() as c:
        result = c.wait(run_id, timeout=60)
        expected = [{"company": name, "rating": len(name) * 10} for name in companies]
        assert result.status == "completed", result.error
        assert result.step_outputs["each"] == expected
        children = c.status(run_id).steps["each"].children
        assert sorted(children) == sorted(child_run_id(run_id, f"each[{i}]", 1) for i in range(3))
        for child in children:
            detail = c.status(child)
            assert (detail.pipeline, detail.status, detail.parent_id) == ("research", "completed", run_id)
    # In-process, the same file gives the same outputs
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - the test's own pipeline file
    local = run_agent(namespace["portfolio"], params={"names": companies, "effects": str(tmp_path / "fx-local")})
    assert local.step_outputs == result.step_outputs
    # The CLI shows the link both ways
    status = daemon.cli("status", run_id)
    assert f"each → child runs: {', '.join(children)}" in status.stdout, status.stdout
    tree = daemon.cli("runs", "--tree")
    lines = tree.stdout.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if line.startswith(run_id))
    assert all(any(f"└─ {child}" in line for line in lines[parent_line + 1:parent_line + 4]) for child in children), tree.stdout
    assert f"child of run {run_id}" in daemon.cli("status", children[0]).stdout


@pytest.mark.timeout(180)
def test_kill9_while_children_run_each_child_is_started_once_and_the_parent_completes(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """Given a parent whose children are held at a gate, all of them running
    When the daemon and its workers are killed with SIGKILL and the daemon restarts
    Then no child run is started twice: the parent re-attaches to the children it started, they finish, and
    the parent completes with their outputs."""
    daemon = make_daemon(workers=2).start()
    path = write(tmp_path, "portfolio.py", PORTFOLIO, RETRIES=0)
    fx, gate = tmp_path / "fx", tmp_path / "gate"
    companies = ["acme", "globex", "initech", "umbrella"]
    run_id = submit(daemon, path, names=companies, effects=str(fx), gate=str(gate))
    wait_until(lambda: len({r for r, s, _, _ in effects(fx) if s == "look"}) == len(companies), 60,
               what="every child to be running")
    daemon.kill9()
    daemon.start()
    gate.touch()
    with daemon.client() as c:
        result = c.wait(run_id, timeout=90)
        assert result.status == "completed", result.error
        assert result.step_outputs["each"] == [{"company": n, "rating": len(n) * 10} for n in companies]
        research_runs = [r for r in c.runs(limit=100) if r.pipeline == "research"]
    assert sorted(r.run_id for r in research_runs) == sorted(c for c in c_children(daemon, run_id))
    assert len(research_runs) == len(companies)
    ran = Counter((r, s) for r, s, _, _ in effects(fx))
    assert {r for r, _ in ran} == {r.run_id for r in research_runs}  # nothing ran in a run that does not exist
    assert all(ran[(r.run_id, "summarize")] == 1 for r in research_runs)  # started after the restart: once


def c_children(daemon: DaemonProcess, run_id: str) -> list[str]:
    with daemon.client() as c:
        return c.status(run_id).steps["each"].children


def test_cancelling_the_parent_cancels_its_running_children(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Given a parent whose children are held at a gate
    When the parent is cancelled
    Then every child run ends cancelled, naming its parent, and none of them goes on."""
    path = write(tmp_path, "portfolio.py", PORTFOLIO, RETRIES=0)
    fx = tmp_path / "fx"
    run_id = submit(daemon, path, names=["acme", "globex"], effects=str(fx), gate=str(tmp_path / "gate"))
    wait_until(lambda: len(effects(fx)) == 2, 60, what="both children to be running")
    children = c_children(daemon, run_id)
    with daemon.client() as c:
        c.cancel(run_id)
        assert c.wait(run_id, timeout=30).status == "cancelled"
        for child in children:
            wait_until(lambda child=child: c.status(child).status == "cancelled", 30, what=f"child {child} to end")
            assert f"parent run {run_id}" in (c.status(child).error or "")


def test_a_failed_child_fails_the_step_naming_it_and_a_retry_starts_a_new_child(daemon: DaemonProcess,
                                                                                tmp_path: Path) -> None:
    """Given a parent whose step may retry once, and one company whose child fails
    When it runs
    Then the item's first child failed, a second child ran for it (a retry starts a new child), and the
    step fails with an error that names the last child run and its failed step."""
    path = write(tmp_path, "portfolio.py", PORTFOLIO, RETRIES=1)
    run_id = submit(daemon, path, names=["acme", "bad-co"], effects=str(tmp_path / "fx"))
    with daemon.client() as c:
        result = c.wait(run_id, timeout=60)
        assert result.status == "failed"
        error = result.step_metadata["each"]["error"]
        second = child_run_id(run_id, "each[1]", 2)
        assert f"child run {second} of pipeline 'research' failed: look (RetryableError: no data on bad-co)" in error
        children = c.status(run_id).steps["each"].children
        assert sorted(children) == sorted([child_run_id(run_id, "each[0]", 1), child_run_id(run_id, "each[1]", 1), second])
        assert c.status(child_run_id(run_id, "each[1]", 1)).status == "failed"


CYCLE_A = '''\
from tagent_client import Pipeline

a = Pipeline("a")
a.step("first", fn=lambda: 1)
a.step("inner", pipeline="b.py")
'''
CYCLE_B = CYCLE_A.replace('"a"', '"b"').replace("a = ", "b = ").replace("a.step", "b.step").replace("b.py", "a.py")


def test_pipelines_that_include_each_other_are_refused_at_submit(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Given a.py whose step runs b.py, whose step runs a.py
    When a.py is submitted, and run in-process
    Then both refuse it before anything runs, naming the cycle."""
    write(tmp_path, "b.py", CYCLE_B)
    path = write(tmp_path, "a.py", CYCLE_A)
    refused = daemon.cli("submit", str(path))
    assert refused.returncode == 4, refused.stderr
    assert "sub-pipeline cycle: b.py -> a.py -> b.py" in refused.stderr
    with daemon.client() as c:
        assert c.runs() == []
    with pytest.raises(PipelineValidationError, match="sub-pipeline cycle"):
        exec(compile(path.read_text(), str(path), "exec"), {"__file__": str(path)})  # noqa: S102


def test_a_pipeline_that_includes_itself_is_invalid() -> None:
    """Given a pipeline whose step runs the pipeline itself
    Then it is invalid, naming the cycle."""
    p = Pipeline("loop")
    p.step("a", fn=lambda: 1)
    p.step("again", pipeline=p)
    assert p.problems() == ["sub-pipeline cycle: loop -> loop: a pipeline may not include itself"]


DEEP = '''\
from tagent_client import Pipeline

leaf = Pipeline("leaf")
leaf.step("x", fn=lambda: 1)
middle = Pipeline("middle")
middle.step("m", pipeline=leaf)
top = Pipeline("top")
top.step("t", pipeline=middle)
'''


def test_nesting_deeper_than_max_child_depth_is_refused_at_submit(make_daemon: Callable[..., DaemonProcess],
                                                                  tmp_path: Path) -> None:
    """Given a daemon with max_child_depth = 1 and a pipeline nested two levels deep
    When it is submitted
    Then it is refused with exit 4, saying how deep it is, the limit and what to change; one level runs."""
    daemon = make_daemon(workers=1)
    config = daemon.root / "config" / "tagentd"
    config.mkdir(parents=True)
    (config / "tagentd.toml").write_text("max_child_depth = 1\n")
    daemon.start()
    path = write(tmp_path, "deep.py", DEEP)
    refused = daemon.cli("submit", f"{path}:top")
    assert refused.returncode == 4, refused.stderr
    assert "sub-pipelines nest 2 levels deep under pipeline 'top', more than the limit of 1" in refused.stderr
    assert "max_child_depth" in refused.stderr
    accepted = daemon.cli("submit", f"{path}:middle", "--follow")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_a_step_with_more_children_than_the_fan_out_limit_fails_clearly(make_daemon: Callable[..., DaemonProcess],
                                                                        tmp_path: Path) -> None:
    """Given a daemon with max_child_fan_out = 2
    When a step would start a child for each of 3 companies
    Then the step fails (no retry) with a one-line error naming the step, the count and the limit; no child starts."""
    daemon = make_daemon(workers=1)
    config = daemon.root / "config" / "tagentd"
    config.mkdir(parents=True)
    (config / "tagentd.toml").write_text("max_child_fan_out = 2\n")
    daemon.start()
    path = write(tmp_path, "portfolio.py", PORTFOLIO, RETRIES=2)
    run_id = submit(daemon, path, names=["a", "b", "c"], effects=str(tmp_path / "fx"))
    with daemon.client() as c:
        result = c.wait(run_id, timeout=60)
        assert result.status == "failed"
        assert ("step 'each' would start 3 child runs, more than the limit of 2 per step"
                in result.step_metadata["each"]["error"])
        assert [r for r in c.runs() if r.pipeline == "research"] == []
    assert json.loads(daemon.cli("runs", "--json").stdout)[0]["run_id"] == run_id
    assert not os.path.exists(tmp_path / "fx")


# -- in-process ------------------------------------------------------------------------------------------


def flaky_child(fail_first: int) -> Pipeline:
    """A child pipeline whose `check` step fails (for good) in the first `fail_first` child runs."""
    runs: list[str] = []

    def check(ctx):  # noqa: ANN001, ANN202
        runs.append(ctx.run_id)
        if len(runs) <= fail_first:
            raise ValueError("bad numbers")
        return "ok"

    child = Pipeline("child")
    child.step("check", fn=check, max_retries=0, final=True)
    return child


def test_in_process_a_failed_child_is_retried_as_a_new_child_run() -> None:
    """Given a step that may retry once, whose first child run fails
    When it runs in-process
    Then a second child run (another id, from the next charged attempt) runs and the step completes with its output."""
    parent = Pipeline("parent")
    parent.step("one", pipeline=flaky_child(fail_first=1), max_retries=1, retry_delay=0.01, retry_jitter=0)

    result = run_agent(parent, run_id="parent-run")

    assert result.status == "completed", result.error
    assert result.step_outputs["one"] == "ok"
    assert result.step_metadata["one"]["attempts"] == 2


def test_in_process_a_child_that_keeps_failing_fails_the_step_naming_the_child_and_its_step() -> None:
    """Given a step without retries whose child run fails
    Then the step fails with ChildRunFailed naming the child run (derived from the parent's id) and its failed step."""
    parent = Pipeline("parent")
    parent.step("one", pipeline=flaky_child(fail_first=9), max_retries=0)

    result = run_agent(parent, run_id="parent-run")

    assert result.status == "failed"
    child = child_run_id("parent-run", "one", 1)
    assert result.error_details["one"] == (f"ChildRunFailed: child run {child} of pipeline 'child' failed: "
                                           f"check (ValueError: bad numbers)")


def test_a_child_without_a_final_output_gives_its_whole_result_and_params_default_to_the_parents() -> None:
    """Given a child with two sink steps (no final output) and a step without params=
    Then the step's output is the child's PipelineResult as data, and the child saw the parent's params."""
    child = Pipeline("child")
    child.step("a", fn=lambda company: company.upper())
    child.step("b", fn=lambda: 2)
    parent = Pipeline("parent")
    parent.step("one", pipeline=child)

    result = run_agent(parent, params={"company": "acme"})

    output = result.step_outputs["one"]
    assert output["pipeline_name"] == "child" and output["status"] == "completed"
    assert output["step_outputs"] == {"a": "ACME", "b": 2}


def test_pipeline_may_name_a_file_or_a_pipeline_in_it(tmp_path: Path) -> None:
    """Given research.py holding two pipelines, and a parent file naming one of them as 'research.py:deep'
    When the parent file is read, and the in-process run starts
    Then the step runs that pipeline; a missing file or name is a one-line load error saying where it looked."""
    (tmp_path / "research.py").write_text(textwrap.dedent('''
        from tagent_client import Pipeline
        quick = Pipeline("quick")
        quick.step("x", fn=lambda: "quick", final=True)
        deep = Pipeline("deep")
        deep.step("x", fn=lambda: "deep", final=True)
    '''))
    parent_file = write(tmp_path, "parent.py", '''\
        from tagent_client import Pipeline
        parent = Pipeline("parent")
        parent.step("one", pipeline="research.py:deep")
        ''')
    namespace: dict[str, object] = {"__file__": str(parent_file)}
    exec(compile(parent_file.read_text(), str(parent_file), "exec"), namespace)  # noqa: S102

    assert run_agent(namespace["parent"]).step_outputs["one"] == "deep"
    with pytest.raises(PipelineLoadError, match=r"pipeline='nowhere.py': no such file \(looked in "):
        Pipeline("p").step("one", pipeline="nowhere.py")
    with pytest.raises(PipelineLoadError, match=r"research.py: no pipeline named 'shallow' \(found: quick, deep\)"):
        Pipeline("p").step("one", pipeline=f"{tmp_path / 'research.py'}:shallow")


def test_nesting_deeper_than_the_limit_is_refused_in_process_before_anything_runs() -> None:
    """Given pipelines nested 6 levels deep (the default limit is 5)
    Then run_agent refuses the top one before any step runs, saying how deep, the limit and what to change."""
    inner = Pipeline("level0")
    inner.step("x", fn=lambda: 1)
    for level in range(1, 7):
        outer = Pipeline(f"level{level}")
        outer.step("down", pipeline=inner)
        inner = outer
    with pytest.raises(PipelineValidationError, match="sub-pipelines nest 6 levels deep under pipeline 'level6', "
                                                      "more than the limit of 5"):
        run_agent(inner)
    assert run_agent(inner.steps[0].pipeline).status == "completed"  # 5 levels are fine


def test_a_sub_pipeline_step_is_checked_like_any_step() -> None:
    """Given sub-pipeline steps with fn=, with params of the wrong kind, and params= on an ordinary step
    Then validation names each problem."""
    child = Pipeline("child")
    child.step("x", fn=lambda: 1)
    p = Pipeline("p")
    p.step("both", pipeline=child, fn=lambda: 1)
    p.step("listed", pipeline=child, params=["company"])
    p.step("plain", fn=lambda: 1, params={"a": 1})
    assert p.problems() == [
        "step 'both': a sub-pipeline step (pipeline=) takes no fn= or goal=: its output is the child run's",
        "step 'listed': params= must be a dict or a function returning one, got list",
        "step 'plain': params= only applies to a sub-pipeline step (pipeline=)",
    ]


def test_params_that_leave_the_child_unfilled_fail_the_attempt_without_starting_it() -> None:
    """Given a child whose function needs `company`, and params= that do not give it
    Then the step fails at once (no retry), saying the child cannot start and which parameter is missing."""
    child = Pipeline("child")
    child.step("a", fn=lambda company: company)
    parent = Pipeline("parent")
    parent.step("one", pipeline=child, params={"compnay": "acme"}, max_retries=2)

    result = run_agent(parent)

    assert result.step_metadata["one"]["attempts"] == 1
    assert result.error_details["one"].startswith(
        "ChildRunRefused: step 'one': child pipeline 'child' cannot start: step 'a': parameter 'company' of <lambda>() "
        "is not among the submit params (given: compnay; 'compnay' looks misspelt)")
