"""The TAgent adapter: `runner="tagent"` runs a step with the TAgent library's own agent loop.

TAgent (`pip install 'tagentd[tagent]'`, the `tagent` package on PyPI) plans and
calls tools itself through LiteLLM, so this runner only translates: the goal
and constraints become TAgent's goal, the step's tools (plain or TAgent-style
`(state, args) -> (key, value)`, narrowed by tools_filter) are handed over as
they are, `output_schema` becomes TAgent's `output_format`, and its token
statistics become the step's usage. Model strings are translated to LiteLLM's
`provider/model` form (`openai:gpt-4o` -> `openai/gpt-4o`); tagentd endpoints and
the daemon's request limits do not apply to TAgent's own LLM calls.

TAgent's `run_agent` is synchronous, so it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from ...core.result import to_builtins
from ...core.state import Usage
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ...errors import ConfigError, TagentError
from ..context import StepContext
from ..llm import LLMRuntime
from .agent import resolve_model
from .attempt import Attempt

NOT_INSTALLED = "runner='tagent' needs the TAgent library: pip install 'tagentd[tagent]'"
MAX_ITERATIONS = 20
#: pydantic-ai provider prefix -> LiteLLM provider prefix (where they differ).
LITELLM_PROVIDERS = {"google": "gemini", "google-gla": "gemini", "google-vertex": "vertex_ai", "openai-chat": "openai"}


class TAgentMissing(ConfigError):
    """The step asks for the TAgent runner but the `tagent` package is not installed (not retryable)."""


class TAgentGoalNotAchieved(TagentError):
    """TAgent ended without achieving the step's goal (retryable: the next attempt may get there)."""

    code = "goal_not_achieved"
    retryable = True


def load_tagent() -> Any:
    try:
        import tagent
    except ImportError as exc:
        if exc.name not in (None, "tagent") and not str(exc.name or "").startswith("tagent."):
            raise TAgentMissing(f"{NOT_INSTALLED} (importing it failed: {exc})") from None
        raise TAgentMissing(NOT_INSTALLED) from None
    if not callable(getattr(tagent, "run_agent", None)):
        raise TAgentMissing(f"{NOT_INSTALLED} (the installed 'tagent' has no run_agent)")
    return tagent


def litellm_model(name: str, runtime: LLMRuntime) -> str:
    """`openai:gpt-4o` -> `openai/gpt-4o`; a name with no ':' is passed as it is (LiteLLM's own form)."""
    prefix, sep, model = name.partition(":")
    if not sep:
        return name
    if prefix in runtime.config.endpoints and runtime.config.endpoints[prefix].base_url:
        raise ConfigError(f"runner='tagent' cannot use the tagentd endpoint {prefix!r} (model {name!r}): TAgent calls "
                          f"LLMs through LiteLLM; give a LiteLLM model name such as 'openai/gpt-4o-mini'")
    return f"{LITELLM_PROVIDERS.get(prefix, prefix)}/{model}"


def goal_text(pipeline: Pipeline, step: PipelineStep, ctx: StepContext) -> str:
    lines = [step.goal or step.description or f"Carry out step {step.name!r} of pipeline {pipeline.name!r}."]
    constraints = [*step.constraints, *pipeline.global_constraints]
    if constraints:
        lines += ["Constraints:", *(f"- {c}" for c in constraints)]
    lines += ["Context (JSON):", json.dumps(to_builtins({"inputs": ctx.inputs, "shared": ctx.shared,
                                                         "params": ctx.params}), default=str)]
    return "\n".join(lines)


async def run(pipeline: Pipeline, step: PipelineStep, ctx: StepContext, *, model: str | None = None,
              llm: LLMRuntime | None = None, record: Attempt | None = None) -> tuple[Any, Usage]:
    tagent = load_tagent()
    runtime = llm or LLMRuntime.local()
    name = resolve_model(pipeline, step, model)
    if record is not None:
        record.model = name
    target = litellm_model(name, runtime)
    prefix = name.partition(":")[0]
    endpoint = runtime.config.endpoints.get(prefix)
    api_key = os.environ.get(endpoint.api_key_env) if endpoint is not None and endpoint.api_key_env else None
    result = await asyncio.to_thread(
        tagent.run_agent, goal_text(pipeline, step, ctx), model=target, api_key=api_key,
        max_iterations=MAX_ITERATIONS, tools=list(pipeline.tools_for(step.name).values()),
        output_format=step.output_schema, verbose=False,
    )
    usage = tagent_usage(result)
    if record is not None:
        record.usage = usage
    if not getattr(result, "goal_achieved", True) and getattr(result, "output", None) is None:
        reason = getattr(result, "failure_reason", None) or "no reason given"
        raise TAgentGoalNotAchieved(f"step {step.name!r}: TAgent did not achieve the goal: {reason}")
    output = getattr(result, "output", result)
    return output, usage


def tagent_usage(result: Any) -> Usage:
    """TAgent's TokenStats (`result.stats.total`) as a Usage; zeros when it reports none."""
    total = getattr(getattr(result, "stats", None), "total", None)
    if total is None:
        return Usage()
    return Usage(input_tokens=int(getattr(total, "input_tokens", 0) or 0),
                 output_tokens=int(getattr(total, "output_tokens", 0) or 0),
                 cost=float(getattr(total, "cost", 0.0) or 0.0))
