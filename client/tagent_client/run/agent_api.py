"""`run_agent`: TAgent 0.7.1's entry point, extended to pipelines, on this project's own engine.

`run_agent(goal, config=None, model=..., api_key=None, max_iterations=20, tools=None, output_format=None,
verbose=False, crash_if_over_iterations=False)` takes TAgent's arguments and returns an `AgentResult` with
the fields of TAgent's `TaskBasedAgentResult`. It runs a one-step agent pipeline in this process with the
agent runner (pydantic-ai), not the tagent package. `run_agent(pipeline, config=None, **overrides)` runs a
pipeline and returns its `PipelineResult`; settings come from `config`, then the keyword arguments, then
each step's own (`config.run_config`). Both are synchronous; inside a running event loop, await
`run_pipeline(...)` instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..core.result import PipelineResult
from ..define.pipeline import Pipeline
from ..errors import ConfigError, RunFailed
from .config import config_dict
from .local import run_pipeline

#: The step `run_agent(goal)` runs, and the options a goal also takes as step options.
AGENT_STEP = "agent"
STEP_OPTIONS = frozenset({"output_schema", "constraints", "tools_filter", "timeout", "max_retries", "output_retries",
                          "tool_retries"})


class ModelUsage(BaseModel):
    """TAgent's `TokenUsage`: the tokens and cost of one model (or of all, in `stats.total`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    model: str = ""
    cost: float = 0.0


class AgentStats(BaseModel):
    """TAgent's `TokenStats`: usage per model string, and in total."""

    by_model: dict[str, ModelUsage] = {}
    total: ModelUsage = ModelUsage()


class AgentResult(BaseModel):
    """What `run_agent(goal, ...)` returns: TAgent's `TaskBasedAgentResult` fields, from the one-step run.

    `output`: the `output_format` instance (or the agent's text without one; None when the goal was not
    achieved). `goal_achieved`: the step completed. `planning_cycles`: attempts made; `iterations_used`:
    attempts after the first (0 after a first-time success, as in TAgent). `total_tasks`,
    `completed_tasks`, `failed_tasks`: the tool calls the agent made, and whether they ended in an output.
    `state_summary`: the step's metadata; `memory_summary`: what the step saved to memory (none here).
    `failure_reason`: the step's error. `stats`: tokens and cost. `pipeline_result`: the whole PipelineResult.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    output: Any = None
    goal_achieved: bool = False
    iterations_used: int = 0
    planning_cycles: int = 0
    total_tasks: int = 0
    completed_tasks: int = 0
    failed_tasks: int = 0
    state_summary: dict[str, Any] = {}
    memory_summary: dict[str, Any] = {}
    failure_reason: str | None = None
    stats: AgentStats = AgentStats()
    pipeline_result: PipelineResult | None = None

    @classmethod
    def from_pipeline_result(cls, result: PipelineResult, model: str) -> AgentResult:
        meta = result.step_metadata.get(AGENT_STEP, {})
        usage = meta.get("usage") or {}
        tokens_in, tokens_out = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        total = ModelUsage(input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
                           model=model, cost=float(usage.get("cost", 0.0)))
        attempts = int(meta.get("attempts") or 0)
        tool_calls = int(usage.get("tool_calls", 0))
        return cls(
            output=result.step_outputs.get(AGENT_STEP),
            goal_achieved=result.success,
            iterations_used=max(attempts - 1, 0),
            planning_cycles=attempts,
            total_tasks=tool_calls,
            completed_tasks=tool_calls if result.success else 0,
            failed_tasks=0 if result.success else tool_calls,
            state_summary=meta,
            failure_reason=meta.get("error"),
            stats=AgentStats(by_model={model: total} if total.total_tokens or total.cost else {}, total=total),
            pipeline_result=result,
        )


def _printer(topic: str, data: dict[str, Any]) -> None:
    """verbose=True: one line per run event."""
    step = data.get("step")
    print(f"tagent: {topic}{f' {step}' if step else ''}")  # noqa: T201 - verbose output is the point


def run_agent(
    goal_or_pipeline: str | Pipeline,
    config: Any = None,
    model: str | None = None,
    api_key: str | None = None,
    max_iterations: int | None = None,
    tools: list[Callable[..., Any]] | None = None,
    output_format: type[BaseModel] | None = None,
    verbose: bool | None = None,
    crash_if_over_iterations: bool | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Run a goal as TAgent does (returns AgentResult) or a pipeline (returns PipelineResult); see the module doc.

    `config`: a RunConfig, a dict, or a TAgent config object; the other arguments override it. `model`
    defaults to the config's, then $TAGENT_MODEL (not TAgent's "gpt-4": an unset model is an error).
    `max_iterations`: model requests each agent attempt may make (TAgent: planning cycles). Past it the
    goal is not achieved; with `crash_if_over_iterations=True`, RunFailed is raised instead. `tools`: plain
    functions or TAgent-style `(state, args)` tools. `options`: other `run_pipeline` keywords
    (`max_concurrent_steps`, `fail_fast`, ...) and, for a goal, step options (`constraints`, `timeout`, ...).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run_agent() cannot run inside an event loop; use 'await run_pipeline(...)' there")
    base = config_dict(config)
    given = {"tools": tools, "output_format": output_format, "verbose": verbose,
             "crash_if_over_iterations": crash_if_over_iterations}
    agent = {k: v if v is not None else base.get(k) for k, v in given.items()}
    if agent["verbose"]:
        options.setdefault("on_event", _printer)
    if isinstance(goal_or_pipeline, Pipeline):
        if agent["output_format"] is not None:
            raise ConfigError("output_format= is for a goal; give a pipeline's steps output_schema= instead")
        pipeline = goal_or_pipeline
        if agent["tools"]:
            pipeline = Pipeline(pipeline)
            pipeline.tools.extend(agent["tools"])
        return asyncio.run(run_pipeline(pipeline, config, params=params, model=model, api_key=api_key,
                                        max_iterations=max_iterations, **options))
    step_options = {k: options.pop(k) for k in list(options) if k in STEP_OPTIONS}
    if agent["output_format"] is not None:
        step_options["output_schema"] = agent["output_format"]
    pipeline = Pipeline(AGENT_STEP).step(AGENT_STEP, goal=goal_or_pipeline, tools=list(agent["tools"] or []),
                                         **step_options)
    result = asyncio.run(run_pipeline(pipeline, config, params=params, model=model, api_key=api_key,
                                      max_iterations=max_iterations, **options))
    meta = result.step_metadata.get(AGENT_STEP, {})
    if agent["crash_if_over_iterations"] and "UsageLimitExceeded" in (meta.get("error") or ""):
        raise RunFailed(f"run_agent: the agent used up max_iterations before reaching its goal: {meta['error']}")
    named = model or base.get("model") or os.environ.get("TAGENT_MODEL") or ""  # stats are keyed as TAgent's: as given
    return AgentResult.from_pipeline_result(result, named)


#: TAgent's name for the result of `run_agent(goal)`.
TaskBasedAgentResult = AgentResult
