"""In-process runs: `run_pipeline` (async), on the same engine as the daemon (`run_agent`, sync: `agent_api.py`).

The runner is the engine's imperative shell: it carries out `Dispatch` as asyncio
tasks with real timeouts, `ScheduleRetry` as loop timers, `CancelTask` as task
cancellation, and feeds every outcome back to the machine as an event.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

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
from ..core.state import ErrorInfo, new_run_id
from ..define.binding import missing_params, with_defaults
from ..define.pipeline import Pipeline
from ..define.plan import StepKind
from ..errors import ConfigError, PipelineValidationError, describe, is_retryable
from .config import RunConfig, run_config
from .context import StepContext, constraints_of
from .llm import LLMConfig, LLMRuntime, model_name
from .outputs import output_data
from .runners.attempt import Attempt
from .runners.execute import coerce_inputs, execute
from .runners.function import StepOutputError
from .services import LocalServices, RunServices


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as ErrorInfo: type, message, retryable flag, traceback. Never raises: an exception whose
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
    return ErrorInfo(type=type(exc).__name__, message=message, retryable=retryable, traceback=trace)


def default_model(config_model: str | None) -> str | None:
    return model_name(config_model or os.environ.get("TAGENT_MODEL") or None)


def check_models(pipeline: Pipeline, model: str | None) -> None:
    """Fail before running anything if an agent step would have no model."""
    missing = [s.name for s in pipeline.steps.values()
               if s.kind is not StepKind.FUNCTION and not (s.model or pipeline.model or model)]
    if missing:
        raise ConfigError(
            f"agent step(s) {', '.join(missing)} of pipeline {pipeline.name!r} have no model: pass model= "
            f"(e.g. model='test' offline, or 'openai:gpt-4o-mini'), set it on the Pipeline, or set TAGENT_MODEL"
        )


async def run_task(pipeline: Pipeline, task: Dispatch, ctx: StepContext, model: str | None,
                   llm: LLMRuntime | None = None, *, as_data: bool = False) -> Event:
    """Run one dispatched task to an event: succeeded, failed, or timed out. Never raises (except cancellation).

    The output must meet the rules of `outputs.output_data` (else the attempt fails with StepOutputError);
    the event carries it as plain data with `as_data` (what a worker sends), else as the step returned it.
    An agent attempt's usage and transcript ride on the event, also when it fails.
    """
    started = time.time()
    record = Attempt()
    try:
        async with asyncio.timeout(task.timeout) as deadline:
            output, usage = await execute(pipeline, task, ctx, model=model, llm=llm, record=record)
    except TimeoutError as exc:
        if deadline.expired():
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
                         started_at=started, transcript=_transcript(record))


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
    )


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
    llm = LLMRuntime.local(LLMConfig(endpoints=cfg.endpoints, price_overrides=cfg.price_overrides),
                           api_key=cfg.api_key, request_limit=cfg.max_iterations)
    services = LocalServices()
    machine = RunMachine.new(plan, run_id or new_run_id(), params=params, now=time.time())
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

    async def attempt(task: Dispatch) -> None:
        ctx = make_context(pipeline, machine, task, services)
        event = await run_task(pipeline, task, ctx, run_model, llm)
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
    finally:
        services.bus.run_finished(machine.state.run_id)
        for timer in timers:
            timer.cancel()
        for job in running.values():
            job.cancel()
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)
    return PipelineResult.from_state(plan, machine.state, services.memory.get(machine.state.run_id))
