"""A `PipelineStep` (the user's objects) as a `StepSpec` (plain data): what `Pipeline.plan()` and
`ctx.add_step` hand the engine."""

from __future__ import annotations

from typing import Any

from . import binding, subpipeline
from .conditions import Condition
from .plan import RetrySpec, StepSpec
from .step import PipelineStep, callable_name, function_ref, schema_ref


def spec_of(step: PipelineStep, pipeline_tools: list[str]) -> StepSpec:
    """The step as plain data; functions, schemas and tools are named (`module:qualname`, tool names)."""
    cond = step.condition
    compensate = step.compensate
    return StepSpec(
        name=step.name,
        kind=step.kind,
        deps=step.dependencies,
        mode=step.execution_mode,
        goal=step.goal,
        description=step.description,
        constraints=list(step.constraints),
        model=step.model,
        output_retries=step.output_retries,
        tool_retries=step.tool_retries,
        tools=pipeline_tools + [callable_name(t) for t in step.tools],
        tools_filter=list(step.tools_filter) if step.tools_filter is not None else None,
        output_schema=schema_ref(step.output_schema) if step.output_schema is not None else None,
        timeout=step.timeout,
        isolated=step.isolated,
        resources=dict(step.resources or {}),
        retry=RetrySpec(
            max_retries=step.max_retries,
            delay=step.retry_delay,
            backoff=step.retry_backoff,
            max_delay=step.retry_max_delay,
            jitter=step.retry_jitter,
        ),
        condition=cond.to_data() if isinstance(cond, Condition) else None,
        condition_is_callable=cond is not None and not isinstance(cond, Condition),
        over=list(step.over) if isinstance(step.over, tuple) else step.over,
        has_merge=step.merge is not None,
        data_fields={k: list(v) for k, v in step.data_fields.items()},
        required=step.required,
        final=step.final,
        runner=step.runner,
        function=function_ref(step.fn) if step.fn is not None else None,
        needs_params=binding.param_names(step.fn, step.dependencies) if step.fn is not None else [],
        compensate=function_ref(compensate) if callable(compensate) else None,
        compensate_goal=compensate if isinstance(compensate, str) else None,
        compensate_timeout=step.compensate_timeout,
        compensate_retries=step.compensate_retries,
        **child_fields(step),
    )


def child_fields(step: PipelineStep) -> dict[str, Any]:
    """A sub-pipeline step's child plan and params (define/subpipeline.py); nothing for other steps."""
    if step.pipeline is None:
        return {}
    params, computed = subpipeline.child_params_of(step)
    return {"child": step.pipeline.plan(), "child_params": params, "child_params_callable": computed}
