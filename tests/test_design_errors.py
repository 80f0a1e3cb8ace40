"""`PipelineDeadlockError` and `StepExecutionError`, as the design documents name them (issue 13, point 3).

A run that cannot make progress is reported as `PipelineDeadlockError`; a failed step's error is a
`StepExecutionError` naming the step. `PipelineResult.raise_for_status()` raises them, the same
in-process and through the daemon; both are exported from tagent_client.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client import (
    DependencyType,
    Pipeline,
    PipelineDeadlockError,
    PipelineResult,
    StepExecutionError,
    TagentError,
    run_agent,
)
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import StepSucceeded
from tagent_client.define.plan import Plan, StepKind, StepSpec
from tagent_client.errors import RunFailed, exit_code_for

FAILING = """
    from tagent_client import Pipeline

    pipeline = Pipeline("failing")


    @pipeline.task()
    def fine():
        return 1


    @pipeline.task(depends_on=["fine"], max_retries=0)
    def boom(fine):
        raise ValueError(f"broken after {fine}")
"""


def test_a_run_that_cannot_progress_is_a_pipeline_deadlock_error() -> None:
    # Given a hand-built plan (validation would reject it) where x and y wait for each other
    plan = Plan(name="loop", steps=[
        StepSpec(name="ok", kind=StepKind.FUNCTION),
        StepSpec(name="x", kind=StepKind.FUNCTION, deps={"y": DependencyType.HARD}),
        StepSpec(name="y", kind=StepKind.FUNCTION, deps={"x": DependencyType.HARD}),
    ])
    machine = RunMachine.new(plan, "run-1")
    machine.start(0.0)
    # When the only step that can run completes, and the run stops there
    machine.handle(StepSucceeded(task="ok", attempt=1), 1.0)
    result = PipelineResult.from_state(plan, machine.state)
    # Then its result raises PipelineDeadlockError naming the stuck steps
    with pytest.raises(PipelineDeadlockError) as caught:
        result.raise_for_status()
    assert caught.value.steps == ["x", "y"]
    assert str(caught.value).startswith("Pipeline execution deadlocked: no progress possible: steps x, y")
    assert isinstance(caught.value, RunFailed) and caught.value.code == "pipeline_deadlock"
    assert exit_code_for(caught.value.code) == 1


def check_failed(result: PipelineResult) -> StepExecutionError:
    """The failed run's StepExecutionError, as raise_for_status raises it."""
    with pytest.raises(StepExecutionError) as caught:
        result.raise_for_status()
    error = caught.value
    assert error.step == "boom" and error.error_type == "ValueError"
    assert str(error) == "Step 'boom' failed: ValueError: broken after 1"
    assert isinstance(error, TagentError) and error.code == "step_failed"
    assert list(result.step_errors()) == ["boom"]
    return error


def test_a_failed_step_is_a_step_execution_error_in_process_and_through_the_daemon(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a pipeline whose second step raises
    path = write_pipeline(tmp_path, "failing.py", FAILING)
    # When it runs in-process and through a daemon
    local = run_agent(runpy.run_path(str(path))["pipeline"])
    daemon = make_daemon(workers=1).start()
    with daemon.client() as client:
        remote = client.wait(client.submit(str(path)).id, timeout=60)
    # Then both results raise the same StepExecutionError, naming the step and its error
    assert str(check_failed(local)) == str(check_failed(remote))
    # and a completed run's raise_for_status returns the result itself
    ok = run_agent(Pipeline("fine").step("only", fn=lambda: 2))
    assert ok.raise_for_status() is ok and ok.step_errors() == {}
