"""`together.handle_all` (core/together.py): the results of one frame are applied in order and scheduled once.

The daemon hands a run's machine the results a worker sent in one loop turn together (RunDriver.results_together);
the property test (test_engine_properties.py) drives random runs through it as well. Here: what it saves, and that
a fan-out ends exactly as with one `handle` per result.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from tagent_client import ExecutionMode, Pipeline
from tagent_client.core import scheduling, together
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Action, Dispatch, Emit, Event, StepSucceeded

WIDTH, FRAME = 200, 50


def noop() -> None:
    return None


def fan_out(width: int = WIDTH) -> Pipeline:
    """start -> f000 .. f<width-1> (concurrent) -> end, every step a no-op."""
    pipeline = Pipeline("fan", max_concurrent_steps=width + 2)
    pipeline.step("start", fn=noop)
    for i in range(width):
        pipeline.step(f"f{i:03d}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("end", fn=noop, depends_on=[f"f{i:03d}" for i in range(width)])
    return pipeline


def drive(feed: Callable[[RunMachine, list[Event]], list[Action]]) -> tuple[RunMachine, list[str]]:
    """Run the fan-out, answering every dispatch with a success, FRAME results at a time; the events emitted."""
    machine = RunMachine.new(fan_out().plan(), "run", now=0.0)
    actions = machine.start(0.0)
    topics: list[str] = []
    while True:
        topics += [f"{a.topic}:{a.data.get('step')}" for a in actions if isinstance(a, Emit)]
        pending = [a for a in actions if isinstance(a, Dispatch)]
        if not pending:
            return machine, topics
        actions = []
        for at in range(0, len(pending), FRAME):
            frame: list[Event] = [StepSucceeded(task=d.task, attempt=d.attempt, output=d.step) for d in pending[at:at + FRAME]]
            actions += feed(machine, frame)


def test_a_frame_of_results_is_scheduled_once_and_the_run_ends_as_with_one_handle_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a 1 -> 200 -> 1 fan-out whose results come in frames of 50, when each frame is taken together, then the
    last step's dependencies are looked at once per frame (not once per result), and the run's state and its events
    are exactly those of one `handle` per result."""
    looks: list[str] = []
    real_upstream = scheduling.upstream

    def counting(spec, *args):  # noqa: ANN001, ANN002, ANN202
        looks.append(spec.name)
        return real_upstream(spec, *args)

    monkeypatch.setattr(scheduling, "upstream", counting)
    one_by_one, events_one = drive(lambda m, frame: [a for e in frame for a in m.handle(e, 1.0)])
    looks_one = looks.count("end")
    looks.clear()
    framed, events_framed = drive(lambda m, frame: together.handle_all(m, frame, 1.0))

    assert looks_one >= WIDTH
    assert looks.count("end") <= WIDTH // FRAME + 2
    assert framed.finished and events_framed == events_one
    assert msgspec.msgpack.encode(framed.state) == msgspec.msgpack.encode(one_by_one.state)
