"""The function runner: calls a step's Python function with its context and inputs.

Binding rules (by parameter name): `ctx` → the StepContext; a dependency's name
→ that dependency's output; `item` → the current PARALLEL_MERGE item; a submit
param's name → that param; `**kwargs` → all dependency outputs. A sync function
runs in a thread so it cannot stall the event loop; such a thread cannot be
cancelled, so it is registered while it runs and `sync_call_running` tells a
worker whether a timed-out step is still burning its thread. The CPU time a sync
call uses in its thread is added to `SYNC_CPU`'s accumulator when the caller set
one (a worker does, per attempt, to report the attempt's CPU seconds).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ValidationError

from ...define.binding import is_context
from ...define.step import PipelineStep
from ...errors import TagentError
from ..context import StepContext


class StepOutputError(TagentError):
    """A step returned something its output_schema rejects (not retryable: the same code returns the same thing)."""

    code = "bad_output"


class StepBindingError(TagentError, TypeError):
    """A step function has a parameter that nothing can fill."""

    code = "bad_signature"


#: (run_id, step_name, attempt, item_index) -> ident of the thread running that sync step call.
_sync_calls: dict[tuple[str, str, int, int | None], int] = {}


def sync_call_running(key: tuple[str, str, int, int | None]) -> bool:
    """Whether the sync call of (run_id, step_name, attempt, item_index) is still running in its thread."""
    return key in _sync_calls


#: Set (in the attempt's task) to a one-item list: each sync call of the attempt adds its thread's CPU seconds to
#: it, measured in that thread. Unset (the default): nothing is measured.
SYNC_CPU: ContextVar[list[float] | None] = ContextVar("SYNC_CPU", default=None)


def _tracked(key: tuple[str, str, int, int | None], fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    _sync_calls[key] = threading.get_ident()
    spent = SYNC_CPU.get()  # asyncio.to_thread runs this in a copy of the caller's context
    started = time.thread_time() if spent is not None else 0.0
    try:
        return fn(*args, **kwargs)
    finally:
        if spent is not None:
            spent[0] += time.thread_time() - started
        _sync_calls.pop(key, None)


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """A step function's signature, computed once (it is looked at on every call)."""
    return inspect.signature(fn)


@functools.lru_cache(maxsize=1024)
def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether a step function is an `async def`, found once (inspect's answer costs a few unwrappings per call)."""
    return inspect.iscoroutinefunction(fn)


def bind(fn: Callable[..., Any], ctx: StepContext, inputs: Mapping[str, Any], positional: list[Any] | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Arguments for `fn` by the binding rules; `positional` fill leading unbound parameters (merge, condition)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    extra = list(positional or [])
    for index, (name, param) in enumerate(_signature(fn).parameters.items()):
        if param.kind is param.VAR_KEYWORD:
            kwargs.update({k: v for k, v in inputs.items() if k not in kwargs})
            continue
        if param.kind is param.VAR_POSITIONAL:
            args.extend(extra)
            extra = []
            continue
        if is_context(index, name, param):
            value: Any = ctx
        elif name in inputs:
            value = inputs[name]
        elif name == "item":
            value = ctx.item
        elif extra:
            value = extra.pop(0)
        elif name in ctx.params:
            value = ctx.params[name]
        elif param.default is not param.empty:
            continue
        else:
            raise StepBindingError(
                f"step {ctx.step_name!r}: parameter {name!r} of {getattr(fn, '__name__', fn)!r} matches no dependency, "
                f"param or 'ctx'; rename it, give it a default, or add the dependency"
            )
        if param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return args, kwargs


async def call(fn: Callable[..., Any], ctx: StepContext, inputs: Mapping[str, Any], positional: list[Any] | None = None) -> Any:
    """Call `fn` (sync in a worker thread, async awaited) with bound arguments."""
    args, kwargs = bind(fn, ctx, inputs, positional)
    if _is_async(fn):
        return await fn(*args, **kwargs)
    key = (ctx.run_id, ctx.step_name, ctx.attempt, ctx.item_index)
    result = await asyncio.to_thread(_tracked, key, fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def check_output(step: PipelineStep, value: Any) -> Any:
    """The output validated against the step's output_schema (an instance of it), or as returned."""
    schema = step.output_schema
    if schema is None or isinstance(value, schema):
        return value
    try:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return schema.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "output"
        raise StepOutputError(
            f"step {step.name!r} returned output that does not match {schema.__name__}: {where}: {first.get('msg', exc)}"
        ) from None


async def run(step: PipelineStep, ctx: StepContext) -> Any:
    assert step.fn is not None
    return check_output(step, await call(step.fn, ctx, ctx.inputs))
