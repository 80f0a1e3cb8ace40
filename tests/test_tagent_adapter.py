"""runner="tagent": the adapter to the TAgent library, in one process.

The real library is not installed here (it pulls LiteLLM, scikit-learn, ...), so the
not-installed path is tested for real, and the call convention against a stand-in
module with TAgent's documented API: `tagent.run_agent(goal, model=, api_key=,
max_iterations=, tools=, output_format=, verbose=)` returning a result with
`output`, `goal_achieved`, `failure_reason` and `stats.total` token usage.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest
from pydantic import BaseModel

from tagent_client import Pipeline, run_pipeline

pytestmark = pytest.mark.timeout(30)


class Trip(BaseModel):
    city: str
    days: int


def weather(state: dict, args: dict) -> tuple[str, Any]:
    """TAgent-style tool."""
    return "weather", "sunny"


def trip_pipeline(**step: Any) -> Pipeline:
    p = Pipeline("trip", tools=[weather], global_constraints=["Be brief"])
    options = {"model": "openai:gpt-4o-mini", "max_retries": 0, **step}
    p.step("plan", goal="Plan a trip to Lisbon", runner="tagent", output_schema=Trip, constraints=["Two days at most"],
           **options)
    return p


def fake_tagent(monkeypatch: pytest.MonkeyPatch, **result: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_agent(goal: str, **kwargs: Any) -> Any:
        calls.append({"goal": goal, **kwargs})
        total = types.SimpleNamespace(input_tokens=120, output_tokens=30, cost=0.004)
        defaults = {"output": kwargs["output_format"](city="Lisbon", days=2), "goal_achieved": True,
                    "failure_reason": None, "stats": types.SimpleNamespace(total=total)}
        return types.SimpleNamespace(**{**defaults, **result})

    monkeypatch.setitem(sys.modules, "tagent", types.SimpleNamespace(run_agent=run_agent))
    return calls


def test_without_the_library_the_step_fails_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given no `tagent` package, when a runner='tagent' step runs, then it fails once, not retryable, with the
    install hint."""
    monkeypatch.setitem(sys.modules, "tagent", None)  # import tagent raises ImportError, as when not installed

    result = asyncio.run(run_pipeline(trip_pipeline(max_retries=2)))

    assert not result.success
    assert result.step_metadata["plan"]["attempts"] == 1
    assert "runner='tagent' needs the TAgent library: pip install 'tagentd[tagent]'" in result.error_details["plan"]


def test_the_step_runs_on_tagents_agent_with_goal_tools_schema_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the library, when the step runs, then TAgent gets the goal with constraints and context, the
    step's tools as they are, the output schema and a LiteLLM model name; its output and usage come back."""
    calls = fake_tagent(monkeypatch)

    result = asyncio.run(run_pipeline(trip_pipeline(), {"budget": 300}))

    assert result.success, result.summary()
    assert result.step_outputs["plan"] == Trip(city="Lisbon", days=2)
    (call,) = calls
    assert call["model"] == "openai/gpt-4o-mini" and call["output_format"] is Trip and call["tools"] == [weather]
    assert "Plan a trip to Lisbon" in call["goal"] and "Two days at most" in call["goal"] and "Be brief" in call["goal"]
    assert '"budget": 300' in call["goal"]
    assert result.token_usage["total_tokens"] == 150 and result.total_cost == pytest.approx(0.004)


def test_a_goal_tagent_did_not_achieve_is_a_retryable_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given TAgent gives up without output, then the attempt fails as retryable with TAgent's reason."""
    fake_tagent(monkeypatch, output=None, goal_achieved=False, failure_reason="ran out of iterations")

    result = asyncio.run(run_pipeline(trip_pipeline()))

    assert not result.success and "ran out of iterations" in result.error_details["plan"]
    assert "TAgentGoalNotAchieved" in result.error_details["plan"]


def test_tagentd_endpoints_cannot_be_used_by_tagent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a runner='tagent' step on an endpoint model, then it fails saying TAgent needs a LiteLLM name."""
    from tagent_client.run.local import RunConfig

    fake_tagent(monkeypatch)
    cfg = RunConfig(endpoints={"local": {"base_url": "http://127.0.0.1:9/v1"}})

    result = asyncio.run(run_pipeline(trip_pipeline(model="local:llama3"), config=cfg))

    assert not result.success and "LiteLLM" in result.error_details["plan"]


@pytest.mark.parametrize(("model", "litellm"), [
    ("openai:gpt-4o-mini", "openai/gpt-4o-mini"),
    ("google:gemini-2.0-flash", "gemini/gemini-2.0-flash"),  # pydantic-ai's current Google prefix (docs/agents.md)
    ("google-gla:gemini-2.0-flash", "gemini/gemini-2.0-flash"),  # its older one
    ("gemini/gemini-2.0-flash", "gemini/gemini-2.0-flash"),  # already LiteLLM's form
])
def test_model_strings_become_litellm_names(model: str, litellm: str) -> None:
    from tagent_client.run.llm import LLMConfig, LLMRuntime
    from tagent_client.run.runners.tagent import litellm_model

    assert litellm_model(model, LLMRuntime.local(LLMConfig())) == litellm
