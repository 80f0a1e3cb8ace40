"""The TAgent adapter: `runner="tagent"` runs a step with the TAgent library's own agent loop.

TAgent (`pip install 'tagentd[tagent]'`, the `tagent` package on PyPI, tested with 0.7.1) plans and calls
tools itself through LiteLLM, so this runner translates: the goal and constraints and the run's context
become TAgent's goal, the step's tools (narrowed by tools_filter) are handed over in the calling
conventions TAgent's ToolExecutor understands (see `tagent_tool`), `output_schema` becomes TAgent's
`output_format`, and the model string becomes LiteLLM's `provider/model` form (`openai:gpt-4o` ->
`openai/gpt-4o`); tagentd endpoints and the daemon's request limits do not apply to TAgent's own LLM calls.

TAgent's `run_agent` is synchronous: it runs in a thread, after the library was imported in one
(tagent_library: once per process, quiet, offline prices). Its LLM responses and tool calls are counted as
they happen (tagent_library.Meter), so the attempt's usage is exact and also recorded when it fails.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
from collections.abc import Callable
from typing import Any, Dict  # noqa: UP035 - TAgent passes its state only to a parameter annotated typing.Dict[str, Any]

from pydantic import BaseModel, ConfigDict

from ...core.result import to_builtins
from ...core.state import Usage
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ...errors import ConfigError, TagentError
from ..context import StepContext
from ..llm import LLMRuntime
from .agent import resolve_model
from .attempt import Attempt
from .tagent_library import Meter, library, metered
from .tools import is_tagent_style

MAX_ITERATIONS = 20
#: pydantic-ai provider prefix -> LiteLLM provider prefix (where they differ).
LITELLM_PROVIDERS = {"google": "gemini", "google-gla": "gemini", "google-vertex": "vertex_ai", "openai-chat": "openai"}


class TAgentGoalNotAchieved(TagentError):
    """TAgent ended without achieving the step's goal (retryable: the next attempt may get there)."""

    code = "goal_not_achieved"
    retryable = True


class ToolArgs(BaseModel):
    """The arguments the model gave a `(state, args)` tool, all of them (TAgent builds it from its tool_args)."""

    model_config = ConfigDict(extra="allow")


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
    runtime = llm or LLMRuntime.local()
    name = resolve_model(pipeline, step, model)
    if record is not None:
        record.model = name
    target = litellm_model(name, runtime)
    prefix = name.partition(":")[0]
    endpoint = runtime.config.endpoints.get(prefix)
    api_key = os.environ.get(endpoint.api_key_env) if endpoint is not None and endpoint.api_key_env else None
    tagent = await library()
    meter = Meter(price=runtime.config.price_overrides.get(name))
    loop = asyncio.get_running_loop()
    tools = [tagent_tool(fn, tool, meter, ctx, loop) for tool, fn in pipeline.tools_for(step.name).items()]
    try:
        result = await metered(meter, tagent.run_agent, goal_text(pipeline, step, ctx), model=target,
                               api_key=api_key, max_iterations=MAX_ITERATIONS, tools=tools,
                               output_format=step.output_schema, verbose=False)
    finally:
        if record is not None:
            record.usage = meter.usage
    return final_output(step, result, meter), meter.usage


def final_output(step: PipelineStep, result: Any, meter: Meter) -> Any:
    """The step's output from TAgent's result; raises TAgentGoalNotAchieved when there is none."""
    output = getattr(result, "output", None)
    if not getattr(result, "goal_achieved", False):
        reason = (getattr(result, "failure_reason", None)
                  or (f"its last LLM call failed: {meter.last_error}" if meter.last_error else None)
                  or f"it stopped after {getattr(result, 'iterations_used', '?')} planning cycle(s) "
                     f"(max_iterations={MAX_ITERATIONS})")
        raise TAgentGoalNotAchieved(f"step {step.name!r}: TAgent did not achieve the goal: {reason}")
    if output is None:
        expected = step.output_schema.__name__ if step.output_schema is not None else "its final answer"
        raise TAgentGoalNotAchieved(f"step {step.name!r}: TAgent achieved the goal but could not produce "
                                    f"{expected} (its final answer did not validate 3 times)")
    if step.output_schema is None and isinstance(output, BaseModel):
        return output.model_dump(mode="json")  # TAgent's DefaultFinalOutput: plain data, the same in a worker
    return output


def tagent_tool(fn: Callable[..., Any], name: str, meter: Meter, ctx: StepContext,
                loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """`fn` as TAgent's ToolExecutor calls it, in TAgent's thread, each call counted in `meter`.

    TAgent fills a tool's parameters by name from the model's tool_args, hands its state only to a parameter
    `state: Dict[str, Any]` and builds a parameter annotated with a pydantic model from all the args, judging
    by annotation objects. So a plain tool shows it its own signature with string annotations resolved, and
    a TAgent-style `(state, args)` tool (however annotated) is shown as `(state: Dict[str, Any], args:
    ToolArgs)`, getting the args as a dict. An async tool runs on the step's event loop. A tool without a
    docstring gets one naming it (TAgent would leave it out of the plan, with a warning on stdout). A tool's
    exception is logged on the step's log, then TAgent records it as the task's result (`tool_error`) and
    goes on.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        meter.check()
        meter.usage = meter.usage.add(Usage(tool_calls=1))
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()
        except Exception as exc:
            ctx.log.warning("TAgent tool %r failed: %s: %s", name, type(exc).__name__, exc)
            raise
        return result

    if is_tagent_style(fn):
        def tool(state: Dict[str, Any], args: ToolArgs) -> Any:  # noqa: UP006 - see the import
            given = args.model_dump()
            if set(given) == {"args"} and isinstance(given["args"], dict):
                given = given["args"]  # the model nested them as {"args": {...}}, as TAgent's own examples do
            return call(state, given)

        tool.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
            inspect.Parameter("state", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Dict[str, Any]),  # noqa: UP006
            inspect.Parameter("args", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ToolArgs)])
    else:
        tool = functools.wraps(fn)(call)
        try:  # TAgent matches annotation objects: resolve string ones (from __future__ import annotations)
            tool.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
        except (NameError, SyntaxError, TypeError, ValueError):
            pass  # inspect.signature follows __wrapped__ to fn's own signature
    tool.__name__ = name
    tool.__doc__ = inspect.getdoc(fn) or f"The tool {name}."
    return tool


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
