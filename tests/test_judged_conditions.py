"""Judged conditions: a CONDITIONAL step with constraints but no condition= runs only if its model says so.

The model is the scripted OpenAI-compatible server of tests/openai_server.py (`local:llama3` on an
`[endpoints.local]` endpoint), in-process and through a real daemon; the offline `test` model decides
the same way every time. The rule is in docs/semantics.md ("When a step is decided", rule 4).
"""

from __future__ import annotations

import asyncio
import json
import random
import runpy
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import DaemonProcess, wait_until, write_pipeline
from openai_server import Reply, ScriptedServer, Seen

from tagent_client import ExecutionMode, Pipeline, PipelineResult, run_agent, run_pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, StepSucceeded
from tagent_client.core.state import Phase, RunState, StepStatus
from tagent_client.define.export import plan_from_dict
from tagent_client.errors import PipelineValidationError
from tagent_client.run.config import RunConfig
from tagent_client.run.context import StepContext
from tagent_client.run.runners.judge import EVIDENCE_CHARS, evidence
from tagent_client.run.services import LocalServices

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

CONSTRAINT = "Only if the research shows a market gap"
LAUNCH = f"""
    from tagent_client import ExecutionMode, Pipeline


    def research(ctx):
        return {{"segments": ["budget", "premium"], "gap": "nobody sells a mid-price model"}}


    def report(ctx, validate):
        return f"validated: {{validate}}"


    pipeline = Pipeline("launch", model="local:llama3")
    pipeline.step("research", fn=research)
    pipeline.step("validate", goal="Validate market demand", depends_on=["research"],
                  execution_mode=ExecutionMode.CONDITIONAL, constraints=[{CONSTRAINT!r}])
    pipeline.step("report", fn=report, depends_on=["validate"])
"""


def judgements(server: ScriptedServer) -> list[Seen]:
    """The judgement requests the server saw: the only ones offering an output tool (the steps answer text)."""
    return [seen for seen in server.requests if "final_result" in seen.tool_names]


def answering(decision: bool, reason: str) -> Callable[[Seen], Reply]:
    """The model: the judgement gets `decision` and `reason`; the agent step itself answers text."""
    def respond(seen: Seen) -> Reply:
        if "final_result" in seen.tool_names:
            return Reply.final({"decision": decision, "reason": reason}, prompt_tokens=300, completion_tokens=15)
        return Reply.say("demand is strong")
    return respond



@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv("LOCAL_API_KEY", "sk-judge-test")
    with ScriptedServer() as s:
        yield s


def run_in_process(path: Path, server: ScriptedServer) -> tuple[PipelineResult, list[tuple[str, dict[str, Any]]]]:
    pipeline = runpy.run_path(str(path))["pipeline"]
    events: list[tuple[str, dict[str, Any]]] = []
    config = RunConfig(endpoints={"local": {"base_url": server.base_url, "api_key_env": "LOCAL_API_KEY"}})
    result = asyncio.run(run_pipeline(pipeline, config=config, on_event=lambda t, d: events.append((t, d))))
    return result, events


def daemon_on(make_daemon: Callable[..., DaemonProcess], tmp_path: Path, server: ScriptedServer,
              root: Path | None = None) -> DaemonProcess:
    """A daemon whose tagentd.toml points [endpoints.local] at the scripted server."""
    config = tmp_path / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[endpoints.local]\nbase_url = "{server.base_url}"\napi_key_env = "LOCAL_API_KEY"\n')
    daemon = make_daemon(root=root)
    daemon.env["LOCAL_API_KEY"] = "sk-judge-test"
    return daemon.start()


@pytest.mark.parametrize("decision", [True, False], ids=["true", "false"])
def test_the_step_model_judges_the_constraints_in_process(server: ScriptedServer, tmp_path: Path,
                                                           decision: bool) -> None:
    """Given validate: CONDITIONAL with only a constraint, on the pipeline's model, and a model that answers
    `decision` with a reason, when the run goes in-process, then validate runs (True) or is SKIPPED with the
    model's reason (False), a step.condition event records decision, reason and model, and the judgement's
    tokens count toward validate."""
    # Given
    server.default = answering(decision, "the research names a gap in the mid-price segment")
    path = write_pipeline(tmp_path, "launch.py", LAUNCH)
    # When
    result, events = run_in_process(path, server)
    # Then the model was asked once, with the constraint, the step's goal and the dependency's output
    assert result.success, result.summary()
    [asked] = judgements(server)
    system, user = asked.messages[0]["content"], asked.messages[1]["content"]
    assert CONSTRAINT in system and "Validate market demand" in system
    assert "nobody sells a mid-price model" in user
    condition = [d for t, d in events if t == "step.condition"]
    assert condition == [{"run_id": result.run_id, "pipeline": "launch", "step": "validate", "decision": decision,
                          "reason": "the research names a gap in the mid-price segment", "model": "local:llama3"}]
    usage = result.token_usage["validate"]
    if decision:
        # the step ran after the judgement, and both requests are its usage
        assert [t for t, d in events if d.get("step") == "validate"] == ["step.condition", "step.started",
                                                                          "step.completed"]
        assert result.step_outputs["validate"] == "demand is strong"
        assert result.final_output == "validated: demand is strong"
        assert (usage.requests, usage.input_tokens) == (2, 400)
    else:
        # the step never ran: SKIPPED with the model's reason; the judgement's tokens are still counted
        assert result.skipped_steps == {
            "validate": "condition judged false by local:llama3: the research names a gap in the mid-price segment",
            "report": "upstream step 'validate' skipped"}
        assert len(server.requests) == 1
        assert (usage.requests, usage.input_tokens) == (1, 300)


def test_the_step_model_judges_the_constraints_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given a daemon whose workers reach the scripted model, when the launch pipeline runs once with the model
    answering True and once answering False, then each result equals the in-process one, the decision and
    reason are in `tagent history`, the skip reason is in `tagent status`, and the judgement's transcript is
    the step's."""
    path = write_pipeline(tmp_path, "launch.py", LAUNCH)
    daemon = daemon_on(make_daemon, tmp_path, server)
    for decision, reason in [(True, "a gap: no mid-price model"), (False, "no gap: every segment is served")]:
        # Given the model's answer
        server.default = answering(decision, reason)
        local, _ = run_in_process(path, server)
        # When the file runs through the daemon
        with daemon.client() as client:
            run = client.submit(str(path))
            remote = client.wait(run.id, timeout=60)
            history = client.history(run.id)
            transcript = client.transcript(run.id, "validate")
        # Then it ends as in-process
        assert remote.success, remote.summary()
        assert remote.step_outputs == local.step_outputs and remote.skipped_steps == local.skipped_steps
        assert remote.token_usage == local.token_usage
        # And the decision and its reason are in the run's history
        [entry] = [e for e in history if e["what"] == "step.condition"]
        assert entry["data"] == {"step": "validate", "decision": decision, "reason": reason, "model": "local:llama3"}
        shown = daemon.cli("history", run.id)
        assert "step.condition" in shown.stdout and reason in shown.stdout, shown.stdout
        status = daemon.cli("status", run.id)
        if not decision:
            assert f"condition judged false by local:llama3: {reason}" in status.stdout, status.stdout
        # And the judgement is in the step's transcript, marked as its condition check
        assert transcript["attempts"][0]["phase"] == "condition"
        assert "condition check, attempt 1: succeeded" in daemon.cli("transcript", run.id, "validate").stdout

    # And a CONDITIONAL step with neither condition nor constraints is refused at submit with one clear line
    bad = write_pipeline(tmp_path, "bad.py", """
        from tagent_client import Pipeline

        pipeline = Pipeline("bad", model="test")
        pipeline.step("maybe", goal="Maybe", execution_mode="conditional")
    """)
    refused = daemon.cli("submit", str(bad))
    assert refused.returncode != 0
    assert "step 'maybe': execution_mode CONDITIONAL needs a condition= (when(...) or a function) or constraints=" \
        in refused.stderr, refused.stderr


def test_a_conditional_step_with_neither_condition_nor_constraints_is_a_validation_error() -> None:
    """Given a CONDITIONAL step with no condition= and no constraints, when the pipeline is validated or run, then
    it is refused before anything runs, saying what to add."""
    pipeline = Pipeline("p").step("maybe", goal="Maybe", execution_mode=ExecutionMode.CONDITIONAL)
    with pytest.raises(PipelineValidationError, match=r"needs a condition= \(when\(\.\.\.\) or a function\) or "
                                                      r"constraints= \(the step's model then judges them"):
        run_agent(pipeline, model="test")


def test_the_test_model_always_judges_true_with_the_same_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a judged step on the offline `test` model, when the pipeline runs twice, then both runs record the
    same decision (True: the step runs) and the same reason."""
    def build() -> Pipeline:
        p = Pipeline("offline", model="test")
        p.step("facts", fn=lambda ctx: {"gap": True})
        p.step("act", goal="Act on it", depends_on=["facts"], execution_mode=ExecutionMode.CONDITIONAL,
               constraints=["Only if there is a gap"])
        return p

    decided = []
    for _ in range(2):
        events: list[tuple[str, dict[str, Any]]] = []
        result = run_agent(build(), on_event=lambda t, d, events=events: events.append((t, d)))
        assert result.success and "act" in result.step_outputs, result.summary()
        decided += [(d["decision"], d["reason"], d["model"]) for t, d in events if t == "step.condition"]
    assert decided == [(True, "a", "test")] * 2


def test_a_pipeline_document_cannot_hide_a_judged_condition() -> None:
    """Given a TOML pipeline document (what a watched folder runs) with a CONDITIONAL step that has only a
    constraint, when its plan is read as the daemon reads it, then the step's condition is judged; and the
    document run in-process records the judgement."""
    document = """
        name = "doc"
        model = "test"

        [[steps]]
        name = "act"
        goal = "Act"
        mode = "conditional"
        constraints = ["Only if it is a weekday"]
        condition_is_callable = false
    """
    data = tomllib.loads(textwrap.dedent(document))
    assert plan_from_dict(data).step("act").condition_is_judged
    events: list[str] = []
    result = run_agent(Pipeline.from_dict(data), on_event=lambda topic, data: events.append(topic))
    assert result.success and "step.condition" in events, result.summary()


def test_a_recorded_judgement_is_not_asked_again_after_recovery() -> None:
    """Given a machine whose judged step was judged True and dispatched, when the machine is rebuilt from its
    persisted state (a crash) and recovers, then it re-runs the step itself, not the judgement."""
    pipeline = Pipeline("p", model="test")
    pipeline.step("facts", fn=lambda ctx: 1)
    pipeline.step("act", goal="Act", depends_on=["facts"], execution_mode=ExecutionMode.CONDITIONAL,
                  constraints=["Only if facts is 1"])
    plan = pipeline.plan()
    assert plan.step("act").condition_is_judged
    machine = RunMachine.new(plan, "r1", now=0.0, rng=random.Random(1))
    machine.start(0.0)
    actions = machine.handle(StepSucceeded(task="facts", attempt=1, output=1), 1.0)
    assert [(a.task, a.phase) for a in actions if isinstance(a, Dispatch)] == [("act#condition", Phase.CONDITION)]
    actions = machine.handle(StepSucceeded(task="act#condition", attempt=1,
                                           output={"decision": True, "reason": "facts is 1", "model": "test"}), 2.0)
    assert [a.topic for a in actions if isinstance(a, Emit)] == ["step.condition", "step.started"]
    # When the persisted state is read back by a new machine, which recovers
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(machine.state), type=RunState)
    recovered = RunMachine(plan, state, rng=random.Random(1))
    actions = recovered.recover(3.0)
    # Then only the step's own run task goes out again
    assert [(a.task, a.phase) for a in actions if isinstance(a, Dispatch)] == [("act", Phase.RUN)]
    assert recovered.state.steps["act"].condition_passed


def test_a_judgement_output_without_a_decision_skips_the_step_saying_so() -> None:
    """Given a judged step, when its condition task's output has no boolean decision (never from the runner),
    then the step is SKIPPED with a reason that says the judgement gave none."""
    pipeline = Pipeline("p", model="test")
    pipeline.step("act", goal="Act", execution_mode=ExecutionMode.CONDITIONAL, constraints=["Only if ready"])
    machine = RunMachine.new(pipeline.plan(), "r1", now=0.0)
    machine.start(0.0)
    machine.handle(StepSucceeded(task="act#condition", attempt=1, output="yes"), 1.0)
    assert machine.state.steps["act"].status is StepStatus.SKIPPED
    assert machine.state.steps["act"].skip_reason == "condition judged false by ?: the judgement gave no decision (str output)"


def test_the_model_sees_each_dependency_output_cut_to_its_share_with_a_marker() -> None:
    """Given two dependencies, one with a huge output, when the judgement's message is built, then it stays
    within its budget, the huge output ends with a truncation marker, and the small one is whole."""
    ctx = StepContext(services=LocalServices(), run_id="r1", pipeline="p", step_name="act", attempt=1, params={},
                      shared={}, inputs={"big": "x" * 50_000, "small": {"gap": "mid-price"}})
    text = evidence(ctx)
    assert len(text) < EVIDENCE_CHARS + 500
    assert "[... truncated: " in text and "more characters not shown]" in text
    assert json.dumps({"gap": "mid-price"}, indent=1) in text


@pytest.mark.timeout(150)
def test_a_judgement_recorded_before_a_kill_9_is_not_asked_again(
        make_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given a judged step whose judgement said True and whose own function is running, when everything is
    killed -9 and the daemon started again, then the step runs again (attempt 2) but the model is not asked
    again: one judgement request, one step.condition event."""
    release, started = tmp_path / "release", tmp_path / "started"
    path = write_pipeline(tmp_path, "hold.py", f"""
        import pathlib
        import time
        from tagent_client import ExecutionMode, Pipeline


        def validate(ctx):
            pathlib.Path({str(started)!r}).write_text(str(ctx.attempt))
            while not pathlib.Path({str(release)!r}).exists():
                time.sleep(0.02)  # ok-sleep: the step's own work is to wait until the test releases it
            return ctx.attempt


        pipeline = Pipeline("hold", model="local:llama3")
        pipeline.step("research", fn=lambda ctx: "a gap")
        pipeline.step("validate", fn=validate, depends_on=["research"], execution_mode=ExecutionMode.CONDITIONAL,
                      constraints=[{CONSTRAINT!r}])
        barrier = Pipeline("barrier")
        barrier.step("nothing", fn=lambda ctx: None)
    """)
    server.default = answering(True, "a gap")
    daemon = daemon_on(make_daemon, tmp_path, server)
    with daemon.client() as client:
        run = client.submit(f"{path}:pipeline")
        wait_until(lambda: started.exists(), 30, what="validate to start after its judgement")
        client.submit(f"{path}:barrier")  # its reply comes after a commit: the judgement is on disk by then
    # When everything is killed -9, the step may finish, and the daemon starts again
    daemon.kill9()
    release.touch()
    again = daemon_on(make_daemon, tmp_path, server, root=daemon.root)
    with again.client() as client:
        result = client.wait(run.id, timeout=60)
        history = client.history(run.id)
    # Then the step ran again, but the judgement was made once
    assert result.status == "completed", result.summary()
    assert result.step_outputs["validate"] == 2
    assert len(judgements(server)) == 1
    assert [e["data"]["decision"] for e in history if e["what"] == "step.condition"] == [True]
