"""The LLM agent runner, on pydantic-ai.

The system prompt is the step's goal plus its own and the pipeline's constraints;
dependency outputs, shared context, params and the current item go in as one
JSON document; `output_schema` is the output type (plain text when absent).
The model is the step's, else the pipeline's, else the run's; `test` is
pydantic-ai's offline test model.
"""

from __future__ import annotations

import json
from typing import Any

from ..context import StepContext
from ..errors import ConfigError
from ..pipeline import Pipeline, PipelineStep
from ..result import to_builtins
from ..state import Usage

OUTPUT_RETRIES = 2


def resolve_model(pipeline: Pipeline, step: PipelineStep, default: str | None) -> str:
    model = step.model or pipeline.model or default
    if not model:
        raise ConfigError(
            f"agent step {step.name!r} of pipeline {pipeline.name!r} has no model: pass model= to the step or "
            f"Pipeline, run with model='test' (offline) or 'openai:gpt-4o-mini', or set TAGENT_MODEL"
        )
    return model


def build_model(name: str) -> Any:
    """A pydantic-ai model object (or name) for a model string."""
    if name == "test":
        from pydantic_ai.models.test import TestModel

        return TestModel()
    return name


def system_prompt(pipeline: Pipeline, step: PipelineStep) -> str:
    lines = [f"You are one step, {step.name!r}, of the pipeline {pipeline.name!r}.", f"Goal: {step.goal}"]
    if step.description:
        lines.append(f"Details: {step.description}")
    constraints = [*step.constraints, *pipeline.global_constraints]
    if constraints:
        lines.append("Constraints:")
        lines += [f"- {c}" for c in constraints]
    lines.append("The user message holds the outputs of the steps you depend on and the run's context as JSON.")
    return "\n".join(lines)


def user_prompt(ctx: StepContext) -> str:
    document = {"inputs": ctx.inputs, "shared": ctx.shared, "params": ctx.params}
    if ctx.item_index is not None:
        document["item"] = ctx.item
    return json.dumps(to_builtins(document), indent=1, default=str)


async def run(pipeline: Pipeline, step: PipelineStep, ctx: StepContext, *, model: str | None = None) -> tuple[Any, Usage]:
    from pydantic_ai import Agent, Tool

    name = resolve_model(pipeline, step, model)
    tools = [Tool(fn) for fn in pipeline.tools_for(step.name).values()]
    agent = Agent(
        build_model(name),
        output_type=step.output_schema or str,
        system_prompt=system_prompt(pipeline, step),
        tools=tools,
        retries=OUTPUT_RETRIES,
    )
    result = await agent.run(user_prompt(ctx))
    used = result.usage
    usage = Usage(
        input_tokens=used.input_tokens or 0,
        output_tokens=used.output_tokens or 0,
        requests=used.requests or 0,
        tool_calls=getattr(used, "tool_calls", 0) or 0,
    )
    return result.output, usage
