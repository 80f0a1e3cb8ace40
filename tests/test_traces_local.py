"""Traces of in-process runs: run -> step attempt -> LLM call spans, read from OpenTelemetry's in-memory exporter.

`run_pipeline` makes spans only when this process has set a tracer provider; the `traced` fixture sets one
for the test and puts the default (none) back after it, so no other test in the process is traced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tagent_client import Pipeline, run_pipeline
from tagent_client.run import tracing
from tagent_client.run.context import StepContext

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider that keeps every finished span in memory, as this process's global one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # set_tracer_provider works only once per process
    yield exporter
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    assert span.parent is not None, f"span {span.name!r} has no parent"
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


def research_pipeline() -> Pipeline:
    """An agent step on pydantic-ai's offline `test` model, then a function step that fails for good."""
    p = Pipeline("research", model="test")
    p.step("summarise", goal="Summarise the news")

    @p.task(depends_on=["summarise"], max_retries=1, retry_delay=0.01)
    def publish(ctx: StepContext) -> None:
        raise ConnectionError(f"attempt {ctx.attempt}: the site is down")

    return p


def test_run_step_and_llm_spans_nest_with_their_attributes(traced: InMemorySpanExporter) -> None:
    """Given a tracer provider and a run whose agent step succeeds and whose next step fails twice,
    when the run ends, then there is one run span, a step span per attempt under it, pydantic-ai's
    LLM call span under the agent step's span, and the failed attempts' spans have error status."""
    result = asyncio.run(run_pipeline(research_pipeline()))
    assert result.status == "failed"

    spans = traced.get_finished_spans()
    (run,) = by_name(spans, "run research")
    assert run.parent is None
    assert run.attributes[tracing.RUN_ID] == result.run_id
    assert run.attributes[tracing.OUTCOME] == "failed"
    assert run.status.status_code is StatusCode.ERROR

    (summarise,) = by_name(spans, "step summarise")
    assert parent_of(summarise, spans) is run
    assert summarise.attributes[tracing.STEP] == "summarise"
    assert summarise.attributes[tracing.ATTEMPT] == 1
    assert summarise.attributes[tracing.OUTCOME] == "succeeded"
    assert summarise.attributes[tracing.INPUT_TOKENS] > 0
    assert summarise.status.status_code is StatusCode.UNSET

    llm_calls = [s for s in spans if s.name.startswith("chat ")]
    assert llm_calls, f"no LLM call span among {[s.name for s in spans]}"
    for call in llm_calls:
        ancestor = parent_of(call, spans)
        while ancestor is not summarise and ancestor.parent is not None:
            ancestor = parent_of(ancestor, spans)
        assert ancestor is summarise
        assert call.attributes["gen_ai.request.model"] == "test"
        assert call.attributes["gen_ai.usage.input_tokens"] > 0

    publish = by_name(spans, "step publish")
    assert [s.attributes[tracing.ATTEMPT] for s in publish] == [1, 2]
    for attempt in publish:
        assert parent_of(attempt, spans) is run
        assert attempt.attributes[tracing.OUTCOME] == "failed"
        assert attempt.status.status_code is StatusCode.ERROR
        assert "the site is down" in attempt.status.description
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}


def test_a_child_run_span_is_a_child_of_its_parent_run_span(traced: InMemorySpanExporter) -> None:
    """Given a sub-pipeline step, when the run ends, then the child run's span hangs under the parent run's span
    (as through the daemon, which starts the child after the attempt that computed its params)."""
    child = Pipeline("child")
    child.task(lambda: 1, name="one")
    parent = Pipeline("parent")
    parent.step("sub", pipeline=child)

    result = asyncio.run(run_pipeline(parent))
    assert result.status == "completed"

    spans = traced.get_finished_spans()
    (child_run,) = by_name(spans, "run child")
    (parent_run,) = by_name(spans, "run parent")
    assert parent_of(child_run, spans) is parent_run
    assert parent_of(by_name(spans, "step sub")[0], spans) is parent_run
    assert parent_of(by_name(spans, "step one")[0], spans) is child_run


def test_without_a_tracer_provider_no_span_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given no tracer provider (the default), when a run with an agent step ends, then nothing tried to make
    a span or to instrument the agent."""

    def no_span(*args: object, **kwargs: object) -> None:
        raise AssertionError("a span was made with traces off")

    monkeypatch.setattr(tracing, "start_run_span", no_span)
    monkeypatch.setattr(tracing, "attempt_span", no_span)
    monkeypatch.setattr(tracing, "instrumentation", no_span)
    assert tracing.configured_provider() is None
    result = asyncio.run(run_pipeline(research_pipeline()))
    assert result.step_metadata["summarise"]["status"] == "completed"
    assert "the site is down" in result.error_details["publish"]
