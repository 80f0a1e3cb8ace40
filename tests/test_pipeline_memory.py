"""`PipelineMemory` (issue 13, point 3): what `ctx.memory` is, by the design documents' names.

`save_step_result` / `get_step_result` keep a step's result in the run's memory (durable
through the daemon: it survives a kill -9 while a later step runs); `share_with_pipeline`
hands data to another pipeline, whose steps read it with `get_shared`; what the steps saved
is `PipelineResult.learned_facts` (step results) and `saved_memories` (the rest), equal in-process and through the daemon.
"""

from __future__ import annotations

import runpy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client import PipelineMemory, PipelineResult, run_agent

REMEMBERING = """
    import asyncio
    import os

    from tagent_client import Pipeline

    pipeline = Pipeline("remembering")


    @pipeline.task(max_retries=0)
    async def gather(ctx):
        await ctx.memory.save_step_result("gather", {"pages": 3})
        await ctx.memory.save("note", "kept")
        await ctx.memory.share_with_pipeline("reader", "latest", {"from": "remembering"})
        return "gathered"


    @pipeline.task(depends_on=["gather"], final=True, max_retries=2)
    async def report(ctx, gather):
        gate = ctx.params.get("gate")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.02)  # ok-sleep: the step (not the test) polls for its gate file
        return {"saved": await ctx.memory.get_step_result("gather"), "note": await ctx.memory.get("note"),
                "missing": await ctx.memory.get_step_result("nobody"), "kind": type(ctx.memory).__name__}
"""

READER = """
    from tagent_client import Pipeline

    pipeline = Pipeline("reader")


    @pipeline.task(final=True)
    async def read(ctx):
        return await ctx.memory.get_shared("latest", default="nothing shared")
"""

EXPECTED_REPORT = {"saved": {"pages": 3}, "note": "kept", "missing": None, "kind": "PipelineMemory"}


def comparable(result: PipelineResult) -> dict[str, Any]:
    """What the run's steps saved through ctx.memory: its learned facts and its other saved memories."""
    return {"learned_facts": result.learned_facts, "saved_memories": result.saved_memories}


def test_pipeline_memory_in_process(tmp_path: Path) -> None:
    # Given the pipeline that saves a step result and shares data with pipeline "reader", run in-process
    remembering = runpy.run_path(str(write_pipeline(tmp_path, "remembering.py", REMEMBERING)))["pipeline"]
    reader = runpy.run_path(str(write_pipeline(tmp_path, "reader.py", READER)))["pipeline"]
    # When it runs, and then the reader runs
    result = run_agent(remembering)
    shared = run_agent(reader)
    # Then the later step read the saved result, what the steps saved is the result's
    # learned_facts (step results) and saved_memories (the rest),
    # and the reader got what was shared with it
    assert result.success, result.error
    assert result.final_output == EXPECTED_REPORT
    assert comparable(result) == {"learned_facts": {"gather": {"pages": 3}}, "saved_memories": {"note": "kept"}}
    assert shared.final_output == {"from": "remembering"}


@pytest.mark.timeout(120)
def test_pipeline_memory_survives_a_kill9_and_equals_in_process(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a daemon running the pipeline, its first step done (it saved its result) and its second waiting
    daemon = make_daemon(workers=1).start()
    path = write_pipeline(tmp_path, "remembering.py", REMEMBERING)
    reader = write_pipeline(tmp_path, "reader.py", READER)
    gate = tmp_path / "gate"
    with daemon.client() as client:
        run_id = client.submit(str(path), {"gate": str(gate)}).id
        wait_until(lambda: client.status(run_id).steps["report"].status == "running", what="report to run")
    # When everything is killed, the daemon starts again and the second step is let through
    daemon.kill9()
    daemon.start()
    gate.touch()
    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)
        shared = client.wait(client.submit(str(reader)).id, timeout=60)
    # Then the re-run second step read what the first step saved before the crash, the result's
    # saved_memories hold it, equal to an in-process run's, and the reader got what was shared with it
    assert result.success, result.error
    assert result.final_output == EXPECTED_REPORT
    in_process = run_agent(runpy.run_path(str(path))["pipeline"])
    assert comparable(result) == comparable(in_process) == {"learned_facts": {"gather": {"pages": 3}},
                                                             "saved_memories": {"note": "kept"}}
    assert shared.final_output == {"from": "remembering"}


def test_memory_is_a_deprecated_name_of_pipeline_memory() -> None:
    # Given the old name of ctx.memory's class; When it is imported; Then it warns and is PipelineMemory
    from tagent_client.run import context

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = context.Memory
    assert old is PipelineMemory
    assert any(issubclass(w.category, DeprecationWarning) and "PipelineMemory" in str(w.message) for w in caught)


def test_a_value_saved_by_hand_under_the_step_result_prefix_is_still_a_learned_fact() -> None:
    # Given a run's memory where a step saved a plain value under the step-result prefix itself (not a
    # save_step_result entry)
    from tagent_client import Pipeline
    from tagent_client.core.engine import RunMachine

    plan = Pipeline("by_hand").step("only", fn=lambda: 1).plan()
    state = RunMachine.new(plan, "run-1").state
    # When its result is built
    result = PipelineResult.from_state(plan, state, {"step_result/odd": 5, "step_result/ok": {"data": 1}})
    # Then the plain value is the fact as it is, and an entry gives its data
    assert result.learned_facts == {"odd": 5, "ok": 1} and result.saved_memories == {}
