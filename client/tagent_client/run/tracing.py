"""Traces: an OpenTelemetry span for each run and each step attempt; pydantic-ai adds the LLM calls under them.

The tree, in process and through the daemon alike:

    run <pipeline>                      (run_pipeline here; the daemon's run driver there)
      step <step>                       one per attempt (run_task, here or in a worker)
        invoke_agent / chat <model>     pydantic-ai's own spans (gen_ai conventions), and its tool calls

Free when off. Nothing here imports OpenTelemetry at module level: `configured_tracer` looks for a tracer
provider only if `opentelemetry.trace` is already imported, and the callers check one value (`tracer is
None`) before making any span. A step attempt in a worker finds its parent in the task's W3C `traceparent`
(`parent_context`), which the daemon took from its run span (`traceparent_of`); in process, the run span is
handed to each attempt (`context_of`).

Attributes (`tagentd.*`): run id, pipeline, step, task, attempt, phase, outcome, tokens and cost where known;
a failed attempt or run has span status ERROR with the error's one line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.events import Dispatch, Event, StepFailed, StepSucceeded, StepTimedOut
from ..core.state import RunState, RunStatus, Usage

#: The instrumentation scope of every span tagentd makes.
SCOPE = "tagentd"

RUN_ID = "tagentd.run.id"
PIPELINE = "tagentd.pipeline"
STEP = "tagentd.step"
TASK = "tagentd.task"
ATTEMPT = "tagentd.attempt"
PHASE = "tagentd.phase"
OUTCOME = "tagentd.outcome"
INPUT_TOKENS = "tagentd.usage.input_tokens"
OUTPUT_TOKENS = "tagentd.usage.output_tokens"
REQUESTS = "tagentd.usage.requests"
COST = "tagentd.usage.cost_usd"

_FAILED_RUN = frozenset({RunStatus.FAILED, RunStatus.ROLLBACK_FAILED})


def configured_provider() -> Any | None:
    """This process's OpenTelemetry tracer provider if one has been set, else None.

    Never imports OpenTelemetry: a process that did not import `opentelemetry.trace` has no provider.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):  # the default: nobody set one
        return None
    return provider


def instrumentation(tracer_provider: Any | None = None) -> Any:
    """pydantic-ai's InstrumentationSettings for agent runs (LLM call and tool spans, gen_ai conventions)."""
    from pydantic_ai.models.instrumented import InstrumentationSettings

    return InstrumentationSettings(tracer_provider=tracer_provider)


def traceparent_of(span: Any) -> str:
    """The W3C traceparent header value that makes `span` the parent of spans in another process."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"]


def parent_context(traceparent: str | None) -> Any | None:
    """The OpenTelemetry context a W3C `traceparent` names (None: none given, or not a valid header)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def ids(span: Any) -> tuple[str, str]:
    """A span's trace id and span id, in hex (what the run's history keeps and `tagent status` shows)."""
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def remote_parent(trace_id: str, span_id: str) -> Any:
    """A context whose parent is the span (`trace_id`, `span_id`) made by another process or daemon life."""
    from opentelemetry import trace

    span_context = trace.SpanContext(trace_id=int(trace_id, 16), span_id=int(span_id, 16), is_remote=True,
                                     trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


# -- runs ----------------------------------------------------------------------------------------------------------


def start_run_span(tracer: Any, run_id: str, pipeline: str, *, context: Any = None, start_time: float | None = None,
                   **attributes: Any) -> Any:
    """Start the span of run `run_id` (not made current); `context` names its parent, else the current span."""
    attrs = {RUN_ID: run_id, PIPELINE: pipeline, **{f"tagentd.run.{k}": v for k, v in attributes.items()}}
    start_ns = int(start_time * 1e9) if start_time else None
    return tracer.start_span(f"run {pipeline}", context=context, attributes=attrs, start_time=start_ns)


def end_run_span(span: Any, state: RunState, outcome: str | None = None) -> None:
    """End a run's span: its status (or `outcome`, e.g. the daemon stopped first), usage, and error status."""
    from opentelemetry.trace import Status, StatusCode

    usage = Usage()
    for step in state.steps.values():
        usage = usage.add(step.usage)
    span.set_attributes(_usage_attributes(usage))
    span.set_attribute(OUTCOME, outcome or state.status.value)
    if outcome is None and state.status in _FAILED_RUN:
        span.set_status(Status(StatusCode.ERROR, state.error or state.status.value))
    span.end(end_time=int(state.finished_at * 1e9) if outcome is None and state.finished_at else None)


def context_of(span: Any) -> Any:
    """The OpenTelemetry context in which `span` is the parent of the spans started in it."""
    from opentelemetry import trace

    return trace.set_span_in_context(span)


@contextmanager
def within(parent: Any) -> Iterator[None]:
    """Make the context `parent` current while the body runs (None: leave the current one)."""
    if parent is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)


# -- step attempts -------------------------------------------------------------------------------------------------


@contextmanager
def attempt_span(tracer: Any, task: Dispatch, run_id: str, pipeline: str, parent: Any) -> Iterator[Any]:
    """The span of one step attempt, current while it runs (so pydantic-ai's spans are its children).

    Its parent is the run span in the context `parent` (a worker: `parent_context` of the task's traceparent;
    in process: `context_of` the run span), else the current span.
    End it with `end_attempt`; a cancelled attempt ends here with outcome "cancelled".
    """
    from opentelemetry import trace

    attributes = {RUN_ID: run_id, PIPELINE: pipeline, STEP: task.step, TASK: task.task, ATTEMPT: task.attempt,
                  PHASE: task.phase.value}
    span = tracer.start_span(f"step {task.step}", context=parent, attributes=attributes)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException:
        if span.is_recording():
            span.set_attribute(OUTCOME, "cancelled")
            span.end()
        raise


def end_attempt(span: Any, event: Event) -> None:
    """End an attempt's span with what became of it: outcome, usage, and status ERROR unless it succeeded."""
    from opentelemetry.trace import Status, StatusCode

    usage = getattr(event, "usage", None)
    if usage is not None:
        span.set_attributes(_usage_attributes(usage))
    if isinstance(event, StepSucceeded):
        span.set_attribute(OUTCOME, "succeeded")
    elif isinstance(event, StepFailed):
        span.set_attributes({OUTCOME: "failed", "error.type": event.error.type})
        span.set_status(Status(StatusCode.ERROR, f"{event.error.type}: {event.error.message}"[:500]))
    elif isinstance(event, StepTimedOut):
        span.set_attributes({OUTCOME: "timed_out", "error.type": "StepTimedOut"})
        span.set_status(Status(StatusCode.ERROR, f"timed out after {event.timeout}s"))
    span.end()


def _usage_attributes(usage: Usage) -> dict[str, Any]:
    return {INPUT_TOKENS: usage.input_tokens, OUTPUT_TOKENS: usage.output_tokens, REQUESTS: usage.requests,
            COST: usage.cost}
