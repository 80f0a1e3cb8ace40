"""runner="tagent": what the adapter decides before TAgent runs, in one process.

Nothing here imports the real library (seconds of CPU): the not-installed path hides it, and the model checks
fail before the import. tests/test_tagent_real.py runs the adapter on the real TAgent 0.7.1.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from tagent_client import Pipeline, run_pipeline
from tagent_client.run.runners import tagent_library

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


def test_without_the_library_the_step_fails_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given no `tagent` package, when a runner='tagent' step runs, then it fails once, not retryable, with the
    install hint."""
    monkeypatch.setitem(sys.modules, "tagent", None)  # import tagent raises ImportError, as when not installed
    monkeypatch.setattr(tagent_library, "_loaded", None)  # forget a TAgent another test imported

    result = asyncio.run(run_pipeline(trip_pipeline(max_retries=2)))

    assert not result.success
    assert result.step_metadata["plan"]["attempts"] == 1
    assert "runner='tagent' needs the TAgent library: pip install 'tagentd[tagent]'" in result.error_details["plan"]


def test_tagentd_endpoints_cannot_be_used_by_tagent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a runner='tagent' step on an endpoint model, then it fails saying TAgent needs a LiteLLM name,
    before importing TAgent."""
    from tagent_client.run.local import RunConfig

    monkeypatch.setitem(sys.modules, "tagent", None)  # it would say "not installed" had it got that far
    monkeypatch.setattr(tagent_library, "_loaded", None)
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
