"""Run one agent step in memory, so that the first real one in a process does not pay for pydantic's lazy work.

Importing pydantic-ai is not all a first agent step waits for: building its message type adapters, the
OpenAI client's response models and the output tool's schema take another 0.3-0.7 s (seconds on a busy
machine) the first time. `warm_agent_path` runs a one-step agent pipeline through the same runner as a real
step (`tagent_client.run.local.run_task`: agent, OpenAI chat model, output validation, usage and price, transcript),
against an httpx2 MockTransport (the HTTP client the OpenAI SDK uses) that answers like an OpenAI-compatible server. No socket, no network, no thread
left behind: the worker template calls it before it forks (see tagentd.executor.template).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any


def warm_agent_path() -> None:
    """One agent step against an in-memory model. Raises whatever goes wrong (the caller decides it is optional)."""
    asyncio.run(_one_step())
    if threading.active_count() != 1:
        raise RuntimeError(f"the warm-up left {threading.active_count() - 1} thread(s) running")


def _answer(request: Any) -> Any:
    """A chat.completions reply that calls the request's output tool with a valid value."""
    import httpx2 as httpx

    body = json.loads(request.content or b"{}")
    tool = next(t["function"]["name"] for t in body.get("tools") or [] if t["function"]["name"].startswith("final_result"))
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": json.dumps({"text": "ok", "n": 1})}}]}
    return httpx.Response(200, json={
        "id": "chatcmpl-warm", "object": "chat.completion", "created": 0, "model": body.get("model", "warm"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })


async def _one_step() -> None:
    import httpx2 as httpx
    from openai import AsyncOpenAI
    from pydantic import BaseModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from tagent_client.core.events import Dispatch, StepSucceeded
    from tagent_client.core.state import Phase
    from tagent_client.define.pipeline import Pipeline
    from tagent_client.run.context import StepContext
    from tagent_client.run.llm import LLMRuntime
    from tagent_client.run.local import run_task
    from tagent_client.run.runners.models import BuiltModel, LimitedModel
    from tagent_client.run.services import LocalServices

    class Note(BaseModel):
        text: str
        n: int

    pipeline = Pipeline("warm_up")
    pipeline.step("think", goal="Warm up", output_schema=Note, model="warm:up", max_retries=0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(_answer)) as http:
        client = AsyncOpenAI(base_url="http://warm.invalid/v1", api_key="warm", http_client=http, max_retries=0)
        model = OpenAIChatModel("warm", provider=OpenAIProvider(openai_client=client))
        runtime = LLMRuntime()
        runtime.models["warm:up"] = BuiltModel(LimitedModel(model, endpoint=None, settings=None, limiter=None), None)
        task = Dispatch(task="think", step="think", phase=Phase.RUN, attempt=1, inputs={}, timeout=30)
        ctx = StepContext(services=LocalServices(), run_id="warm", pipeline="warm_up", step_name="think", attempt=1,
                          params={}, shared={}, inputs={}, item=None, item_index=None, task="think")
        event = await run_task(pipeline, task, ctx, None, runtime, as_data=True)
    if not isinstance(event, StepSucceeded):
        raise RuntimeError(f"the warm-up step did not succeed: {getattr(event, 'error', event)}")
