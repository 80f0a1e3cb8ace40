"""The agent runner in one process, against the scripted OpenAI-compatible server on 127.0.0.1.

Each test scripts the server's answers, runs an agent step pointed at it by base URL
(an `[endpoints.local]`-style endpoint), and checks what the step returned, what it
recorded (usage, cost, transcript) and what the server saw (tools offered, retries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from openai_server import Reply, ScriptedServer, final_for
from pydantic import BaseModel

from tagent_client import ExecutionMode, Pipeline, run_pipeline
from tagent_client.core.events import Dispatch, StepFailed, StepSucceeded
from tagent_client.core.state import Phase
from tagent_client.errors import is_retryable
from tagent_client.run.context import StepContext
from tagent_client.run.llm import EndpointSettings, LLMConfig, LLMRuntime, PriceOverride
from tagent_client.run.local import RunConfig, run_task
from tagent_client.run.services import LocalServices

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-test-7f3a9c1e5b"


class Company(BaseModel):
    name: str
    founded: int


def lookup(company: str) -> str:
    """Look up what is known about a company."""
    if company == "boom":
        raise ValueError("the registry is down")
    return f"{company} was founded in 1999"


def leak_key() -> str:
    """Return a value that happens to be the API key."""
    return f"the key is {SECRET}"


def internal_only() -> str:
    """Never to be offered to the model."""
    return "secret stuff"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=final_for({"name": "Acme", "founded": 1999})) as s:
        yield s


def runtime(server: ScriptedServer, **endpoint: Any) -> LLMRuntime:
    settings = {"base_url": server.base_url, "api_key_env": "LOCAL_API_KEY", **endpoint}
    config = LLMConfig(endpoints={"local": EndpointSettings(**settings)},
                       price_overrides={"local:llama3": PriceOverride(input_per_mtok=1.0, output_per_mtok=2.0)})
    return LLMRuntime.local(config)


def attempt(pipeline: Pipeline, step: str, llm: LLMRuntime, attempt_no: int = 1) -> StepSucceeded | StepFailed:
    """Run one attempt of `step` as a worker would; returns its event (with usage and transcript)."""
    task = Dispatch(task=step, step=step, phase=Phase.RUN, attempt=attempt_no, inputs={}, timeout=20)
    ctx = StepContext(services=LocalServices(), run_id="r1", pipeline=pipeline.name, step_name=step,
                      attempt=attempt_no, params={"company": "acme"}, shared={}, inputs={})
    return asyncio.run(run_task(pipeline, task, ctx, None, llm))  # type: ignore[return-value]


def research(**step: Any) -> Pipeline:
    p = Pipeline("research", tools=[lookup, internal_only])
    p.step("find", goal="Find the company's founding year", output_schema=Company, model="local:llama3", **step)
    return p


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_API_KEY", SECRET)


# -- tools, output, usage ------------------------------------------------------------------------


def test_agent_calls_a_tool_and_returns_a_schema_valid_object_with_usage_and_cost(server: ScriptedServer) -> None:
    """Given a server that asks for lookup(acme) and then answers, when the step runs, then it returns a Company,
    the tool's result went back to the model, and tokens, requests, tool calls and cost are recorded."""
    server.script(Reply.tool("lookup", {"company": "acme"}, prompt_tokens=1000, completion_tokens=50),
                  Reply.final({"name": "Acme", "founded": 1999}, prompt_tokens=1200, completion_tokens=30))

    event = attempt(research(), "find", runtime(server))

    assert isinstance(event, StepSucceeded), event
    assert event.output == Company(name="Acme", founded=1999)
    tool_result = [m for m in server.requests[1].messages if m["role"] == "tool"]
    assert tool_result and "founded in 1999" in tool_result[0]["content"]
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    usage = event.usage
    assert (usage.input_tokens, usage.output_tokens, usage.requests, usage.tool_calls) == (2200, 80, 2, 1)
    assert usage.cost == pytest.approx((2200 * 1.0 + 80 * 2.0) / 1e6)


def test_a_tool_filtered_out_is_never_offered_to_the_model(server: ScriptedServer) -> None:
    """Given pipeline tools lookup and internal_only and tools_filter=['lookup'], then every request offers
    lookup (and the output tool) but never internal_only."""
    attempt(research(tools_filter=["lookup"]), "find", runtime(server))

    assert server.requests
    assert all("lookup" in r.tool_names and "internal_only" not in r.tool_names for r in server.requests)


def test_a_tool_that_raises_sends_its_error_to_the_model_and_the_step_goes_on(server: ScriptedServer) -> None:
    """Given a model that first calls lookup('boom') (which raises), when the step runs, then the error text
    reaches the model as a retry prompt, and the step still succeeds."""
    server.script(Reply.tool("lookup", {"company": "boom"}), Reply.tool("lookup", {"company": "acme"}))

    event = attempt(research(), "find", runtime(server))

    assert isinstance(event, StepSucceeded), event
    seen = " ".join(str(m.get("content")) for m in server.requests[1].messages if m["role"] == "tool")
    assert "registry is down" in seen and "ValueError" in seen


def test_a_tool_that_keeps_failing_ends_the_attempt_after_tool_retries(server: ScriptedServer) -> None:
    """Given a model that calls the failing tool again and again and tool_retries=1, then the attempt fails
    (not retryable) after 2 calls instead of looping forever."""
    server.script(*[Reply.tool("lookup", {"company": "boom"})] * 5)

    event = attempt(research(tool_retries=1), "find", runtime(server))

    assert isinstance(event, StepFailed)
    assert not event.error.retryable
    assert "lookup" in event.error.message and len(server.requests) == 2


def test_invalid_output_is_sent_back_to_the_model_and_the_retry_succeeds(server: ScriptedServer) -> None:
    """Given a first answer missing `founded`, when the step runs, then the model is asked again with the
    validation error and the second answer is returned; the transcript shows the retry."""
    server.script(Reply.final({"name": "Acme"}), Reply.final({"name": "Acme", "founded": 1999}))

    event = attempt(research(), "find", runtime(server))

    assert isinstance(event, StepSucceeded), event
    assert event.output.founded == 1999
    retry = [m for m in server.requests[1].messages if m["role"] == "tool"]
    assert retry and "founded" in retry[0]["content"]
    outcomes = [p.get("outcome") for m in event.transcript["messages"] for p in m["parts"]]
    assert "retried" in outcomes


def test_invalid_output_past_output_retries_fails_the_attempt_for_good(server: ScriptedServer) -> None:
    """Given output_retries=1 and only invalid answers, then the attempt fails, not retryable, after 2 requests."""
    server.script(*[Reply.final({"name": "Acme"})] * 4)

    event = attempt(research(output_retries=1), "find", runtime(server))

    assert isinstance(event, StepFailed) and not event.error.retryable
    assert len(server.requests) == 2


def test_tagent_style_tools_are_adapted(server: ScriptedServer) -> None:
    """Given a TAgent tool (state, args) -> (key, value), when the model calls it with args, then the tool sees
    the args and the attempt's state, and the model gets {key: value} back."""
    seen: dict[str, Any] = {}

    def remember(state: dict, args: dict) -> tuple[str, Any]:
        """Remember a fact under a key."""
        seen.update(state=dict(state), args=dict(args))
        return "fact", args["text"].upper()

    p = Pipeline("t", tools=[remember])
    p.step("s", goal="remember things", model="local:llama3")
    server.script(Reply.tool("remember", {"args": {"text": "acme"}}), Reply.say("done"))

    event = attempt(p, "s", runtime(server))

    assert isinstance(event, StepSucceeded), event
    assert seen["args"] == {"text": "acme"} and seen["state"]["goal"] == "remember things"
    tool_msg = [m for m in server.requests[1].messages if m["role"] == "tool"][0]
    assert '"fact"' in tool_msg["content"] and "ACME" in tool_msg["content"]
    schema = [t for t in server.requests[0].body["tools"] if t["function"]["name"] == "remember"][0]
    assert "args" in schema["function"]["parameters"]["properties"]


# -- provider errors -----------------------------------------------------------------------------


def test_429_with_retry_after_then_500_are_retried_and_the_step_succeeds(server: ScriptedServer) -> None:
    """Given a 429 asking to wait 1 s, then a 500, then a good answer, when the step runs, then the request is
    retried (after at least 1 s: longer than any back-off) within the same attempt, which succeeds."""
    server.script(Reply.error(429, headers={"Retry-After": "1"}), Reply.error(500))

    event = attempt(research(), "find", runtime(server, max_concurrent=2))

    assert isinstance(event, StepSucceeded), event
    assert len(server.requests) == 3
    assert server.requests[1].at - server.requests[0].at >= 0.95


def test_without_request_retries_a_500_fails_the_attempt_as_retryable(server: ScriptedServer) -> None:
    """Given request_retries=0 and a 500, then the attempt fails and is marked retryable for the step policy."""
    server.script(Reply.error(500))

    event = attempt(research(), "find", runtime(server, request_retries=0))

    assert isinstance(event, StepFailed) and event.error.retryable, event


def test_an_auth_error_is_not_retried(server: ScriptedServer) -> None:
    """Given a 401, then the attempt fails at once, not retryable (retrying cannot fix a bad key)."""
    server.script(Reply.error(401, "invalid api key"))

    event = attempt(research(), "find", runtime(server))

    assert isinstance(event, StepFailed) and not event.error.retryable
    assert len(server.requests) == 1


def test_the_step_retry_policy_recovers_from_a_transient_error_in_process(server: ScriptedServer) -> None:
    """Given request_retries=0, a 503 then a good answer, when the pipeline runs with max_retries=2, then the
    step succeeds on its second attempt."""
    server.script(Reply.error(503))
    cfg = RunConfig(endpoints={"local": {"base_url": server.base_url, "request_retries": 0}})

    result = asyncio.run(run_pipeline(research(retry_delay=0.01), config=cfg))

    assert result.success, result.summary()
    assert result.step_metadata["find"]["attempts"] == 2


# -- limits, models, transcripts -----------------------------------------------------------------


def test_local_runs_respect_max_concurrent_per_endpoint() -> None:
    """Given max_concurrent=2 and 6 concurrent agent steps on a slow server, then at most 2 requests are in flight."""
    with ScriptedServer(default=final_for({"name": "A", "founded": 1}, delay=0.1)) as server:
        p = Pipeline("many", max_concurrent_steps=6)
        for i in range(6):
            p.step(f"s{i}", goal="g", output_schema=Company, model="local:m", execution_mode=ExecutionMode.CONCURRENT)
        cfg = RunConfig(endpoints={"local": {"base_url": server.base_url, "max_concurrent": 2}})

        result = asyncio.run(run_pipeline(p, config=cfg))

    assert result.success, result.summary()
    assert server.max_in_flight == 2 and len(server.requests) == 6


def test_transcript_holds_prompts_tool_calls_and_output_but_never_the_api_key(server: ScriptedServer) -> None:
    """Given a tool whose result contains the API key, when the step runs, then the transcript has the system
    prompt, the tool call and result and the final output, and the key is replaced by [REDACTED]."""
    p = Pipeline("t", tools=[leak_key])
    p.step("s", goal="leak", model="local:llama3")
    server.script(Reply.tool("leak_key", {}), Reply.say("all done"))

    event = attempt(p, "s", runtime(server))

    text = repr(event.transcript)
    assert SECRET not in text and "[REDACTED]" in text
    kinds = [p["part_kind"] for m in event.transcript["messages"] for p in m["parts"]]
    assert kinds[:2] == ["system-prompt", "user-prompt"] and "tool-call" in kinds and "tool-return" in kinds
    assert kinds[-1] == "text" and event.transcript["model"] == "local:llama3"


def test_a_failed_attempt_keeps_its_transcript_and_usage(server: ScriptedServer) -> None:
    """Given an attempt that fails after one good exchange, then its event still carries usage and transcript."""
    server.script(Reply.tool("lookup", {"company": "acme"}), Reply.error(401))

    event = attempt(research(), "find", runtime(server))

    assert isinstance(event, StepFailed)
    assert event.usage is not None and event.usage.requests == 1
    assert event.transcript is not None and event.transcript["messages"]


def test_bad_model_strings_and_missing_keys_are_config_errors_that_say_what_to_do(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an unknown provider, or an endpoint whose key variable is unset, then the attempt fails, not
    retryable, with a message naming the model and what to configure."""
    p = Pipeline("t")
    p.step("a", goal="g", model="nosuch:model")
    p.step("b", goal="g", model="local:llama3")
    monkeypatch.delenv("LOCAL_API_KEY")

    unknown = attempt(p, "a", runtime(server))
    no_key = attempt(p, "b", runtime(server))

    assert isinstance(unknown, StepFailed) and not unknown.error.retryable
    assert "nosuch:model" in unknown.error.message and "endpoints" in unknown.error.message
    assert isinstance(no_key, StepFailed) and "$LOCAL_API_KEY" in no_key.error.message
    assert server.requests == []


def test_an_unknown_model_costs_nothing_and_a_known_one_is_priced_by_genai_prices() -> None:
    """Given responses from an unknown and from a known model, then the unknown costs 0 and the known one > 0."""
    from pydantic_ai._genai_prices import fill_response_cost
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.usage import RequestUsage

    from tagent_client.run.runners.usage import response_cost

    known = ModelResponse(parts=[TextPart("x")], model_name="gpt-4o-mini", provider_name="openai",
                          usage=RequestUsage(input_tokens=1_000_000, output_tokens=0))
    unknown = ModelResponse(parts=[TextPart("x")], model_name="my-own-llm", provider_name="openai",
                            provider_url="http://127.0.0.1:1/v1", usage=RequestUsage(input_tokens=1000))
    for response in (known, unknown):
        fill_response_cost(response)

    assert response_cost(known, "openai:gpt-4o-mini", {}) > 0
    assert response_cost(unknown, "local:my-own-llm", {}) == 0
    assert response_cost(unknown, "local:my-own-llm", {"local:my-own-llm": PriceOverride(input_per_mtok=3,
                                                                                          output_per_mtok=0)}) == 0.003


def test_errors_are_classified_for_the_step_retry_policy() -> None:
    """Given pydantic-ai's provider errors, then rate limits, 5xx, timeouts and connection errors are retryable
    and bad requests, auth errors and exhausted output retries are not."""
    from pydantic_ai.exceptions import ModelConnectionError, ModelHTTPError, UnexpectedModelBehavior

    from tagent_client.run.runners.models import mark

    assert is_retryable(mark(ModelHTTPError(429, "m")))
    assert is_retryable(mark(ModelHTTPError(502, "m")))
    assert is_retryable(mark(ModelConnectionError("m", "refused")))
    assert not is_retryable(mark(ModelHTTPError(400, "m")))
    assert not is_retryable(mark(ModelHTTPError(401, "m")))
    assert not is_retryable(mark(UnexpectedModelBehavior("Exceeded maximum retries (2) for output validation")))


def test_the_test_model_needs_no_server_and_records_usage() -> None:
    """Given model='test', when an agent step runs, then it completes offline with typed output and tokens."""
    p = Pipeline("offline")
    p.step("s", goal="g", output_schema=Company, model="test")

    result = asyncio.run(run_pipeline(p))

    assert result.success and isinstance(result.step_outputs["s"], Company)
    assert result.token_usage["s"].total_tokens > 0 and result.total_usage == result.token_usage["s"] and result.total_cost == 0


def test_endpoint_settings_reject_a_bad_url_and_bad_names() -> None:
    """Given an endpoint URL without a scheme, or an upper-case endpoint name, then the config is refused."""
    with pytest.raises(ValueError, match="http"):
        EndpointSettings(base_url="127.0.0.1:11434/v1")
    with pytest.raises(ValueError, match="endpoint name"):
        LLMConfig(endpoints={"Local": EndpointSettings()})
