"""The judged condition: a CONDITIONAL step with constraints but no condition= asks its model whether to run.

The step's `name#condition` task (docs/semantics.md, "When a step is decided") comes here. The model is
the step's, by the same precedence as an agent step (step, pipeline, run, daemon default). It sees the
step's goal, its constraints as the condition, and its dependencies' outputs as JSON, each cut to an
equal share of `EVIDENCE_CHARS` with a marker saying how much was left out; it answers a `Judgement`.
The task's output is `{"decision": bool, "reason": str, "model": str}` (`core/judged.py` reads it);
the call's usage and transcript count toward the step like an agent attempt's.

On the offline `test` model (pydantic-ai's TestModel) the decision is always True and the reason "a":
TestModel fills a field from its schema's first example, and `decision` lists True first.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from ...core.result import to_builtins
from ...core.state import Usage
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ..context import StepContext
from ..llm import LLMRuntime
from .agent import built_model, call, resolve_model
from .attempt import Attempt

#: How many characters of dependency output the model sees in all (each dependency gets an equal share).
EVIDENCE_CHARS = 12_000
#: The longest reason kept (it becomes a skip reason and an event field).
REASON_CHARS = 300


class Judgement(BaseModel):
    """What the model answers."""

    decision: bool = Field(description="true: every condition holds, run the step; false: skip it",
                           examples=[True, False])
    reason: str = Field(description="one line: why, citing what in the outputs decided it")


def system_prompt(pipeline: Pipeline, step: PipelineStep) -> str:
    lines = [f"You decide whether one step, {step.name!r}, of the pipeline {pipeline.name!r} runs."]
    if step.goal:
        lines.append(f"The step's goal: {step.goal}")
    lines.append("Run it only if every one of these conditions holds:")
    lines += [f"- {c}" for c in step.constraints]
    lines.append("Judge from the outputs of the steps it depends on, in the user message. Answer decision true "
                 "to run the step or false to skip it, and a one-line reason.")
    return "\n".join(lines)


def evidence(ctx: StepContext) -> str:
    """The dependencies' outputs as the model sees them, within `EVIDENCE_CHARS`."""
    if not ctx.inputs:
        return "The step depends on no other step: judge the conditions as they stand."
    share = EVIDENCE_CHARS // len(ctx.inputs)
    parts = []
    for name, output in ctx.inputs.items():
        text = json.dumps(to_builtins(output), indent=1, default=str, ensure_ascii=False)
        parts.append(f"Output of step {name!r}:\n{truncated(text, share)}")
    return "\n\n".join(parts)


def truncated(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a marker saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... truncated: {len(text) - limit} more characters not shown]"


def one_line(reason: str) -> str:
    text = " ".join(reason.split()) or "no reason given"
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


async def decide(pipeline: Pipeline, step: PipelineStep, ctx: StepContext, *, model: str | None = None,
                 llm: LLMRuntime | None = None, record: Attempt | None = None) -> tuple[dict[str, Any], Usage]:
    """Ask the step's model whether its constraints hold: `({"decision", "reason", "model"}, usage)`.

    Raises ConfigError when no model is known, and a model's errors marked retryable or not (the
    condition task then follows the step's retry policy).
    """
    from pydantic_ai import Agent

    runtime = llm or LLMRuntime.local()
    record = record if record is not None else Attempt()
    name = resolve_model(pipeline, step, model)
    built = await built_model(name, runtime)
    prompt = system_prompt(pipeline, step)
    key = ("condition", name, step.name, prompt, step.output_retries)  # everything the Agent is built from
    agent = runtime.agents.get(key)
    if agent is None:
        agent = runtime.agents[key] = Agent(
            built.model, output_type=Judgement, system_prompt=prompt,
            retries={"output": step.output_retries}, name=runtime.agent_name(f"{step.name}#condition"),
        )
    judgement: Judgement = await call(agent, evidence(ctx), name, runtime, record)
    assert record.usage is not None
    return {"decision": judgement.decision, "reason": one_line(judgement.reason), "model": name}, record.usage
