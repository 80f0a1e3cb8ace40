"""Drivers for tests of the run state machine (tagent_client.core.engine.RunMachine), shared by test_engine.py,
test_engine_gates.py, test_engine_retries.py and test_engine_recovery.py: a machine for a pipeline (seeded rng, so
jitter is deterministic), events fed with a fake `now`, the actions read back, and the small pipelines several of
those modules use. No asyncio, no processes: nothing here runs a step function."""

from __future__ import annotations

import random
from typing import Any

from tagent_client import DependencyType, ExecutionMode, Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Action, Dispatch, Emit, Finish, StepFailed, StepSucceeded
from tagent_client.core.state import ErrorInfo, StepStatus

SERIAL, CONCURRENT = ExecutionMode.SERIAL, ExecutionMode.CONCURRENT
PARALLEL_MERGE = ExecutionMode.PARALLEL_MERGE


def noop() -> None:
    return None


def machine_for(pipeline: Pipeline, *, params: dict[str, Any] | None = None, seed: int = 7) -> RunMachine:
    return RunMachine.new(pipeline.plan(), "run-1", params=params, now=0.0, rng=random.Random(seed))


def started(pipeline: Pipeline, **kwargs: Any) -> tuple[RunMachine, list[Action]]:
    machine = machine_for(pipeline, **kwargs)
    return machine, machine.start(0.0)


def dispatched(actions: list[Action]) -> list[str]:
    return [a.task for a in actions if isinstance(a, Dispatch)]


def dispatch_of(actions: list[Action], task: str) -> Dispatch:
    found = [a for a in actions if isinstance(a, Dispatch) and a.task == task]
    assert len(found) == 1, f"expected one Dispatch of {task!r} in {actions}"
    return found[0]


def topics(actions: list[Action]) -> list[str]:
    return [a.topic for a in actions if isinstance(a, Emit)]


def finishes(actions: list[Action]) -> list[Finish]:
    return [a for a in actions if isinstance(a, Finish)]


def succeed(machine: RunMachine, task: str, output: Any = None, now: float = 1.0) -> list[Action]:
    return machine.handle(StepSucceeded(task=task, attempt=machine.state.tasks[task].attempt, output=output), now)


def fail(machine: RunMachine, task: str, *, retryable: bool, now: float = 1.0,
         message: str = "boom", type_: str = "ValueError") -> list[Action]:
    error = ErrorInfo(type=type_, message=message, retryable=retryable)
    return machine.handle(StepFailed(task=task, attempt=machine.state.tasks[task].attempt, error=error), now)


def status(machine: RunMachine, step: str) -> StepStatus:
    return machine.state.steps[step].status


def steps(pipeline: Pipeline, *names: str, mode: ExecutionMode = CONCURRENT, **options: Any) -> Pipeline:
    for name in names:
        pipeline.step(name, fn=noop, execution_mode=mode, **options)
    return pipeline


def chain_pipeline(kind: DependencyType = DependencyType.HARD, **options: Any) -> Pipeline:
    """a -> b -> c: b depends on a with `kind` (and `options`), c HARD on b; all SERIAL."""
    p = Pipeline("p")
    p.step("a", fn=noop)
    p.step("b", fn=noop, depends_on={"a": kind}, **options)
    p.step("c", fn=noop, depends_on=["b"])
    return p


def flaky_pipeline(**options: Any) -> Pipeline:
    """One step `flaky`: 3 retries, delay 1 s doubling up to 3 s, jitter 0.1 (each overridable by `options`)."""
    defaults = {"max_retries": 3, "retry_delay": 1.0, "retry_backoff": 2.0, "retry_max_delay": 3.0, "retry_jitter": 0.1}
    return Pipeline("p").step("flaky", fn=noop, **{**defaults, **options})
