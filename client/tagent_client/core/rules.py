"""The run machine's rules that are plain functions: what a step's dependencies say, the VALIDATION
gate, retry backoff, task ids.

Pure: no state, no clock (the random source is passed in), so they are tested alone and
the same everywhere a run is scheduled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..define.conditions import MISSING, lookup_path
from ..define.plan import DependencyType, StepSpec
from .state import Phase, StepState, StepStatus


def backoff_delay(retry: Any, failures: int, rng: random.Random) -> float:
    """Delay before the retry that follows the `failures`-th failure: exponential, capped, jittered down."""
    base = min(retry.max_delay, retry.delay * retry.backoff ** max(0, failures - 1))
    return base * (1.0 - retry.jitter * rng.random())


def gate_is_valid(output: Any) -> bool:
    """The VALIDATION rule: the gate's output is `True`, or has a true `valid` / `is_valid` field."""
    if isinstance(output, bool):
        return output
    for field in ("valid", "is_valid"):
        value = lookup_path(output, field)
        if value is not MISSING:
            return bool(value)
    return False


def task_id(step: str, phase: Any = None, item_index: int | None = None) -> str:
    """Stable id of a task: `step`, `step[3]` for an item, `step#merge` / `step#condition`."""
    if item_index is not None:
        return f"{step}[{item_index}]"
    if phase is not None and phase is not Phase.RUN:
        return f"{step}#{phase.value}"
    return step


class Upstream(NamedTuple):
    """What a PENDING step's dependencies say: `waiting` (one has not ended yet), else why the step is to be
    skipped (`skip`) or failed (`fail`), else the `inputs` it runs with (each dependency's output)."""

    waiting: bool = False
    skip: str | None = None
    fail: str | None = None
    inputs: dict[str, Any] | None = None


#: The verdict of a step whose dependencies have not all ended yet (the common one: made once).
WAITING = Upstream(waiting=True)


def gates(spec: StepSpec) -> list[str]:
    """The dependencies a step waits for, in the order `upstream` looks at them: every one but the SOFT ones."""
    return [dep for dep, kind in spec.deps.items() if kind is not DependencyType.SOFT]


#: The verdict of a step whose dependencies have all passed, when its inputs are not asked for.
READY = Upstream()


def upstream(spec: StepSpec, steps: Mapping[str, StepState], gated: list[str], passed: int = 0,
             with_inputs: bool = True) -> tuple[Upstream, int]:
    """The dependency rules (docs/semantics.md): a HARD dependency must have completed, a VALIDATION one must
    also have passed (`gate_is_valid`), a DATA one must also have each of its `data_fields`. A SOFT one is
    never waited for and never skips or fails its dependent: its input is its output if it has completed,
    `None` otherwise (not yet ended, failed or skipped).

    `gated` is `gates(spec)`, looked at in order; the first one that has not passed decides. The first `passed`
    of them are known to have passed (an earlier call said so, and a passed dependency stays passed until its
    step is reset), so they are not looked at again: the verdict and the new count of passed ones come back.
    A step whose dependencies end one by one thus costs O(1) per ended dependency, not O(dependencies).
    Without `with_inputs`, a step whose dependencies all passed gets READY (no inputs): the caller does not need them."""
    while passed < len(gated):
        dep = gated[passed]
        dep_state = steps[dep]
        if not dep_state.status.terminal:
            return WAITING, passed
        if dep_state.status is not StepStatus.COMPLETED:
            return Upstream(skip=f"upstream step {dep!r} {dep_state.status.value}"), passed
        kind = spec.deps[dep]
        if kind is DependencyType.VALIDATION and not gate_is_valid(dep_state.output):
            return Upstream(skip=f"validation gate {dep!r} did not pass"), passed
        if kind is DependencyType.DATA:
            missing = [f for f in spec.data_fields.get(dep, []) if lookup_path(dep_state.output, f) in (MISSING, None)]
            if missing:
                return Upstream(fail=f"DATA dependency {dep!r} output lacks field(s) {', '.join(missing)}"), passed
        passed += 1
    if not with_inputs:
        return READY, passed
    return Upstream(inputs={dep: completed_output(steps[dep]) for dep in spec.deps}), passed


def completed_output(step: StepState) -> Any:
    """What a dependent sees of a dependency: its output once it has completed, `None` before or if it never does."""
    return step.output if step.status is StepStatus.COMPLETED else None
