"""Running a step's compensation (docs/semantics.md, "Compensation"), a task of phase COMPENSATE.

A function compensation is called like a step function: `ctx` is its context, and the step's
output fills a parameter named `output` or else its first parameter that nothing else fills
(`def cancel_flight(ctx, booking)`); the output is an instance of the step's `output_schema`
if it has one. An agent compensation (`compensate="Cancel the booking"`) is an agent whose goal is
that text and whose input is the step's output, under the step's name. What a compensation
returns is not kept: its success or failure is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.state import Usage
from ...define.step import PipelineStep
from . import function as function_runner

if TYPE_CHECKING:
    from ...define.pipeline import Pipeline
    from ..context import StepContext
    from ..llm import LLMRuntime
    from .attempt import Attempt


def _as_schema(step: PipelineStep, output: Any) -> Any:
    schema = step.output_schema
    if schema is None or output is None or isinstance(output, schema):
        return output
    try:
        return schema.model_validate(output)
    except Exception:  # noqa: BLE001 - hand over the data as it is
        return output


async def run(pipeline: Pipeline, step: PipelineStep, ctx: StepContext, output: Any, *, model: str | None = None,
              llm: LLMRuntime | None = None, record: Attempt | None = None) -> tuple[Any, Usage | None]:
    """Undo `step`, whose output was `output`; returns (None, usage)."""
    output = _as_schema(step, output)
    if callable(step.compensate):
        await function_runner.call(step.compensate, ctx, {"output": output}, positional=[output])
        return None, None
    from . import agent as agent_runner

    undo = PipelineStep(name=step.name, goal=str(step.compensate), model=step.model, constraints=list(step.constraints),
                        description=f"You undo what step {step.name!r} did earlier in this run (the run failed or was "
                                    f"cancelled after it); its output is the input {step.name!r}.")
    ctx.inputs = {step.name: output}
    _, usage = await agent_runner.run(pipeline, undo, ctx, model=model, llm=llm, record=record)
    return None, usage
