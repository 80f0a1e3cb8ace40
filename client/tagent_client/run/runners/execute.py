"""`execute`: run one task of a step with its runner: a Python function, an LLM agent, or the TAgent adapter
(and a step's condition: its function, or its model's judgement, judge.py).

The single entry point used by both the in-process runner and the daemon's workers,
so a step behaves the same wherever it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ...core.events import Dispatch
from ...core.state import Phase, Usage
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ..context import StepContext
from . import function as function_runner

if TYPE_CHECKING:
    from ..llm import LLMRuntime
    from .attempt import Attempt


def coerce_inputs(pipeline: Pipeline, inputs: dict[str, Any]) -> dict[str, Any]:
    """Dependency outputs as their schema instances where the dependency has an output_schema."""
    return {name: coerce_input(pipeline, name, value) for name, value in inputs.items()}


def coerce_input(pipeline: Pipeline, name: str, value: Any) -> Any:
    """The output of step `name` as its schema instance if it has an output_schema (else, or if it does not fit, as is)."""
    step = pipeline.steps.get(name)
    schema = step.output_schema if step else None
    if schema is not None and value is not None and not isinstance(value, BaseModel):
        try:
            return schema.model_validate(value)
        except Exception:  # noqa: BLE001 - a SOFT dependency may hold partial data; pass it as is
            pass
    return value


async def child_params(step: PipelineStep, ctx: StepContext) -> dict[str, Any]:
    """The params of the child run a sub-pipeline step starts: `params=` (a dict, or a function bound like a
    step function), else the parent run's params. TypeError when the function returns anything but a dict."""
    if step.params is None:
        return dict(ctx.params)
    params = await function_runner.call(step.params, ctx, ctx.inputs) if callable(step.params) else step.params
    if not isinstance(params, Mapping):
        raise TypeError(f"step {step.name!r}: params= returned {type(params).__name__}, not a dict of the child run's params")
    return dict(params)


async def execute(pipeline: Pipeline, task: Dispatch, ctx: StepContext, *, model: str | None = None,
                  llm: LLMRuntime | None = None, record: Attempt | None = None) -> tuple[Any, Usage | None]:
    """Run one task; returns (output, usage). Raises whatever the step raises.

    `llm` holds endpoints, prices and the request limiter for agent steps; `record` receives an agent
    attempt's usage and transcript, also when it fails. What lives as long as the attempt (the event
    subscriptions of `ctx.communicator`) ends with it, however it ends.
    """
    try:
        return await _execute(pipeline, task, ctx, model=model, llm=llm, record=record)
    finally:
        ctx.end_attempt()


async def _execute(pipeline: Pipeline, task: Dispatch, ctx: StepContext, *, model: str | None,
                   llm: LLMRuntime | None, record: Attempt | None) -> tuple[Any, Usage | None]:
    step = pipeline.steps[task.step]
    if task.phase is Phase.CONDITION and step.condition_is_judged:
        from . import judge

        return await judge.decide(pipeline, step, ctx, model=model, llm=llm, record=record)
    if task.phase is Phase.COMPENSATE:
        from . import compensate

        return await compensate.run(pipeline, step, ctx, task.item, model=model, llm=llm, record=record)
    if task.phase is Phase.CONDITION:
        scope = {**ctx.inputs, "shared": ctx.shared, "params": ctx.params}
        return bool(await function_runner.call(step.condition, ctx, scope, positional=[scope])), None
    if task.phase is Phase.MERGE:
        merged = await function_runner.call(step.merge, ctx, ctx.inputs, positional=[task.item])
        return function_runner.check_output(step, merged), None
    if step.pipeline is not None:  # a sub-pipeline step: this task computes the child run's params; the shell starts it
        return await child_params(step, ctx), None
    if step.fn is not None:
        return await function_runner.run(step, ctx), None
    if step.runner == "tagent":
        from . import tagent as tagent_runner

        return await tagent_runner.run(pipeline, step, ctx, model=model, llm=llm, record=record)
    from . import agent as agent_runner

    return await agent_runner.run(pipeline, step, ctx, model=model, llm=llm, record=record)
