"""In-process runs through `run_pipeline` / `run_agent`: real asyncio, real timeouts, real retries.

Steps record what happened to them (times from time.monotonic(), attempts, contexts);
the tests then assert on those records and on the PipelineResult. Sleeping inside
a step is the work being timed; no test sleeps to wait for something.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from tagent_client import (
    DependencyType,
    ExecutionMode,
    Pipeline,
    PipelineResult,
    RetryableError,
    StepContext,
    run_agent,
    run_pipeline,
    when,
)
from tagent_client.errors import ConfigError
from tagent_client.run import local

pytestmark = pytest.mark.timeout(60)

CONCURRENT, SERIAL, PARALLEL_MERGE = ExecutionMode.CONCURRENT, ExecutionMode.SERIAL, ExecutionMode.PARALLEL_MERGE


class CompanyInfo(BaseModel):
    name: str
    employees: int = 0


def run(pipeline: Pipeline, params: dict[str, Any] | None = None, **options: Any) -> PipelineResult:
    """Run in a fresh event loop with an outer deadline, so a hang fails the test instead of stalling it."""
    return asyncio.run(asyncio.wait_for(run_pipeline(pipeline, params=params, **options), timeout=10))


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_steps_overlap_in_time() -> None:
    """Given two CONCURRENT steps that each await 0.3 s, when the run goes, then it takes about 0.3 s, not 0.6 s."""
    p = Pipeline("parallel")

    @p.task(execution_mode=CONCURRENT)
    async def left() -> str:
        await asyncio.sleep(0.3)  # ok-sleep: the step's own work (or a yield), not a wait for something
        return "L"

    @p.task(execution_mode=CONCURRENT)
    async def right() -> str:
        await asyncio.sleep(0.3)  # ok-sleep: the step's own work (or a yield), not a wait for something
        return "R"

    began = time.monotonic()
    result = run_agent(p)
    elapsed = time.monotonic() - began

    assert result.success, result.summary()
    assert result.step_outputs == {"left": "L", "right": "R"}
    assert 0.3 <= elapsed < 0.5


def test_serial_steps_never_overlap() -> None:
    """Given three SERIAL steps without dependencies (sync and async), when run, then their time spans do not overlap."""
    p = Pipeline("serial")
    spans: dict[str, tuple[float, float]] = {}

    def work(name: str):
        async def step() -> str:
            start = time.monotonic()
            await asyncio.sleep(0.05)  # ok-sleep: the step's own work (or a yield), not a wait for something
            spans[name] = (start, time.monotonic())
            return name
        return step

    def blocking() -> str:
        start = time.monotonic()
        time.sleep(0.05)  # the work itself: a blocking call in the step's thread  # ok-sleep: the step's own work (or a yield), not a wait for something
        spans["blocking"] = (start, time.monotonic())
        return "blocking"

    p.step("first", fn=work("first"), execution_mode=SERIAL)
    p.step("blocking", fn=blocking, execution_mode=SERIAL)
    p.step("third", fn=work("third"), execution_mode=SERIAL)

    result = run_agent(p)

    assert result.success, result.summary()
    ordered = sorted(spans.values())
    assert [n for n, _ in sorted(spans.items(), key=lambda kv: kv[1])] == ["first", "blocking", "third"]
    for (_, end), (next_start, _) in zip(ordered, ordered[1:]):
        assert end <= next_start


def test_fail_fast_cancels_a_running_step() -> None:
    """Given fail_fast and a step that would run 10 s, when another step fails, then the long one is cancelled at once."""
    p = Pipeline("ff", fail_fast=True)
    cancelled = threading.Event()

    @p.task(execution_mode=CONCURRENT)
    async def long_haul() -> None:
        try:
            await asyncio.sleep(10)  # ok-sleep: the step's own work (or a yield), not a wait for something
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @p.task(execution_mode=CONCURRENT)
    async def broken() -> None:
        await asyncio.sleep(0.01)  # ok-sleep: the step's own work (or a yield), not a wait for something
        raise ValueError("bad row 17")

    began = time.monotonic()
    result = run(p)

    assert time.monotonic() - began < 2
    assert cancelled.is_set()
    assert result.status == "failed"
    assert result.step_metadata["long_haul"]["status"] == "cancelled"
    assert "bad row 17" in result.error


# -- retries and timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [ConnectionError("connection reset"), RetryableError("rate limited")])
def test_retryable_error_is_retried_with_backoff_until_success(error: Exception) -> None:
    """Given a step that fails twice with a retryable error then succeeds (delay 0.05, backoff 2, jitter 0.2),
    then it COMPLETES after 3 attempts, each retry is scheduled within the backoff bounds, and none starts before
    its time. (How late a retry starts depends on the machine's load; only "not early" is promised.)"""
    p = Pipeline("retry")
    starts: list[float] = []
    ends: list[float] = []
    retries: list[tuple[float, float]] = []  # (when the step.retrying event came, its retry_at): Unix times

    @p.task(max_retries=2, retry_delay=0.05, retry_backoff=2.0, retry_jitter=0.2)
    def flaky(ctx: StepContext) -> str:
        starts.append(time.time())
        assert ctx.attempt == len(starts)
        if ctx.attempt < 3:
            ends.append(time.time())
            raise error
        return "ok"

    def on_event(topic: str, data: dict[str, Any]) -> None:
        if topic == "step.retrying":
            retries.append((time.time(), data["retry_at"]))

    result = run(p, on_event=on_event)

    assert result.success, result.summary()
    assert result.step_outputs["flaky"] == "ok"
    assert result.step_metadata["flaky"]["attempts"] == 3
    assert len(retries) == 2
    clock = 0.002  # time.time() read in different places: a little slack
    for n, base in [(0, 0.05), (1, 0.10)]:
        announced_at, retry_at = retries[n]
        # the delay lies in [base * (1 - jitter), base]: counted from after the failure, announced after it is set
        assert retry_at - ends[n] >= base * 0.8 - clock, f"retry {n + 1} at {retry_at - ends[n]:.3f}s for {base}s"
        assert retry_at - announced_at <= base + clock, f"retry {n + 1} set {retry_at - announced_at:.3f}s ahead"
        assert starts[n + 1] >= retry_at - clock, f"retry {n + 1} started {retry_at - starts[n + 1]:.3f}s early"


def test_non_retryable_error_is_not_retried() -> None:
    """Given max_retries=3, when the step raises ValueError, then it ran once and the run failed listing it."""
    p = Pipeline("fatal")
    calls: list[int] = []

    @p.task(max_retries=3, retry_delay=0.01)
    def parse(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("column 'price' is not a number")

    result = run(p)

    assert calls == [1]
    assert result.step_metadata["parse"]["attempts"] == 1
    assert not result.success and result.status == "failed"
    assert result.failed_steps == ["parse"]
    assert "ValueError" in result.error_details["parse"] and "price" in result.error_details["parse"]


def test_timed_out_step_is_retried_then_fails_the_run_naming_the_step() -> None:
    """Given timeout=0.1 and max_retries=2, when the step awaits 10 s, then three attempts time out
    and the run fails with an error naming the step and 'timed out', well before 10 s."""
    p = Pipeline("slow")
    attempts: list[int] = []

    @p.task(timeout=0.1, max_retries=2, retry_delay=0.01)
    async def crawl(ctx: StepContext) -> None:
        attempts.append(ctx.attempt)
        await asyncio.sleep(10)  # ok-sleep: the step's own work (or a yield), not a wait for something

    began = time.monotonic()
    result = run(p)

    assert time.monotonic() - began < 2
    assert attempts == [1, 2, 3]
    assert result.step_metadata["crawl"]["attempts"] == 3
    assert result.status == "failed"
    assert "crawl" in result.error and "timed out" in result.error


def test_a_retry_is_not_lost_when_the_wall_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a retry scheduled 0.05 s ahead, when the wall clock steps back 0.1 s before the timer fires,
    then the runner re-arms the timer and the retry still happens (instead of the run hanging)."""

    class SteppedClock:
        offset = 0.0

        def time(self) -> float:
            return time.time() - self.offset

    clock = SteppedClock()
    monkeypatch.setattr(local, "time", clock)
    p = Pipeline("clock")

    @p.task(max_retries=1, retry_delay=0.05, retry_jitter=0.0)
    async def flaky(ctx: StepContext) -> str:
        if ctx.attempt == 1:
            asyncio.get_running_loop().call_later(0.01, setattr, clock, "offset", 0.1)
            raise ConnectionError("reset")
        return "ok"

    result = run(p)

    assert result.success, result.summary()
    assert result.step_metadata["flaky"]["attempts"] == 2


def test_a_step_that_raises_cancelled_error_itself_fails_instead_of_hanging_the_run() -> None:
    """Given a step whose own code raises CancelledError (nobody cancelled it), then the step fails and the run ends."""
    p = Pipeline("self_cancel")

    @p.task()
    async def confused() -> None:
        raise asyncio.CancelledError()

    result = run(p)

    assert result.failed_steps == ["confused"]
    assert "CancelledError" in result.error_details["confused"]


# -- dependencies and fan-out ----------------------------------------------------------------------------


def test_skipped_hard_dependency_skips_its_dependents_with_the_reason() -> None:
    """Given `enrich` with a false condition and `publish` HARD-depending on it, then both are SKIPPED with reasons."""
    p = Pipeline("skips")
    ran: list[str] = []
    p.step("enrich", fn=lambda: ran.append("enrich"), condition=when("params.enrich") == True)  # noqa: E712
    p.step("publish", fn=lambda: ran.append("publish"), depends_on=["enrich"])

    result = run(p, {"enrich": False})

    assert ran == []
    assert result.success
    assert result.skipped_steps == {
        "enrich": "condition false: params.enrich == True",
        "publish": "upstream step 'enrich' skipped",
    }


def test_soft_dependency_runs_after_a_failure_and_sees_none() -> None:
    """Given `report` SOFT-depending on a failing `extra` (required=False), then report runs with extra=None."""
    p = Pipeline("soft")

    @p.task(required=False)
    def extra() -> None:
        raise ValueError("no data")

    @p.task(depends_on={"extra": DependencyType.SOFT})
    def report(extra: Any) -> str:
        return f"extra={extra!r}"

    result = run(p)

    assert result.success
    assert result.step_outputs == {"report": "extra=None"}
    assert result.failed_steps == ["extra"]


def test_parallel_merge_keeps_item_order_when_items_finish_in_reverse() -> None:
    """Given a PARALLEL_MERGE step over 5 items where later items finish first, then the output is in item order."""
    p = Pipeline("fan")
    finished: list[int] = []

    @p.task(execution_mode=PARALLEL_MERGE, over="params.ids")
    async def fetch(ctx: StepContext, item: int) -> int:
        assert ctx.item_index == item
        await asyncio.sleep((5 - item) * 0.03)
        finished.append(item)
        return item * 10

    result = run(p, {"ids": [0, 1, 2, 3, 4]})

    assert finished == [4, 3, 2, 1, 0]
    assert result.step_outputs["fetch"] == [0, 10, 20, 30, 40]
    assert result.final_output == [0, 10, 20, 30, 40]


def test_parallel_merge_with_a_merge_function() -> None:
    """Given merge=, then it gets the item outputs in item order and its return value is the step's output."""
    p = Pipeline("fan_merge")
    p.step("shout", fn=lambda item: item.upper(), execution_mode=PARALLEL_MERGE, over=["a", "b", "c"],
           merge=lambda outputs: "-".join(outputs))
    result = run(p)
    assert result.step_outputs["shout"] == "A-B-C"
    assert result.step_metadata["shout"]["attempts"] == 1


# -- the step context and binding ---------------------------------------------------------------------------


def test_context_fields_and_binding_by_parameter_name(caplog: pytest.LogCaptureFixture) -> None:
    """Given a step with ctx, a dependency parameter and a param parameter, then each gets the right value,
    attempt starts at 1, and ctx.log lines reach logging."""
    p = Pipeline("ctx", shared_context={"tone": "dry"})
    seen: dict[str, Any] = {}

    @p.task()
    def source() -> dict:
        return {"n": 21}

    @p.task(depends_on=["source"])
    async def use(ctx: StepContext, source: dict, region: str) -> int:
        seen.update(run_id=ctx.run_id, step=ctx.step_name, attempt=ctx.attempt, params=ctx.params,
                    shared=ctx.shared, inputs=ctx.inputs, region=region)
        ctx.log.info("working on %s", region)
        return source["n"] * 2

    with caplog.at_level(logging.INFO, logger="tagent.step.use"):
        result = run(p, {"region": "eu"}, run_id="run-ctx-1")

    assert result.run_id == "run-ctx-1"
    assert result.step_outputs["use"] == 42
    assert seen == {"run_id": "run-ctx-1", "step": "use", "attempt": 1, "params": {"region": "eu"},
                    "shared": {"tone": "dry"}, "inputs": {"source": {"n": 21}}, "region": "eu"}
    assert "working on eu" in caplog.messages


def test_sync_steps_run_in_a_worker_thread_and_async_steps_on_the_loop() -> None:
    """Given a sync and an async step, then both run; the sync one off the loop's thread, the async one on it."""
    p = Pipeline("kinds")
    threads: dict[str, int] = {}

    @p.task(execution_mode=CONCURRENT)
    def sync_step() -> str:
        threads["sync"] = threading.get_ident()
        return "sync"

    @p.task(execution_mode=CONCURRENT)
    async def async_step() -> str:
        threads["async"] = threading.get_ident()
        return "async"

    result = run(p)

    assert result.step_outputs == {"sync_step": "sync", "async_step": "async"}
    assert threads["async"] == threading.get_ident()
    assert threads["sync"] != threading.get_ident()


def test_output_schema_turns_a_returned_dict_into_the_model() -> None:
    """Given output_schema=CompanyInfo, when the function returns a dict, then the output is a CompanyInfo
    and dependents receive it as one."""
    p = Pipeline("schema")
    p.step("lookup", fn=lambda: {"name": "Acme", "employees": 12}, output_schema=CompanyInfo)

    @p.task(depends_on=["lookup"])
    def headline(lookup: CompanyInfo) -> str:
        assert isinstance(lookup, CompanyInfo)
        return f"{lookup.name} ({lookup.employees})"

    result = run(p)

    assert result.step_outputs["lookup"] == CompanyInfo(name="Acme", employees=12)
    assert result.final_output == "Acme (12)"


def test_output_schema_rejects_a_bad_dict_with_a_clear_message_and_no_retry() -> None:
    """Given output_schema=CompanyInfo, when the function returns employees='many', then the step fails once,
    naming the step, the schema and the field."""
    p = Pipeline("bad_schema")
    p.step("lookup", fn=lambda: {"name": "Acme", "employees": "many"}, output_schema=CompanyInfo, max_retries=2)

    result = run(p)

    message = result.error_details["lookup"]
    assert result.failed_steps == ["lookup"]
    assert result.step_metadata["lookup"]["attempts"] == 1
    assert "'lookup'" in message and "CompanyInfo" in message and "employees" in message


def test_memory_is_shared_between_the_steps_of_a_run() -> None:
    """Given `remember` saving a value and `recall` (after it) reading it, then recall sees it; missing keys give the default."""
    p = Pipeline("memory")

    @p.task()
    async def remember(ctx: StepContext) -> None:
        await ctx.memory.save("cursor", {"page": 3})

    @p.task(depends_on=["remember"])
    async def recall(ctx: StepContext) -> tuple:
        return (await ctx.memory.get("cursor"), await ctx.memory.get("nothing", "default"))

    result = run(p)

    assert result.step_outputs["recall"] == ({"page": 3}, "default")


# -- agent steps, run_agent and results -------------------------------------------------------------------------


def test_run_agent_with_a_goal_string_on_the_test_model() -> None:
    """Given a goal string and model='test', then run_agent runs one agent step offline and returns TAgent's
    result: the goal achieved, the agent's text as output, and the run's PipelineResult alongside."""
    result = run_agent("Summarise the news", model="test")

    assert result.goal_achieved, result.pipeline_result.summary()
    assert isinstance(result.output, str) and result.output
    assert list(result.pipeline_result.step_outputs) == ["agent"]
    assert result.pipeline_result.total_usage.requests >= 1


def test_agent_step_without_a_model_is_a_config_error_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an agent step and no model anywhere, then run_agent raises ConfigError and no step ran."""
    monkeypatch.delenv("TAGENT_MODEL", raising=False)
    ran: list[str] = []
    p = Pipeline("no_model")
    p.step("prepare", fn=lambda: ran.append("prepare"))
    p.step("write", goal="Write it", depends_on=["prepare"])

    with pytest.raises(ConfigError, match=r"step\(s\) write .*have no model"):
        run_agent(p)
    assert ran == []


def _company_research() -> Pipeline:
    p = Pipeline("company_research", description="Company analysis")
    p.step("web_search", goal="Find basic company info", output_schema=CompanyInfo,
           constraints=["Use reliable sources"], timeout=60, max_retries=2)
    p.step("reputation", goal="Check reputation", depends_on=["web_search"], execution_mode=ExecutionMode.CONCURRENT)

    @p.task(depends_on=["web_search"], execution_mode=ExecutionMode.CONCURRENT)
    def normalize(ctx: StepContext, web_search: CompanyInfo) -> dict:
        return {"slug": web_search.name.lower()}

    p.step("final_report", goal="Write the report", depends_on=["reputation", "normalize"])
    return p


def test_the_issue_example_runs_offline() -> None:
    """Given the company research example from the issue, when run on model='test', then every step completes
    and web_search's output is a CompanyInfo."""
    result = run_agent(_company_research(), model="test")

    assert result.success, result.summary()
    info = result.step_outputs["web_search"]
    assert isinstance(info, CompanyInfo)
    assert result.step_outputs["normalize"] == {"slug": info.name.lower()}
    assert result.final_output == result.step_outputs["final_report"]
    assert all(meta["attempts"] == 1 for meta in result.step_metadata.values())


def test_result_round_trips_through_json_with_schema_revalidation() -> None:
    """Given a finished run, when its result goes to JSON and back with schemas=, then outputs are equal
    and web_search is a CompanyInfo again (without schemas it stays a dict)."""
    result = run_agent(_company_research(), model="test")

    text = result.to_json()
    back = PipelineResult.from_json(text, schemas={"web_search": CompanyInfo})
    plain = PipelineResult.from_json(text)

    assert isinstance(back.step_outputs["web_search"], CompanyInfo)
    assert back.step_outputs == result.step_outputs
    assert back.final_output == result.final_output
    assert (back.status, back.run_id, back.step_metadata) == (result.status, result.run_id, result.step_metadata)
    assert plain.step_outputs["web_search"] == result.step_outputs["web_search"].model_dump(mode="json")
    assert PipelineResult.from_msgpack(result.to_msgpack(), schemas={"web_search": CompanyInfo}).step_outputs == result.step_outputs


def test_run_agent_inside_a_running_event_loop_says_to_await_run_pipeline() -> None:
    """Given a running event loop, when run_agent is called in it, then a RuntimeError says what to do instead."""

    async def inside() -> None:
        run_agent("hello", model="test")

    with pytest.raises(RuntimeError, match=r"await run_pipeline"):
        asyncio.run(inside())
