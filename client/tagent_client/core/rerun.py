"""Resume and retry: steps of a finished (or running) run go back to PENDING to run again.

`reset` is the rule behind `tagent resume` / `tagent retry --step`: the named steps and everything
downstream of them start over, keeping their attempt counts (so attempt numbers go on, never restart),
token usage and transcripts; steps they added at run time are removed first (core/dynamic.py, `prune`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dynamic
from .events import Action, Emit, Persist
from .state import RunStatus, StepState

if TYPE_CHECKING:
    from .machine_view import MachineView


def reset(machine: MachineView, steps: list[str]) -> list[Action]:
    """Put `steps` and their dependents back to PENDING and the run back to RUNNING; the caller advances it."""
    todo = dynamic.prune(machine, machine.index.downstream(steps))
    for name in todo:
        old = machine.state.steps[name]
        machine.state.steps[name] = StepState(name=name, attempts=old.attempts, attempts_before=old.attempts,
                                              usage=old.usage, transcript=old.transcript)
        machine.index.changed_steps.add(name)
        for tid in list(machine.index.tasks_of[name]):
            del machine.state.tasks[tid]
            machine.index.changed_tasks.add(tid)
    machine.state.status = RunStatus.RUNNING
    machine.state.finished_at = None
    machine.state.error = None
    machine.index.rebuild()
    return [Persist(), Emit(topic="run.resumed", data=machine.event_data(steps=sorted(todo)))]
