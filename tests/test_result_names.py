"""`PipelineResult` and `step.completed` by the design documents' names (issue 13, point 3).

"Structured Output Schemas and Results": `token_usage: Dict[str, TokenUsage]` per step (the run's sum is
`total_usage`), `saved_memories`; the `step_completed` event carries the step's result and a timestamp.
The same in-process and through the daemon.
"""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import DaemonProcess, write_pipeline

from tagent_client import PipelineResult, TokenUsage, run_pipeline
from tagent_client.core.result import to_builtins

NAMED = """
    from pydantic import BaseModel

    from tagent_client import Pipeline

    pipeline = Pipeline("named")


    class Summary(BaseModel):
        title: str
        count: int


    @pipeline.task()
    async def numbers(ctx):
        await ctx.memory.save("seen", [1, 2, 3])
        return {"n": [1, 2, 3]}


    pipeline.step("summary", goal="Summarise the numbers", depends_on=["numbers"], output_schema=Summary,
                  model="test", final=True)
"""


def check_names(result: PipelineResult, completed: list[dict[str, Any]]) -> None:
    """The documents' fields of one result and its step_completed events."""
    assert result.success, result.summary()
    assert set(result.token_usage) == {"numbers", "summary"}
    assert result.token_usage["numbers"] == TokenUsage()  # a function step uses no tokens
    summary = result.token_usage["summary"]
    assert isinstance(summary, TokenUsage) and summary.total_tokens == summary.input_tokens + summary.output_tokens > 0
    assert result.total_usage == result.token_usage["numbers"] + summary
    assert result.saved_memories == {"seen": [1, 2, 3]}
    assert [event["step"] for event in completed] == ["numbers", "summary"]
    for event in completed:
        assert event["result"] == to_builtins(result.step_outputs[event["step"]])
        assert result.start_time is not None and result.end_time is not None
        assert result.start_time <= event["timestamp"] <= result.end_time


def test_result_and_events_by_the_documents_names_in_process_and_through_the_daemon(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a pipeline of a function step (it saves to memory) and an agent step on the test model
    path = write_pipeline(tmp_path, "named.py", NAMED)

    # When it runs in-process, watching its events
    seen: list[tuple[str, dict[str, Any]]] = []
    local = asyncio.run(run_pipeline(runpy.run_path(str(path))["pipeline"], on_event=lambda t, d: seen.append((t, d))))
    # Then token_usage is per step, total_usage their sum, saved_memories what was saved, and each
    # step.completed event carries the step's result and when it completed
    check_names(local, [data for topic, data in seen if topic == "step.completed"])

    # When it runs through a daemon
    daemon = make_daemon(workers=1).start()
    with daemon.client() as client:
        run_id = client.submit(str(path)).id
        remote = client.wait(run_id, timeout=60)
        events = client.events(run_id).events
    # Then the same holds, through the daemon's event stream too, and both results agree
    check_names(remote, [e.data for e in events if e.topic == "step.completed"])
    assert remote.token_usage == local.token_usage and remote.total_usage == local.total_usage
    assert remote.saved_memories == local.saved_memories
    assert to_builtins(remote.step_outputs) == to_builtins(local.step_outputs)
