"""A step's context makes its memory, its logger and its list of added steps on first use: a step that touches
none of them (most function steps) costs its worker a few attribute writes, not three objects and a logger
lookup per attempt. A step that uses them sees no difference."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tagent_client import Pipeline, run_pipeline
from tagent_client.run.context import StepContext


def test_a_context_nobody_touches_makes_no_memory_logger_or_additions() -> None:
    """Given a fresh context, when the step reads only its inputs, then its memory, logger and additions were never
    made, and the result carries no added steps."""
    ctx = StepContext(services=None, run_id="r", pipeline="p", step_name="s", attempt=1, params={}, shared={},  # type: ignore[arg-type]
                      inputs={"a": 1})
    assert ctx.inputs == {"a": 1}
    assert not {"memory", "log", "additions"} & set(vars(ctx))
    assert ctx.added == []


async def plan(ctx: StepContext) -> str:
    ctx.log.info("planning %d", 2)
    await ctx.memory.save("planned", 2)
    ctx.add_step("extra", fn=extra, depends_on=["plan"])
    return "planned"


async def extra() -> str:
    return "done"


def test_a_step_that_logs_saves_and_adds_steps_still_does(caplog: pytest.LogCaptureFixture) -> None:
    """Given a step that logs, saves to the run's memory and adds a step, when the pipeline runs in process, then
    the line is logged, the value saved and the added step run."""
    pipeline = Pipeline("lazy_context")
    pipeline.step("plan", fn=plan)
    with caplog.at_level(logging.INFO, logger="tagent.step.plan"):
        result = asyncio.run(run_pipeline(pipeline))
    assert result.success, result.error
    assert "planning 2" in caplog.messages
    assert result.saved_memories == {"planned": 2}
    assert result.step_outputs["extra"] == "done"


async def quick() -> str:
    return "quick"


def test_only_a_step_with_a_timeout_arms_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a step without a timeout and one with timeout=5, when the pipeline runs, then only the second enters an
    asyncio timeout (the first costs no Timeout object), and both complete."""
    from tagent_client.run import local  # noqa: PLC0415

    armed: list[float | None] = []
    real_timeout = asyncio.timeout

    def spy(delay: float | None) -> asyncio.Timeout:
        armed.append(delay)
        return real_timeout(delay)

    monkeypatch.setattr(local.asyncio, "timeout", spy)
    pipeline = Pipeline("timers")
    pipeline.step("free", fn=quick)
    pipeline.step("bounded", fn=quick, timeout=5, depends_on=["free"])
    result = asyncio.run(run_pipeline(pipeline))
    assert result.success, result.error
    assert armed == [5]
