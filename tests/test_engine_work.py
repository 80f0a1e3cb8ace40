"""The engine looks only at steps that may have become ready (issue 17: CPU per step of a fan-out).

A step is decided (`Scheduling._resolve`: wait, skip, fail or create its tasks) when it may be ready; a PENDING
step whose first dependency to wait for is still open would only be found waiting. Before, every PENDING step was
looked at when a run started (or was rebuilt), so a 1 -> N -> 1 fan-out decided each of its N steps twice.
"""

from __future__ import annotations

import pytest
from test_together import fan_out

from tagent_client import DependencyType, ExecutionMode, Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, StepSucceeded
from tagent_client.core.scheduling import Scheduling
from tagent_client.core.state import RunStatus


def noop() -> None:
    return None


@pytest.fixture
def decided(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the steps the engine decides, in order."""
    names: list[str] = []
    real = Scheduling._resolve

    def noted(self, spec, now):  # noqa: ANN001, ANN202 - a pass-through
        names.append(spec.name)
        return real(self, spec, now)

    monkeypatch.setattr(Scheduling, "_resolve", noted)
    return names


def test_a_starting_run_decides_only_the_steps_that_wait_for_nothing(decided: list[str]) -> None:
    # Given a 1 -> 50 -> 1 fan-out
    machine = RunMachine.new(fan_out(50).plan(), "run-1")
    # When it starts
    actions = machine.start(1.0)
    # Then only its first step was decided, and dispatched
    assert decided == ["start"]
    assert [a.step for a in actions if isinstance(a, Dispatch)] == ["start"]


def test_each_step_of_a_fan_out_is_decided_once_its_dependency_ends(decided: list[str]) -> None:
    # Given a 1 -> 50 -> 1 fan-out that has started
    machine = RunMachine.new(fan_out(50).plan(), "run-1")
    todo = [a for a in machine.start(1.0) if isinstance(a, Dispatch)]
    # When every dispatched step succeeds, one result at a time
    while todo:
        task = todo.pop(0)
        todo += [a for a in machine.handle(StepSucceeded(task=task.task, attempt=task.attempt), 2.0)
                 if isinstance(a, Dispatch)]
    # Then the run completed, each middle step decided once, and the last one once per middle step that ended
    assert machine.state.status is RunStatus.COMPLETED
    assert all(decided.count(f"f{i:03d}") == 1 for i in range(50)), decided
    assert decided.count("end") == 50


def test_a_step_with_only_soft_dependencies_or_a_finished_one_is_still_decided_at_start(decided: list[str]) -> None:
    # Given a run whose second step depends softly on the first, and whose third waits for nothing
    pipeline = Pipeline("soft")
    pipeline.step("a", fn=noop, execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("b", fn=noop, depends_on={"a": DependencyType.SOFT}, execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("c", fn=noop, execution_mode=ExecutionMode.CONCURRENT)
    machine = RunMachine.new(pipeline.plan(), "run-1")
    # When it starts
    actions = machine.start(1.0)
    # Then all three are decided and dispatched at once (a SOFT dependency is never waited for)
    assert decided == ["a", "b", "c"]
    assert sorted(a.step for a in actions if isinstance(a, Dispatch)) == ["a", "b", "c"]
