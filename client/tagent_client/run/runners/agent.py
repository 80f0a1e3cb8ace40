"""The LLM agent runner, on pydantic-ai.

The system prompt is the step's goal plus its own and the pipeline's constraints;
dependency outputs, shared context, params and the current item go in as one
JSON document; `output_schema` is the output type (plain text when absent), and
output that fails validation is sent back to the model up to the step's
`output_retries` times. The model is the step's, else the pipeline's, else the
run's (see models.py for model strings, endpoints and limits; tools.py for tools).

Whatever the outcome, the attempt's usage (tokens, requests, tool calls, cost)
and its scrubbed transcript are left in the `Attempt` record; a failure is
re-raised marked `retryable` or not for the step's retry policy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec

from ...core.result import to_builtins
from ...core.state import Usage
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ...errors import ConfigError
from ..context import StepContext, constraints_of
from ..llm import LLMRuntime, model_name
from .attempt import Attempt
from .broker_tools import broker_tools
from .early import early_admission
from .models import BuiltModel, mark, model_for
from .tools import is_tagent_style, step_tools
from .usage import attempt_usage


def resolve_model(pipeline: Pipeline, step: PipelineStep, default: str | None) -> str:
    model = step.model or pipeline.model or default
    if not model:
        raise ConfigError(
            f"agent step {step.name!r} of pipeline {pipeline.name!r} has no model: pass model= to the step or "
            f"Pipeline, run with model='test' (offline) or 'openai:gpt-4o-mini', or set TAGENT_MODEL"
        )
    return model_name(model) or model


def system_prompt(pipeline: Pipeline, step: PipelineStep) -> str:
    lines = [f"You are one step, {step.name!r}, of the pipeline {pipeline.name!r}.", f"Goal: {step.goal}"]
    if step.description:
        lines.append(f"Details: {step.description}")
    constraints = constraints_of(pipeline, step)
    if constraints:
        lines.append("Constraints:")
        lines += [f"- {c}" for c in constraints]
    lines.append("The user message holds the outputs of the steps you depend on and the run's context as JSON.")
    return "\n".join(lines)


def user_prompt(ctx: StepContext) -> str:
    document = {"inputs": ctx.inputs, "shared": ctx.shared, "params": ctx.params}
    if ctx.item_index is not None:
        document["item"] = ctx.item
    return indented_json(to_builtins(document))


def indented_json(data: Any) -> str:
    """`json.dumps(data, indent=1, default=str)`, the same text at a third of the cost: json's C encoder writes it
    compact (with an indent, json falls back to its Python encoder), and msgspec re-indents that text, copying
    every string and number as written. Data that is not JSON to msgspec (NaN, Infinity) takes json's own way."""
    try:
        return msgspec.json.format(json.dumps(data, default=str).encode(), indent=1).decode()
    except msgspec.DecodeError:
        return json.dumps(data, indent=1, default=str)


async def built_model(name: str, runtime: LLMRuntime) -> BuiltModel:
    """The model for a model string; built on first use off the loop (building may import an SDK)."""
    return runtime.models.get(name) or await asyncio.to_thread(model_for, name, runtime)


async def call(agent: Any, prompt: str, name: str, runtime: LLMRuntime, record: Attempt) -> Any:
    """One run of a pydantic-ai `agent` (on the model `name`) within the runtime's request limit: its output.

    Whatever the outcome, `record` is left with the model, the usage and the scrubbed transcript;
    a failure is re-raised marked `retryable` or not (models.mark).
    """
    from pydantic_ai import capture_run_messages
    from pydantic_ai.usage import UsageLimits

    record.model = name
    with capture_run_messages() as messages, early_admission(agent.model):
        try:
            limits = UsageLimits(request_limit=runtime.request_limit) if runtime.request_limit else None
            result = await agent.run(prompt, infer_name=False, usage_limits=limits)
        except Exception as exc:
            _keep(record, messages, name, runtime)
            mark(exc)
            raise
    _keep(record, result.all_messages(), name, runtime, tool_calls=result.usage.tool_calls)
    return result.output


async def run(pipeline: Pipeline, step: PipelineStep, ctx: StepContext, *, model: str | None = None,
              llm: LLMRuntime | None = None, record: Attempt | None = None) -> tuple[Any, Usage]:
    from pydantic_ai import Agent

    runtime = llm or LLMRuntime.local()
    record = record if record is not None else Attempt()
    name = resolve_model(pipeline, step, model)
    built = await built_model(name, runtime)
    prompt = system_prompt(pipeline, step)
    own_tools = pipeline.tools_for(step.name)
    key = ("agent", name, step.name, step.output_schema, prompt, step.output_retries, step.tool_retries,
           tuple(own_tools.items()))
    agent = runtime.agents.get(key)
    if agent is None:
        extra = {**runtime.builtin_tools, **broker_tools(ctx, step)}
        tools = step_tools(pipeline, step, ctx, extra)
        agent = Agent(
            built.model,
            output_type=step.output_schema or str,
            system_prompt=prompt,
            tools=tools,
            retries={"output": step.output_retries, "tools": step.tool_retries},
            name=runtime.agent_name(step.name),
        )
        if runtime.tracer_provider is not None:  # traces are on: LLM call and tool spans, under the attempt's
            agent.instrument = runtime.instrumentation()
        if not extra and not any(is_tagent_style(t) for t in own_tools.values()):
            runtime.agents[key] = agent  # nothing in it is bound to this attempt: reuse it (~1 ms a step)
    output = await call(agent, user_prompt(ctx), name, runtime, record)
    assert record.usage is not None
    return output, record.usage


def _keep(record: Attempt, messages: list[Any], model: str, runtime: LLMRuntime, tool_calls: int | None = None) -> None:
    from ..transcript import from_messages

    record.usage = attempt_usage(messages, model, runtime.config.price_overrides, tool_calls)
    record.transcript = from_messages(messages, runtime.config.secrets())
