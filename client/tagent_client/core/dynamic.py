"""Steps added at run time (`ctx.add_step`): the engine's rules for them (docs/semantics.md, "Steps that add steps").

A step attempt's additions ride on its `StepSucceeded` (`added`). `check` decides them when the result
arrives: each needs a name no step of the run has (nor any addition still waiting to be applied),
dependencies on steps of the run or of the same batch, and no cycle. A bad batch fails the attempt
with a DynamicStepError, which is not retried. A good batch waits on its task (`TaskState.added`,
replacing what an earlier attempt of that task left there) and `apply` makes it part of the run when
the adding step completes, in the same state change: the record that makes the completion durable
carries the new steps. A step that never completes adds nothing; a PARALLEL_MERGE step adds what
each item (in item order) and its merge added.

Steps added at run time live in the run state (`StepState.spec`, in order of `added_seq`), so a
machine rebuilt from a checkpoint schedules them again (`with_added`). Running an added step again
(`tagent retry`, `tagent resume`) first removes what it added (`added_by`), so its next completion
adds them afresh: additions are replaced, never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from ..define.plan import Plan, StepSpec
from .events import Action, Emit
from .machine_view import MachineView
from .state import Phase, RunState, StepState, TaskState

#: `ErrorInfo.type` of an attempt whose additions were refused.
ERROR_TYPE = "DynamicStepError"


def with_added(plan: Plan, state: RunState) -> Plan:
    """`plan` with the steps `state` says were added at run time, in the order they were added."""
    added = sorted((s for s in state.steps.values() if s.spec is not None), key=lambda s: s.added_seq)
    if not added:
        return plan
    return msgspec.structs.replace(plan, steps=[*plan.steps, *(s.spec for s in added if s.spec is not None)])


def _waiting_names(state: RunState, but: str) -> set[str]:
    """Names that additions of tasks other than `but` hold, waiting for their step to complete."""
    names: set[str] = set()
    for task in state.tasks.values():
        if task.added and task.id != but and not state.steps[task.step].status.terminal:
            names.update(spec.name for spec in task.added)
    return names


def check(specs: Mapping[str, StepSpec], state: RunState, task: TaskState, added: list[StepSpec]) -> str | None:
    """Why the batch `added` of `task` cannot join the run (one line), or None when it can."""
    where = f"step {task.step!r}"
    if task.phase not in (Phase.RUN, Phase.MERGE):
        return f"{where}: only a step's own attempt or its merge may add steps, not its {task.phase.value}"
    waiting = _waiting_names(state, task.id)
    batch: dict[str, StepSpec] = {}
    for spec in added:
        if spec.name in specs:
            return (f"{where} added step {spec.name!r}, but the run already has a step of that name "
                    f"(a step cannot be changed once defined): pick another name")
        if spec.name in waiting or spec.name in batch:
            return f"{where} added step {spec.name!r} twice (or another running step adds it too): names must be unique"
        batch[spec.name] = spec
    for spec in added:
        unknown = [dep for dep in spec.deps if dep not in specs and dep not in batch]
        if unknown:
            return (f"{where} added step {spec.name!r} depending on unknown step(s) {', '.join(map(repr, unknown))}: "
                    f"depend on steps of the run or on steps added in the same attempt")
    cycle = _cycle(batch)
    if cycle:
        return f"{where} added steps that depend on each other in a cycle: {' -> '.join(cycle)}"
    return None


def take(specs: Mapping[str, StepSpec], state: RunState, task: TaskState, added: list[StepSpec]) -> str | None:
    """Keep the additions of `task`'s successful attempt on it (replacing an earlier attempt's), or say why not."""
    refused = check(specs, state, task, added) if added else None
    if refused is None:
        task.added = list(added)
    return refused


def announce(machine: MachineView, name: str, added: list[str]) -> list[Action]:
    """The `steps.added` event for what step `name` added, if anything."""
    return [Emit(topic="steps.added", data=machine.event_data(step=name, added=added))] if added else []


def _cycle(batch: Mapping[str, StepSpec]) -> list[str] | None:
    """A dependency cycle among the batch's steps, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in batch[name].deps:
            if dep not in batch:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep] if dep in path else [name, dep]
            if dep not in state:
                found = visit(dep, [*path, dep])
                if found:
                    return found
        state[name] = 2
        return None

    for name in batch:
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def pending_additions(tasks: Iterable[TaskState]) -> list[StepSpec]:
    """What a completing step's tasks added: its items' in item order, then its merge's."""
    adders = [task for task in tasks if task.added]
    if not adders:  # (nearly every step): nothing to order
        return []
    ordered = sorted(adders, key=lambda t: (t.phase is Phase.MERGE, t.item_index or 0))
    return [spec for task in ordered for spec in task.added]


def apply(machine: MachineView, name: str) -> list[str]:
    """Make what step `name`'s tasks added part of the run (call before its tasks are dropped); their names."""
    added = pending_additions(machine.index.tasks_of[name].values())
    if not added:
        return []
    state = machine.state
    seq = max((s.added_seq for s in state.steps.values()), default=0)
    specs = []
    for offset, spec in enumerate(added, start=1):
        spec = msgspec.structs.replace(spec, added_by=name)
        specs.append(spec)
        state.steps[spec.name] = StepState(name=spec.name, spec=spec, added_seq=seq + offset)
        machine.index.changed_steps.add(spec.name)
    machine.replan(msgspec.structs.replace(machine.plan, steps=[*machine.plan.steps, *specs]))
    return [spec.name for spec in specs]


def added_by(state: RunState, steps: Iterable[str]) -> set[str]:
    """The steps that `steps` added, and what those added, on down."""
    by_adder: dict[str, list[str]] = {}
    for name, step in state.steps.items():
        if step.spec is not None and step.spec.added_by is not None:
            by_adder.setdefault(step.spec.added_by, []).append(name)
    found: set[str] = set()
    frontier = list(steps)
    while frontier:
        for child in by_adder.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def prune(machine: MachineView, todo: set[str]) -> set[str]:
    """Of `todo` (steps to run again, with their dependents), remove the steps they added at run time, and
    what depends on those, from the run; the steps left to reset."""
    dropped = added_by(machine.state, todo)
    while dropped - todo:
        todo = machine.index.downstream(list(todo | dropped))
        dropped |= added_by(machine.state, todo)
    remove(machine, dropped)
    return todo - dropped


def remove(machine: MachineView, names: set[str]) -> None:
    """Take added steps `names` out of the run (their state and tasks too); the caller rebuilds the index."""
    if not names:
        return
    state = machine.state
    for name in names:
        state.steps.pop(name, None)
        machine.index.changed_steps.add(name)
    for tid in [tid for tid, task in state.tasks.items() if task.step in names]:
        del state.tasks[tid]
        machine.index.changed_tasks.add(tid)
    machine.replan(msgspec.structs.replace(machine.plan, steps=[s for s in machine.plan.steps if s.name not in names]))
