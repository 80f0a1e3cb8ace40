"""`await ctx.dependency(name, timeout=None)`: wait, inside a running step, for one of its dependencies.

A step does not wait for its SOFT dependencies before it starts (docs/semantics.md, "When a step is
decided"): it starts with partial data. `ctx.dependency` is how it waits for one after all, when it
has done what it could without it. The rules, the same in-process and through the daemon:

- the dependency's output as soon as it has COMPLETED (at once if it already had; a HARD, DATA or
  VALIDATION dependency always had), decoded as `ctx.inputs[name]` is (by its output schema);
- None once it has ended without completing (FAILED, SKIPPED, CANCELLED): a SOFT dependency that
  fails never fails its dependent;
- `TimeoutError` if it has not ended after `timeout` seconds (None: as long as the step's own
  timeout allows); `NotFound` for a name that is not one of the step's dependencies;
- while the step waits, its slot does not count against the run's `max_concurrent_steps`
  (`RunMachine.lend_slot`), so the dependency it waits for can start;
- a wait that can never end — a SERIAL step waiting for a SERIAL dependency that has not started
  (SERIAL steps never overlap) — raises InvalidRequest at once (`cannot_start`).

The waiting itself is the run services' (`RunServices.dependency`): `LocalDependencies` below in-process,
a parked request to the daemon in a worker, asked again every `CHUNK` seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..core.rules import completed_output
from ..core.state import StepStatus
from ..define.plan import ExecutionMode
from ..errors import InvalidRequest, NotFound
from ..wire.protocol_broker import StepRef

if TYPE_CHECKING:
    from ..core.engine import RunMachine

#: The longest one wait is parked (by the daemon, or in-process); a longer wait asks again.
CHUNK = 30.0

_ENDED = frozenset(status.value for status in StepStatus if status.terminal)


class DependencyState(NamedTuple):
    """What a wait found: the dependency's status (a StepStatus value) and, once COMPLETED, its output."""

    status: str
    output: Any = None

    @property
    def ended(self) -> bool:
        return self.status in _ENDED


class DependencyWaiter(Protocol):
    """The part of `RunServices` (services.py) that waits: in-process, or a request to the daemon."""

    async def dependency(self, caller: StepRef, name: str, wait: float) -> DependencyState: ...


class DependencyAbilities:
    """Mixed into StepContext; needs `_services`, `_decode`, `inputs`, `step_name` and `step_ref`."""

    _services: DependencyWaiter
    _decode: Callable[[str, Any], Any]
    inputs: dict[str, Any]
    step_name: str
    step_ref: StepRef

    async def dependency(self, name: str, timeout: float | None = None) -> Any:
        """The output of dependency `name` once it has completed; None if it ended otherwise.

        Returns at once when it has already ended. Raises TimeoutError if it is still not done after `timeout`
        seconds (None: wait as long as the step's own timeout allows), NotFound for a name that is not one of
        this step's dependencies. See tagent_client/run/dependency.py and docs/semantics.md.
        """
        if name not in self.inputs:
            raise NotFound(f"step {self.step_name!r} has no dependency {name!r} (its dependencies: "
                           f"{', '.join(sorted(self.inputs)) or 'none'}); ctx.dependency() waits only for a "
                           f"step named in its depends_on")
        if self.inputs[name] is not None:  # it had completed when this attempt started
            return self.inputs[name]
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = CHUNK if deadline is None else max(0.0, min(CHUNK, deadline - time.monotonic()))
            found = await self._services.dependency(self.step_ref, name, left)
            if found.ended:
                return self._decode(name, found.output) if found.status == StepStatus.COMPLETED.value else None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"step {self.step_name!r} waited {timeout:g}s for its dependency {name!r}, "
                                   f"which is still {found.status}")


def cannot_start(machine: RunMachine, step: str, name: str) -> InvalidRequest | None:
    """Why dependency `name` can never start while `step` waits for it, if it cannot: both are SERIAL, `step`
    holds the SERIAL slot (it is running) and `name` has not started, so it would start only after `step` ends."""
    serial = ExecutionMode.SERIAL
    if (machine.specs[step].mode is serial and machine.specs[name].mode is serial
            and machine.state.steps[step].status is StepStatus.RUNNING
            and machine.state.steps[name].status is StepStatus.PENDING):
        return InvalidRequest(f"step {step!r} waits for its dependency {name!r}, which cannot start while {step!r} "
                              f"runs: both are SERIAL and SERIAL steps never overlap; make one of them CONCURRENT")
    return None


def attempt_over(machine: RunMachine, caller: StepRef, name: str) -> InvalidRequest | None:
    """Why the waiting attempt waits no longer, if it is no longer running (it ended, timed out, was cancelled or
    lost its worker): a wait left behind by it (a sync step's thread goes on) ends with this error."""
    running = machine.index.running.get(caller.task)
    if running is not None and running.attempt == caller.attempt:
        return None
    return InvalidRequest(f"attempt {caller.attempt} of step {caller.step!r} of run {machine.state.run_id} is over "
                          f"(it ended, was cancelled or lost its worker): it waits for {name!r} no longer")


class LocalDependencies:
    """In-process waits on one run (`run_pipeline`): woken by `changed()`, which the runner calls after every
    change of the run's state; `lend(task, attempt, lent)` carries out `RunMachine.lend_slot`. Runs on the
    run's event loop only."""

    def __init__(self, machine: RunMachine, lend: Callable[[str, int, bool], None]) -> None:
        self.machine = machine
        self._lend = lend
        self._news = asyncio.Event()

    def changed(self) -> None:
        """The run's state changed: every waiter looks again."""
        self._news.set()
        self._news = asyncio.Event()

    async def wait(self, caller: StepRef, name: str, wait: float) -> DependencyState:
        """Dependency `name`'s state once it has ended, or after `wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        lent = False
        try:
            while True:
                dep = self.machine.state.steps[name]
                left = deadline - loop.time()
                if dep.status.terminal or left <= 0:
                    return DependencyState(dep.status.value, completed_output(dep))
                never = attempt_over(self.machine, caller, name) or cannot_start(self.machine, caller.step, name)
                if never is not None:
                    raise never
                if not lent:
                    self._lend(caller.task, caller.attempt, True)
                    lent = True
                news = self._news
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await news.wait()
        finally:
            if lent:
                self._lend(caller.task, caller.attempt, False)
