"""A transcript read field by field (`transcript._compact_fast`) is the transcript pydantic-ai's dump gives.

`from_messages` runs once per agent attempt on the step's critical path; most messages are read without
pydantic-ai's JSON-mode dump (half its cost). These tests hold that reading to the dump's result for the
messages agents make (prompts, tool calls and results, retries, text and structured output, usage with a
cost), and to falling back to the dump for anything else (files, structured tool results, odd times).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from openai_server import Reply, ScriptedServer, final_for
from pydantic import BaseModel
from pydantic_ai import Agent, BinaryContent
from pydantic_ai.messages import (
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

from tagent_client.run import transcript
from tagent_client.run.llm import EndpointSettings, LLMConfig, LLMRuntime
from tagent_client.run.runners.models import model_for

SECRET = "sk-test-0123456789"


class Company(BaseModel):
    name: str
    founded: int


def dumped(messages: list[Any], secrets: list[str]) -> list[dict[str, Any]]:
    """The transcript as made before the fast reading: the whole dump, compacted and scrubbed."""
    known = transcript._known(secrets)
    return [transcript._compact(m, known) for m in ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")]


def lookup(company: str) -> str:
    """Look up a company."""
    return f"{company} was founded in 1999; key {SECRET}"


def facts(company: str) -> dict[str, Any]:
    """Structured facts about a company."""
    return {"name": company, "founded": 1999}


def agent_runs() -> Iterator[list[Any]]:
    """The messages of agent runs on TestModel: tools with text and structured results, a retried tool, structured
    and text output."""
    from pydantic_ai import ModelRetry

    asked: list[str] = []

    def retried(company: str) -> str:
        """Asks for a retry the first time."""
        if not asked:
            asked.append(company)
            raise ModelRetry("not yet")
        return "done"

    yield Agent(TestModel(), output_type=Company, tools=[lookup, facts], system_prompt="Find it.").run_sync(
        "acme").all_messages()
    yield Agent(TestModel(), tools=[retried], system_prompt="Say it.").run_sync("acme").all_messages()
    yield Agent(TestModel(custom_output_text="plain text"), instructions="Be brief.").run_sync("hi").all_messages()


def handmade() -> list[Any]:
    """Messages with what the runs above do not make: a priced response, credential-named arguments, a secret in
    a prompt, an empty request, a naive and a non-UTC time, a file in the user prompt, a retry with errors."""
    utc = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    return [
        ModelRequest(parts=[SystemPromptPart(content=f"use {SECRET}", timestamp=utc),
                            UserPromptPart(content="x" * 25_000, timestamp=utc)]),
        ModelResponse(parts=[ToolCallPart(tool_name="t", args={"authorization": "Bearer x", "q": [1, 2.5, None]}),
                             ToolCallPart(tool_name="t", args={}), TextPart(content="")],
                      usage=RequestUsage(input_tokens=10, output_tokens=0, cost=Decimal("0.00042")),
                      model_name="m", timestamp=utc),
        ModelResponse(parts=[TextPart(content="zero")], usage=RequestUsage(cost=Decimal("0.00")), timestamp=utc),
        ModelRequest(parts=[]),
        ModelRequest(parts=[UserPromptPart(content="naive", timestamp=dt.datetime(2026, 1, 2, 3, 4, 5))]),
        ModelRequest(parts=[UserPromptPart(content="cet", timestamp=utc.astimezone(dt.timezone(dt.timedelta(hours=1))))]),
        ModelRequest(parts=[UserPromptPart(content=["see", BinaryContent(data=b"\x89PNG", media_type="image/png")])]),
        ModelRequest(parts=[ToolReturnPart(tool_name="t", outcome="retried", content=[
            {"type": "missing", "loc": ("a",), "msg": "Field required", "input": {}}])]),
        ModelRequest(parts=[ToolReturnPart(tool_name="t", content={"structured": [1, 2]}),
                            ToolReturnPart(tool_name="t", content="text again")]),
    ]


def test_the_fast_reading_gives_the_dumps_transcript_for_every_kind_of_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the messages of agent runs (tools, retries, structured and text output) and handmade ones (a cost, a
    credential-named argument, a secret, long text, empty parts, naive and non-UTC times, a file, a retry with
    errors, a structured tool result), when their transcript is made twice (the first time teaches the fast
    reading each class's fields), then both times it is exactly what the dump gives, key order included; and the
    second time, a run of plain parts (text output) needed no dump at all (a tool's structured result or retry
    does)."""
    batches = [*agent_runs(), handmade()]
    dumps: list[int] = []
    original = transcript._dumped

    def counted(message: Any, secrets: list[str]) -> dict[str, Any]:
        dumps.append(1)
        return original(message, secrets)

    monkeypatch.setattr(transcript, "_dumped", counted)
    for index, messages in enumerate(batches):
        for again in (False, True):
            dumps.clear()
            made = transcript.from_messages(messages, [SECRET])
            if again and index == 2:
                assert dumps == [], index
            expected = dumped(messages, [SECRET])
            assert made == expected
            assert [list(m) for m in made] == [list(m) for m in expected]
            assert [[list(p) for p in m["parts"]] for m in made] == [[list(p) for p in m["parts"]] for m in expected]
    assert SECRET not in repr(transcript.from_messages(batches[-1], [SECRET]))


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=final_for({"name": "Acme", "founded": 1999})) as s:
        yield s


def test_an_endpoints_agent_attempt_is_transcribed_without_pydantic_ais_dump(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an agent on an OpenAI-compatible endpoint (the scripted server) whose first run's transcript was made,
    when later runs' transcripts are made (one of them with an output the model is asked to fix), then after the
    retry's new kind of part has been seen once, pydantic-ai's dump is not called (each message is read field by
    field), and the transcript is still the dump's."""
    llm = LLMRuntime.local(LLMConfig(endpoints={"local": EndpointSettings(base_url=server.base_url)}))
    agent = Agent(model_for("local:llama3", llm).model, output_type=Company, system_prompt="Find it.")
    first = asyncio.run(agent.run("acme")).all_messages()
    transcript.from_messages(first, [])
    dumps: list[Any] = []
    original = ModelMessagesTypeAdapter.dump_python

    def counted(*args: Any, **kwargs: Any) -> Any:
        dumps.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(ModelMessagesTypeAdapter, "dump_python", counted)
    server.script(Reply.final({"name": "Acme"}))  # invalid output first: the model is asked again
    for run in range(3):
        messages = asyncio.run(agent.run("acme")).all_messages()
        made = transcript.from_messages(messages, [])
        assert dumps == [] or run == 0, [type(p).__name__ for m in messages for p in m.parts]
        dumps.clear()
        monkeypatch.setattr(ModelMessagesTypeAdapter, "dump_python", original)
        assert made == dumped(messages, [])
        monkeypatch.setattr(ModelMessagesTypeAdapter, "dump_python", counted)
    assert made[1]["usage"]["input_tokens"] > 0
