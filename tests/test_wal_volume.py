"""A fan-out writes few bytes per step to the WAL (issue 17: CPU per step of a fan-out).

When a fan-out's first step completes, one Delta records every step it starts: each step's StepState, its task's
TaskState and its history entry. Written with every field, most of them at their defaults, a 1 -> 5,000 -> 1
fan-out's Delta was 2.5 MB (~500 bytes a step) and its Created record 4.2 MB: encoded on the loop while the
steps ran, checksummed, written and fsynced, and a 16 MB WAL segment filled (and its runs were snapshotted on the
loop) every two runs. StepState and TaskState now leave fields at their default out (`omit_defaults`); a reader
fills them in, as it does for the fields of an older format.
"""

from __future__ import annotations

import msgspec
from test_together import fan_out

from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, StepSucceeded
from tagent_client.core.state import ErrorInfo, Phase, StepState, StepStatus, TaskState, TaskStatus
from tagentd.runs import records
from tagentd.runs.records import Delta
from tagentd.runs.run import Run, RunSource

WIDTH = 200


def test_the_delta_that_starts_a_fan_out_holds_few_bytes_per_step() -> None:
    # Given a 1 -> 200 -> 1 fan-out whose first step was dispatched and whose start was recorded
    machine = RunMachine.new(fan_out(WIDTH).plan(), "run-1", now=1.0)
    run = Run(RunSource(path="/p/fan.py", source="src", source_hash="h", target=None, model=None), machine.plan,
              machine)
    [first] = [a for a in machine.start(1.0) if isinstance(a, Dispatch)]
    machine.take_changes()
    # When the first step succeeds, starting the 200
    actions = machine.handle(StepSucceeded(task=first.task, attempt=first.attempt), 2.0)
    for action in actions:
        if isinstance(action, Emit):
            run.add_event(action.topic, action.data, 2.0)
    steps, tasks = machine.take_changes()
    state = machine.state
    delta = Delta(seq=2, run_id=run.id, status=state.status, started_at=state.started_at,
                  steps={s: state.steps[s] for s in steps}, tasks={t: state.tasks[t] for t in tasks if t in state.tasks},
                  history=run.history)
    # Then its record is under 300 bytes per step started (it was ~500)
    assert sum(isinstance(a, Dispatch) for a in actions) == WIDTH
    assert len(records.encoder.encode(delta)) < 300 * WIDTH


def test_states_read_back_whole_with_or_without_their_defaults_written() -> None:
    # Given a step's and a task's state with some fields set and the rest at their defaults
    step = StepState(name="s", status=StepStatus.RUNNING, attempts=1, started_at=2.0)
    task = TaskState(id="s", step="s", status=TaskStatus.FAILED, attempt=1, error=ErrorInfo(type="E", message="m"))
    # When they are written and read back
    for state in (step, task):
        encoded = records.encoder.encode(state)
        # Then they read back equal, though the fields at their default were not written
        assert msgspec.msgpack.decode(encoded, type=type(state)) == state
        assert b"attempts_before" not in encoded and b"interrupted" not in encoded
    # And a record written with every field (as before) reads back the same
    whole = msgspec.msgpack.encode(msgspec.structs.asdict(task))
    assert msgspec.msgpack.decode(whole, type=TaskState) == task
    assert TaskState(id="t", step="s").phase is Phase.RUN
