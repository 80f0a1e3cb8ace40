"""The daemon's run spans (tagentd/runs/traces.py) as the run driver makes them, with an in-process executor.

What the workers are sent is `StepAttempt.traceparent`: with traces on, the run span's W3C traceparent; off,
None, and no span is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_executor import FakeExecutor, bare_driver
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tagent_client import Pipeline
from tagent_client.core.events import StepSucceeded
from tagent_client.define.plan import Plan
from tagent_client.run import tracing
from tagentd.runs.driver import RunDriver
from tagentd.runs.traces import RunTraces
from tagentd.worker import wire

pytestmark = pytest.mark.timeout(30)


def two_steps() -> Plan:
    pipeline = Pipeline("two")
    pipeline.task(lambda: 1, name="first")
    pipeline.task(lambda first: first + 1, name="second", depends_on=["first"])
    return pipeline.plan()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def make_driver(tmp_path: Path, exporter: InMemorySpanExporter | None) -> tuple[RunDriver, FakeExecutor]:
    """A run driver with the test as its workers; with traces when `exporter` is given (it gets the spans)."""
    driver = bare_driver(tmp_path)
    driver.executor = executor = FakeExecutor(on_result=driver.on_attempt, on_lost=driver.on_attempt)
    executor.start()
    if exporter is not None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        driver.traces = RunTraces(provider.get_tracer(tracing.SCOPE), driver.runs)
    return driver, executor


def test_each_attempt_carries_its_run_spans_traceparent_and_the_span_ends_with_the_run(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        # Given a driver with traces on
        driver, executor = make_driver(tmp_path, exporter)
        # When a run of two steps starts, and each step's worker reports it done
        run = await driver.submit_source("/p/two.py", "src", who="test", plan=two_steps())
        [(first, _)] = executor.sent.values()
        executor.finish(first.key, StepSucceeded(task=first.dispatch.task, attempt=1, output=1))
        executor.pump()
        [(second, _)] = executor.sent.values()
        executor.finish(second.key, StepSucceeded(task=second.dispatch.task, attempt=1, output=2))

        # Then the history names the run's trace, every attempt sent carries the run span's traceparent,
        # and the run's span ended with the run
        trace_entries = [e for e in run.history if e.what == "trace"]
        assert [e.data["why"] for e in trace_entries] == ["started"]
        trace_id, span_id = trace_entries[0].data["trace_id"], trace_entries[0].data["span_id"]
        assert run.detail().trace_id == trace_id
        assert first.traceparent == second.traceparent == run.traceparent
        assert run.traceparent.startswith(f"00-{trace_id}-{span_id}-")  # W3C: version-trace-parent-flags
        assert run.state.status.value == "completed"
        (span,) = exporter.get_finished_spans()
        assert span.name == "run two" and f"{span.context.span_id:016x}" == span_id
        assert span.attributes[tracing.OUTCOME] == "completed" and span.attributes[tracing.RUN_ID] == run.id

    asyncio.run(scenario())


def test_without_traces_attempts_carry_no_traceparent_and_the_history_no_trace(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Given a driver with traces off (the default)
        driver, executor = make_driver(tmp_path, None)
        # When a run starts
        run = await driver.submit_source("/p/two.py", "src", who="test", plan=two_steps())
        # Then its attempt carries no traceparent, nor does the task message a worker would get, and nothing
        # names a trace
        [(first, _)] = executor.sent.values()
        assert first.traceparent is None and run.traceparent is None
        task = wire.RunTask(run_id=run.id, source_hash="h", path="/p/two.py", target=None, source=None,
                            task=first.dispatch, params=first.params, traceparent=first.traceparent)
        assert b"traceparent" not in wire.encode(task)
        assert wire.to_worker_decoder.decode(wire.encode(task)) == task
        assert not [e for e in run.history if e.what == "trace"] and run.detail().trace_id is None

    asyncio.run(scenario())
