"""Tools for agent steps: the pipeline's Python functions as pydantic-ai tools.

A step offers its agent the pipeline's tools and its own (`tools=`), narrowed by
`tools_filter`, plus the runtime's built-in tools (`LLMRuntime.builtin_tools`, where
the broker's send_message & co. plug in), narrowed the same way. A tool not
offered is never described to the model.

- A plain function (sync or async, typed, with a docstring) is described to the
  model by its signature and docstring, as pydantic-ai does.
- A TAgent-style tool, `def tool(state, args) -> (key, value) | None`, is detected
  by its signature (exactly the parameters `state` and `args`); the model passes
  `args` as an object, `state` is a dict private to the attempt (seeded with the
  goal, the dependency outputs, params and shared context), and the returned
  (key, value) is stored in it and shown to the model.
- A tool that raises does not end the step: the error goes back to the model as a
  retry prompt (pydantic-ai `ModelRetry`), at most the step's `tool_retries` times
  in a row per tool; past that the attempt fails.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic_ai import Tool
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolFailed

from ...core.result import to_builtins
from ...define.pipeline import Pipeline
from ...define.step import PipelineStep
from ..context import StepContext

PASS_THROUGH = (ModelRetry, ToolFailed, CallDeferred, ApprovalRequired)


def step_tools(pipeline: Pipeline, step: PipelineStep, ctx: StepContext,
               builtins: Mapping[str, Callable[..., Any]] = {}) -> list[Tool[Any]]:  # noqa: B006 - read only
    """The pydantic-ai tools the step's agent is offered."""
    chosen = dict(pipeline.tools_for(step.name))
    for name, fn in builtins.items():
        if step.tools_filter is None or name in step.tools_filter:
            chosen.setdefault(name, fn)
    state: dict[str, Any] | None = None
    tools = []
    for name, fn in chosen.items():
        if is_tagent_style(fn):
            if state is None:
                state = seed_state(step, ctx)
            fn = adapt_tagent_tool(fn, name, state)
        tools.append(Tool(guarded(fn, name), name=name, max_retries=step.tool_retries))
    return tools


def is_tagent_style(fn: Callable[..., Any]) -> bool:
    """A TAgent tool: its parameters are exactly (state, args)."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params == ["state", "args"]


def seed_state(step: PipelineStep, ctx: StepContext) -> dict[str, Any]:
    return {"goal": step.goal, **to_builtins(ctx.inputs), "params": dict(ctx.params), "shared": dict(ctx.shared)}


def adapt_tagent_tool(fn: Callable[..., Any], name: str, state: dict[str, Any]) -> Callable[..., Any]:
    """A TAgent `(state, args) -> (key, value)` tool as a function of one object argument, `args`."""

    def store(result: Any) -> Any:
        if result is None:
            return "done (no state change)"
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)):
            raise TypeError(f"TAgent tool {name!r} must return (key, value) or None, got {type(result).__name__}")
        key, value = result
        state[key] = value
        return {key: to_builtins(value)}

    if inspect.iscoroutinefunction(fn):
        async def call_async(args: dict[str, Any] | None = None) -> Any:
            return store(await fn(state, dict(args or {})))

        adapted: Callable[..., Any] = call_async
    else:
        def call_sync(args: dict[str, Any] | None = None) -> Any:
            return store(fn(state, dict(args or {})))

        adapted = call_sync
    adapted.__name__ = name
    adapted.__doc__ = (inspect.getdoc(fn) or f"The {name} tool.") + "\n\nPass the tool's arguments as the object `args`."
    return adapted


def guarded(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` with any exception it raises turned into a ModelRetry the model sees (pydantic-ai's own signals pass)."""

    def retry(exc: Exception) -> ModelRetry:
        text = (str(exc).strip().splitlines() or [""])[0][:500]
        return ModelRetry(f"tool {name!r} failed: {type(exc).__name__}: {text}; fix the arguments or try another way")

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except PASS_THROUGH:
                raise
            except Exception as exc:  # noqa: BLE001 - the model hears about it instead of the step dying
                raise retry(exc) from exc

        return call_async

    @functools.wraps(fn)
    def call_sync(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PASS_THROUGH:
            raise
        except Exception as exc:  # noqa: BLE001
            raise retry(exc) from exc

    return call_sync
