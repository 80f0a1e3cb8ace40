"""`run_agent` is TAgent 0.7.1's `run_agent`, extended: TAgent scripts run unchanged on our engine.

A goal takes TAgent's arguments and gives TAgent's result fields; a pipeline takes `config` and
overrides ("Configuration Inheritance" in phase2-execution-engine.md); `run_pipeline(pipeline, config)`
keeps the documents' signature. The scripted OpenAI-compatible server is real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path
from typing import Any

import pytest
from openai_server import Reply, ScriptedServer
from pydantic import BaseModel

from tagent_client import Pipeline, PipelineResult, RunConfig, run_agent, run_pipeline
from tagent_client.errors import ConfigError, RunFailed
from tagent_client.run.agent_api import AgentResult

WEATHER_SCRIPT = Path(__file__).parent / "tagent_scripts" / "weather.py"


def lookup(city: str) -> str:
    """A tool."""
    return f"sunny in {city}"


def test_a_tagent_script_runs_unchanged_against_the_scripted_server(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Given a TAgent 0.7.1 script calling run_agent(goal, model="openai/gpt-4o-mini", api_key=..., tools=[...],
    max_iterations=3, output_format=Weather), and a server that answers with a tool call then the output,
    when the script runs, then it gets TAgent's result: the goal achieved, a Weather, no re-planning, and the
    server's tokens and their cost in stats, keyed by the model string as given."""
    with ScriptedServer() as server:
        server.script(Reply.tool("get_weather", {"city": "Lisbon"}), Reply.final({"city": "Lisbon", "forecast": "sunny"}))
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.delenv("WEATHER_MODEL", raising=False)

        sample = runpy.run_path(str(WEATHER_SCRIPT))

    result = sample["result"]
    assert isinstance(result, AgentResult)
    assert result.goal_achieved and result.output == sample["Weather"](city="Lisbon", forecast="sunny")
    assert isinstance(result.output, sample["Weather"])
    assert (result.iterations_used, result.planning_cycles, result.failure_reason) == (0, 1, None)
    assert (result.total_tasks, result.completed_tasks, result.failed_tasks) == (1, 1, 0)
    total = result.stats.total
    assert total.input_tokens > 0 and total.total_tokens == total.input_tokens + total.output_tokens
    assert total.cost > 0 and list(result.stats.by_model) == ["openai/gpt-4o-mini"]
    assert [(seen.body["model"], {k.lower(): v for k, v in seen.headers.items()}.get("authorization"))
            for seen in server.requests] == [
        ("gpt-4o-mini", "Bearer sk-test")] * 2
    assert server.requests[1].messages[-1]["content"] == "sunny in Lisbon"  # the tool ran, its answer went back
    assert capsys.readouterr().out.startswith("True city='Lisbon' forecast='sunny' 0 ")


def test_the_same_tagent_script_runs_offline_on_the_test_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the script with its model set to `test`, when it runs, then its goal is achieved with a Weather."""
    monkeypatch.setenv("WEATHER_MODEL", "test")

    result = runpy.run_path(str(WEATHER_SCRIPT))["result"]

    assert result.goal_achieved and type(result.output).__name__ == "Weather"
    assert result.stats.total.total_tokens > 0 and result.pipeline_result.success


def test_max_iterations_bounds_the_agent_and_crash_if_over_iterations_raises() -> None:
    """Given an agent that needs two model requests (a tool call, then its answer), when max_iterations=1,
    then the goal is not achieved and the reason says so; with crash_if_over_iterations=True, RunFailed."""
    over = run_agent("Weather in Lisbon?", model="test", tools=[lookup], max_iterations=1)
    assert not over.goal_achieved and over.output is None
    assert "request_limit of 1" in (over.failure_reason or "")

    with pytest.raises(RunFailed, match="max_iterations"):
        run_agent("Weather in Lisbon?", model="test", tools=[lookup], max_iterations=1, crash_if_over_iterations=True)

    assert run_agent("Weather in Lisbon?", model="test", tools=[lookup], max_iterations=2).goal_achieved


class TAgentConfig:
    """A TAgent-style config object: settings behind to_dict(), some of which this engine does not use."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": 0.2, "ui_style": "modern", **self.values}


def tool_pipeline() -> Pipeline:
    p = Pipeline("configured", tools=[lookup])
    p.step("ask", goal="Weather in Lisbon?")
    p.step("pinned", goal="Say hi", model="test", depends_on=["ask"])
    return p


def test_a_pipeline_inherits_config_then_run_overrides_then_its_steps_own() -> None:
    """Given a config naming a model and max_iterations, when a pipeline runs with it, then keyword arguments
    override the config, and a step's own model overrides the run's."""
    # The config alone: max_iterations=1 is too few for the tool-using step
    limited = run_agent(tool_pipeline(), config=TAgentConfig(model="test", max_iterations=1))
    assert isinstance(limited, PipelineResult) and limited.failed_steps == ["ask"]
    # A keyword overrides the config's value
    assert run_agent(tool_pipeline(), TAgentConfig(model="test", max_iterations=1), max_iterations=3).success
    # A step's model overrides the run's: "pinned" runs on `test` while the run's model does not exist
    p = Pipeline("pinned_only").step("pinned", goal="Say hi", model="test")
    assert run_agent(p, config={"model": "nosuch:model"}).success
    # The documents' run_pipeline(pipeline, config, **kwargs), config positional, params by keyword
    fn = Pipeline("params").step("echo", fn=lambda company: company)
    result = asyncio.run(run_pipeline(fn, RunConfig(fail_fast=True), params={"company": "Acme"}))
    assert result.step_outputs == {"echo": "Acme"}


def test_a_config_dict_with_an_unknown_key_is_a_clear_error() -> None:
    """Given params passed where config goes (the second argument), then a one-line error names the key and
    says how params are passed."""
    p = Pipeline("p").step("echo", fn=lambda company: company)
    with pytest.raises(ConfigError) as caught:
        run_agent(p, {"company": "Acme"})
    assert "config has unknown key(s) 'company'" in str(caught.value)
    assert "params={...}" in str(caught.value) and "\n" not in str(caught.value)


class Answer(BaseModel):
    text: str


def test_run_agent_inside_an_event_loop_says_to_await_run_pipeline() -> None:
    """Given a running event loop, when run_agent is called with TAgent's arguments, then the error says
    to await run_pipeline."""
    async def inside() -> None:
        run_agent("Say hi", model="test", output_format=Answer, max_iterations=3)

    with pytest.raises(RuntimeError, match=r"await run_pipeline\(\.\.\.\)"):
        asyncio.run(inside())


def test_verbose_prints_the_run_s_events_and_config_tools_reach_a_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    """Given verbose=True (TAgent's progress output), then each run event is printed; given tools in the config
    of a pipeline run, then its agent steps are offered them, and the caller's pipeline is left unchanged."""
    run_agent("Say hi", model="test", verbose=True)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["tagent: run.started", "tagent: step.started agent", "tagent: step.completed agent",
                       "tagent: run.finished"]

    p = Pipeline("tooled").step("ask", goal="Weather in Lisbon?")
    result = run_agent(p, config={"model": "test", "tools": [lookup]})
    assert result.success and result.total_usage.tool_calls == 1
    assert p.tools == []
