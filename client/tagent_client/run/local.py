"""In-process runs: `run_pipeline` (async), on the same engine as the daemon (`run_agent`, sync: `agent_api.py`).

The runner is the engine's imperative shell: it carries out `Dispatch` as asyncio
tasks with real timeouts, `ScheduleRetry` as loop timers, `CancelTask` as task
cancellation, and feeds every outcome back to the machine as an event.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from ..core.children import MAX_DEPTH, charged_attempt, child_outcome, child_run_id, refusal
from ..core.engine import RunMachine
from ..core.events import (
    Action,
    CancelTask,
    Dispatch,
    Emit,
    Event,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
)
from ..core.result import PipelineResult
from ..core.state import ErrorInfo, Phase, new_run_id
from ..define.binding import missing_params, with_defaults
from ..define.pipeline import Pipeline
from ..define.subpipeline import depth_problem
from ..errors import ConfigError, PipelineValidationError, TagentError, describe, is_retryable, retry_after_of
from . import tracing
from .additions import pipeline_for
from .breakers import BreakerRules, LocalBreakers
from .config import RunConfig, run_config
from .context import StepContext, constraints_of
from .dependency import LocalDependencies
from .llm import LLMConfig, LLMRuntime, model_name
from .outputs import output_data
from .runners.attempt import Attempt
from .runners.execute import coerce_input, coerce_inputs, execute
from .runners.function import StepOutputError
from .services import LocalServices, RunServices


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as ErrorInfo: type, message, retryable flag, traceback, the wait it asks for before a retry
    (`errors.retry_after_of`). Never raises: an exception whose
    `__str__` or `retryable` raises is still described (see errors.describe)."""
    try:
        message = str(exc).strip() or type(exc).__name__
    except Exception:  # noqa: BLE001 - the step's exception is broken; say so rather than lose the step
        message = describe(exc)
    try:
        retryable = is_retryable(exc)
    except Exception:  # noqa: BLE001
        retryable = False
    try:
        trace: str | None = "".join(traceback.format_exception(exc))[-4000:]
    except Exception:  # noqa: BLE001
        trace = None
    try:
        wait = retry_after_of(exc) if retryable else None
    except Exception:  # noqa: BLE001
        wait = None
    return ErrorInfo(type=type(exc).__name__, message=message, retryable=retryable, traceback=trace, retry_after=wait)


def default_model(config_model: str | None) -> str | None:
    return model_name(config_model or os.environ.get("TAGENT_MODEL") or None)


def check_models(pipeline: Pipeline, model: str | None) -> None:
    """Fail before running anything if an agent step, a judged condition or an agent-goal compensation would
    have no model."""
    missing = [s.name for s in pipeline.steps.values()
               if s.uses_model and not (s.model or pipeline.model or model)]
    if missing:
        raise ConfigError(
            f"agent step(s) {', '.join(missing)} of pipeline {pipeline.name!r} have no model: pass model= "
            f"(e.g. model='test' offline, or 'openai:gpt-4o-mini'), set it on the Pipeline, or set TAGENT_MODEL"
        )


async def run_task(pipeline: Pipeline, task: Dispatch, ctx: StepContext, model: str | None,
                   llm: LLMRuntime | None = None, *, as_data: bool = False, tracer: Any = None,
                   trace_parent: Any = None) -> Event:
    """Run one dispatched task to an event: succeeded, failed, or timed out. Never raises (except cancellation).

    The output must meet the rules of `outputs.output_data` (else the attempt fails with StepOutputError);
    the event carries it as plain data with `as_data` (what a worker sends), else as the step returned it.
    An agent attempt's usage and transcript ride on the event, also when it fails.
    With a `tracer` (tracing.py), the attempt has a span, a child of `trace_parent` (an OpenTelemetry context;
    None: the current span).
    """
    if tracer is None:
        return await _run_task(pipeline, task, ctx, model, llm, as_data)
    with tracing.attempt_span(tracer, task, ctx.run_id, pipeline.name, trace_parent) as span:
        event = await _run_task(pipeline, task, ctx, model, llm, as_data)
        tracing.end_attempt(span, event)
    return event


async def _run_task(pipeline: Pipeline, task: Dispatch, ctx: StepContext, model: str | None,
                    llm: LLMRuntime | None, as_data: bool) -> Event:
    started = time.time()
    record = Attempt()
    deadline: asyncio.Timeout | None = None
    try:
        pipeline = pipeline_for(pipeline, task)
        if task.timeout is None:  # no timer to arm (most steps): no Timeout to enter and leave
            output, usage = await execute(pipeline, task, ctx, model=model, llm=llm, record=record)
        else:
            async with asyncio.timeout(task.timeout) as deadline:
                output, usage = await execute(pipeline, task, ctx, model=model, llm=llm, record=record)
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            return StepTimedOut(task=task.task, attempt=task.attempt, timeout=task.timeout)
        return _failed(task, exc, started, record)
    except Exception as exc:  # noqa: BLE001 - every step error becomes an event
        return _failed(task, exc, started, record)
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # cancelled by CancelTask or shutdown: nobody waits for this result
        # the step itself raised CancelledError: report it, or the run would wait forever
        return _failed(task, exc, started, record)
    try:
        data = output_data(task.step, output)
    except StepOutputError as exc:
        error = ErrorInfo(type=type(exc).__name__, message=str(exc), retryable=False)
        return StepFailed(task=task.task, attempt=task.attempt, error=error, started_at=started, usage=usage,
                          transcript=_transcript(record))
    return StepSucceeded(task=task.task, attempt=task.attempt, output=data if as_data else output, usage=usage,
                         started_at=started, transcript=_transcript(record), added=ctx.added)


def _failed(task: Dispatch, exc: BaseException, started: float, record: Attempt) -> StepFailed:
    return StepFailed(task=task.task, attempt=task.attempt, error=error_info(exc), started_at=started,
                      usage=record.usage, transcript=_transcript(record))


def _transcript(record: Attempt) -> dict[str, Any] | None:
    if record.transcript is None:
        return None
    return {"model": record.model, "messages": record.transcript}


def make_context(pipeline: Pipeline, machine: RunMachine, task: Dispatch, services: RunServices) -> StepContext:
    return StepContext(
        services=services,
        run_id=machine.state.run_id,
        pipeline=pipeline.name,
        step_name=task.step,
        attempt=task.attempt,
        params=machine.state.params,
        shared=machine.plan.shared_context,
        inputs=coerce_inputs(pipeline, task.inputs),
        item=task.item,
        item_index=task.item_index,
        task=task.task,
        constraints=constraints_of(pipeline, machine.specs[task.step]),
        decode=functools.partial(coerce_input, pipeline),
        definition=pipeline,
    )


#: How deep the run on this task is nested: 0 for a top-level run, 1 for its children, ...
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("tagent_run_depth", default=0)


async def run_child(pipeline: Pipeline, machine: RunMachine, task: Dispatch, params: dict[str, Any], cfg: RunConfig,
                    model: str | None) -> Event:
    """Run the child of a sub-pipeline task in this loop, as a nested run (core/children.py has the rules):
    its id comes from the task's charged attempt, and its end is the task's outcome."""
    spec = machine.specs[task.step]
    assert spec.child is not None
    refused = refusal(task.step, spec.child, params, items=len(machine.state.steps[task.step].items or ()),
                      depth=_DEPTH.get() + 1)
    if refused is not None:
        return StepFailed(task=task.task, attempt=task.attempt, error=refused)
    state = machine.state.tasks[task.task]
    child_id = child_run_id(machine.state.run_id, task.task, charged_attempt(state))
    child = pipeline.steps[spec.name].pipeline
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        result = await run_pipeline(child, cfg, params=params, model=model, run_id=child_id)
    except TagentError as exc:  # the child cannot start (e.g. params it lacks): the attempt fails, not the parent run
        return StepFailed(task=task.task, attempt=task.attempt, error=error_info(exc))
    finally:
        _DEPTH.reset(token)
    return child_outcome(task.task, task.attempt, result)


async def run_pipeline(
    pipeline: Pipeline,
    config: RunConfig | Mapping[str, Any] | Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    model: str | None = None,
    api_key: str | None = None,
    max_iterations: int | None = None,
    max_concurrent_steps: int | None = None,
    fail_fast: bool | None = None,
    run_id: str | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> PipelineResult:
    """Run `pipeline` in this process and return its result (never raises for step failures).

    `config`: a RunConfig, a dict of its fields, or a TAgent-style config (an object with `to_dict()`);
    keyword arguments override it. `params` are the run's submit params (by keyword).
    Raises PipelineValidationError for a bad definition or a function parameter that
    `params` do not fill, and ConfigError for an agent step without a model, before any step runs.
    """
    cfg = run_config(config, model=model, api_key=api_key, max_iterations=max_iterations,
                     max_concurrent_steps=max_concurrent_steps, fail_fast=fail_fast)
    plan = pipeline.plan()
    too_deep = depth_problem(plan, MAX_DEPTH - _DEPTH.get())
    if too_deep:
        raise PipelineValidationError(plan.name, [too_deep])
    params = with_defaults(plan, params)
    unfilled = missing_params(plan, params)
    if unfilled:
        raise PipelineValidationError(plan.name, unfilled)
    overrides: dict[str, Any] = {}
    if cfg.max_concurrent_steps is not None:
        overrides["max_concurrent_steps"] = cfg.max_concurrent_steps
    if cfg.fail_fast is not None:
        overrides["fail_fast"] = cfg.fail_fast
    if overrides:
        import msgspec

        plan = msgspec.structs.replace(plan, **overrides)
    run_model = default_model(cfg.model)
    check_models(pipeline, run_model)
    breakers = LocalBreakers(BreakerRules(default=cfg.breaker, endpoints=cfg.endpoints, named=cfg.breakers))
    llm = LLMRuntime.local(LLMConfig(endpoints=cfg.endpoints, price_overrides=cfg.price_overrides),
                           api_key=cfg.api_key, request_limit=cfg.max_iterations, breakers=breakers)
    services = LocalServices(breakers=breakers)
    machine = RunMachine.new(plan, run_id or new_run_id(), params=params, now=time.time())
    provider = tracing.configured_provider()  # None unless this process set an OpenTelemetry tracer provider
    tracer = run_span = trace_parent = None
    if provider is not None:  # the run's span: every attempt's parent (a child run's too)
        llm.tracer_provider = provider
        tracer = provider.get_tracer(tracing.SCOPE)
        run_span = tracing.start_run_span(tracer, machine.state.run_id, plan.name)
        trace_parent = tracing.context_of(run_span)
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    running: dict[str, asyncio.Task[None]] = {}
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = []
    armed: set[float] = set()  # due times with a timer still pending

    def fire(at: float) -> None:
        armed.discard(at)
        inbox.put_nowait(TimerFired())

    def arm(at: float) -> None:
        if at not in armed:
            armed.add(at)
            timers.append(loop.call_later(max(0.0, at - time.time()), fire, at))

    def lend(task: str, attempt: int, lent: bool) -> None:
        carry_out(machine.lend_slot(task, attempt, lent, time.time()))

    dependencies = services.dependencies = LocalDependencies(machine, lend)

    async def attempt(task: Dispatch) -> None:
        ctx = make_context(pipeline, machine, task, services)
        event = await run_task(pipeline, task, ctx, run_model, llm, as_data=machine.specs[task.step].child is not None,
                               tracer=tracer, trace_parent=trace_parent)
        if isinstance(event, StepSucceeded) and machine.specs[task.step].child is not None and task.phase is Phase.RUN:
            with tracing.within(trace_parent):  # the child run's span is a child of this run's
                event = await run_child(pipeline, machine, task, event.output, cfg, run_model)
        services.bus.settle((machine.state.run_id, task.task, task.attempt), event)
        inbox.put_nowait(event)
        if running.get(task.task) is asyncio.current_task():
            del running[task.task]

    def carry_out(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                running[action.task] = loop.create_task(attempt(action), name=f"{machine.state.run_id}:{action.task}")
            elif isinstance(action, CancelTask):
                job = running.pop(action.task, None)
                if job is not None:
                    job.cancel()
                services.bus.settle((machine.state.run_id, action.task, action.attempt), None)
            elif isinstance(action, ScheduleRetry):
                arm(action.at)
            elif isinstance(action, Emit):
                services.bus.publish(action.topic, action.data)
                if on_event is not None:
                    on_event(action.topic, action.data)

    services.bus.run_started(machine.state.run_id, plan.name, list(plan.capabilities))
    try:
        carry_out(machine.start(time.time()))
        while not machine.finished:
            event = await inbox.get()
            carry_out(machine.handle(event, time.time()))  # an early timer comes back as a new ScheduleRetry
            dependencies.changed()  # steps waiting in ctx.dependency look again
    finally:
        services.bus.run_finished(machine.state.run_id)
        for timer in timers:
            timer.cancel()
        for job in running.values():
            job.cancel()
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)
        if run_span is not None:
            tracing.end_run_span(run_span, machine.state, None if machine.finished else "interrupted")
    return PipelineResult.from_state(plan, machine.state, services.memory.get(machine.state.run_id))
