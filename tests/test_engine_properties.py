"""Property test of the run state machine: random DAGs, random outcomes, invariants that always hold.

A small simulator plays the shell: it keeps the dispatched attempts "in flight",
answers them in a random order with a random outcome, fires timers by advancing a
fake clock, and now and then re-delivers an old event, interrupts an attempt (its
worker died for another step's reason), crashes and recovers the machine from a
msgpack checkpoint, or cancels the run.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tagent_client import DependencyType, ExecutionMode, Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import (
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Emit,
    Event,
    Finish,
    ScheduleRetry,
    StepFailed,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
)
from tagent_client.core.state import ErrorInfo, RunState, RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import Plan

pytestmark = pytest.mark.timeout(60)

MAX_LOOPS = 2_000
MAX_INTERRUPTIONS = 6  # uncharged, so unbounded interruptions could keep a run going forever
BLOCKING = (DependencyType.HARD, DependencyType.DATA, DependencyType.VALIDATION)
OUTCOMES = ["succeed", "succeed", "succeed", "retryable", "fatal", "timeout"]
OUTPUTS = [{"valid": True, "x": 1}, {"valid": False, "x": 2}, {"valid": True}, None]


def noop() -> None:
    return None


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """A valid DAG: edges only from earlier to later steps, random dependency types, modes and retry budgets."""
    count = draw(st.integers(1, 7))
    p = Pipeline(
        "prop",
        max_concurrent_steps=draw(st.integers(1, 3)),
        fail_fast=draw(st.booleans()),
    )
    for i in range(count):
        deps: dict[str, DependencyType] = {}
        for j in range(i):
            if draw(st.booleans()):
                deps[f"s{j}"] = draw(st.sampled_from(list(DependencyType)))
        p.step(
            f"s{i}",
            fn=noop,
            depends_on=deps,
            execution_mode=draw(st.sampled_from([ExecutionMode.SERIAL, ExecutionMode.CONCURRENT])),
            max_retries=draw(st.integers(0, 2)),
            retry_delay=draw(st.sampled_from([0.5, 1.0, 2.0])),
            required=draw(st.booleans()),
            data_fields={d: ["x"] for d, k in deps.items() if k is DependencyType.DATA},
        )
    return p.plan()


class Simulator:
    """Carries out actions for a RunMachine and checks the invariants after every call."""

    def __init__(self, plan: Plan, data: st.DataObject) -> None:
        self.plan = plan
        self.data = data
        self.specs = {s.name: s for s in plan.steps}
        self.machine = RunMachine.new(plan, "run-prop", now=0.0, rng=random.Random(0))
        self.now = 0.0
        self.in_flight: dict[str, Dispatch] = {}
        self.timers: list[float] = []
        self.delivered: list[Event] = []
        self.finishes: list[Finish] = []
        self.terminal_emits: dict[str, int] = {s.name: 0 for s in plan.steps}
        self.terminal_seen: dict[str, StepStatus] = {}
        self.cancelled = False
        self.crashes = 0
        self.interruptions = 0
        self.charged: dict[str, int] = {}  # per task: retryable failures and timeouts delivered (each uses a retry)

    # -- carrying out actions -------------------------------------------------------------

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self.check_dispatch_allowed(action)
                assert action.task not in self.in_flight, f"{action.task} dispatched twice at once"
                self.in_flight[action.task] = action
            elif isinstance(action, CancelTask):
                current = self.in_flight.get(action.task)
                assert current is not None and current.attempt == action.attempt, f"cancel of a task not running: {action}"
                del self.in_flight[action.task]
            elif isinstance(action, ScheduleRetry):
                assert action.at >= self.now
                self.timers.append(action.at)
            elif isinstance(action, Emit) and action.topic in ("step.completed", "step.failed", "step.skipped"):
                self.terminal_emits[action.data["step"]] += 1
            elif isinstance(action, Finish):
                self.finishes.append(action)
        self.check_state()

    def handle(self, event: Event) -> None:
        self.delivered.append(event)
        self.carry_out(self.machine.handle(event, self.now))

    # -- invariants ------------------------------------------------------------------------------

    def check_dispatch_allowed(self, action: Dispatch) -> None:
        steps = self.machine.state.steps
        for dep, kind in self.specs[action.step].deps.items():
            if kind in BLOCKING:
                assert steps[dep].status is StepStatus.COMPLETED, f"{action.step} dispatched before {kind.value} dep {dep} completed"
            else:  # SOFT: never waited for; its input is its output once completed, None until then
                expected = steps[dep].output if steps[dep].status is StepStatus.COMPLETED else None
                assert action.inputs[dep] == expected, f"{action.step} got {action.inputs[dep]!r} for SOFT dep {dep}"

    def check_state(self) -> None:
        state = self.machine.state
        busy_serial = [n for n, s in state.steps.items()
                       if self.specs[n].mode is ExecutionMode.SERIAL and s.status in (StepStatus.RUNNING, StepStatus.RETRYING)]
        assert len(busy_serial) <= 1, f"SERIAL steps overlap: {busy_serial}"
        running = [t.id for t in state.tasks.values() if t.status is TaskStatus.RUNNING]
        assert len(running) <= self.plan.max_concurrent_steps
        assert sorted(running) == sorted(self.in_flight), "the machine and the shell disagree on what runs"
        for name, step in state.steps.items():
            if name in self.terminal_seen:
                assert step.status is self.terminal_seen[name], f"{name} left its terminal state"
            elif step.status.terminal:
                self.terminal_seen[name] = step.status
            assert self.terminal_emits[name] <= 1, f"{name} reported terminal twice"
            self.check_soft_never_holds_back(name, step)

    def check_soft_never_holds_back(self, name: str, step: Any) -> None:
        """A SOFT dependency never keeps its dependent waiting, and never skips or fails it."""
        state = self.machine.state
        soft = [d for d, k in self.specs[name].deps.items() if k is DependencyType.SOFT]
        blocking = [d for d, k in self.specs[name].deps.items() if k in BLOCKING]
        blamed = ""  # why the engine itself skipped or failed the step (a cancelled run blames no dependency)
        if step.status is StepStatus.SKIPPED:
            blamed = step.skip_reason or ""
        elif step.status is StepStatus.FAILED and step.error is not None and step.error.type == "DependencyError":
            blamed = step.error.message
        for dep in soft:
            for cause in (f"upstream step {dep!r}", f"validation gate {dep!r}", f"DATA dependency {dep!r}"):
                assert cause not in blamed, f"{name} ended {step.status.value} because of its SOFT dep: {blamed}"
        if (step.status is StepStatus.PENDING and not self.machine.finished and not self.machine.held
                and all(state.steps[d].status.terminal for d in blocking)):
            assert any(t.step == name for t in state.tasks.values()), f"{name} waits for SOFT dep(s) {soft}"

    # -- the shell's choices ------------------------------------------------------------------------

    def answer(self) -> None:
        task = self.data.draw(st.sampled_from(sorted(self.in_flight)))
        dispatch = self.in_flight.pop(task)
        outcome = self.data.draw(st.sampled_from(OUTCOMES))
        self.now += self.data.draw(st.sampled_from([0.0, 0.1, 0.7]))
        if outcome == "succeed":
            event: Event = StepSucceeded(task=task, attempt=dispatch.attempt, output=self.data.draw(st.sampled_from(OUTPUTS)))
        elif outcome == "timeout":
            event = StepTimedOut(task=task, attempt=dispatch.attempt, timeout=1.0)
        else:
            error = ErrorInfo(type="ConnectionError" if outcome == "retryable" else "ValueError",
                              message=outcome, retryable=outcome == "retryable")
            event = StepFailed(task=task, attempt=dispatch.attempt, error=error)
        if outcome in ("retryable", "timeout"):
            self.charged[task] = self.charged.get(task, 0) + 1
        self.handle(event)

    def interrupt(self) -> None:
        """The attempt's worker died for another step's reason: it must run again at once, at no cost."""
        task = self.data.draw(st.sampled_from(sorted(self.in_flight)))
        old = self.in_flight.pop(task)
        self.interruptions += 1
        self.handle(StepInterrupted(task=task, attempt=old.attempt, reason="another step crashed its worker"))
        assert not self.machine.finished, "an interruption ended the run"
        state = self.machine.state.tasks[task]
        if task in self.in_flight:  # else an earlier-defined queued task took the free slot first
            assert self.in_flight[task].attempt == old.attempt + 1, f"{task} not re-run after the interruption"
        else:
            assert state.status is TaskStatus.QUEUED, f"{task} lost by an interruption"

    def fire_timer(self) -> None:
        due = min(self.timers)
        self.timers.remove(due)
        self.now = max(self.now, due)
        self.handle(TimerFired())

    def redeliver(self) -> None:
        old = self.data.draw(st.sampled_from(self.delivered))
        if isinstance(old, (TimerFired, Cancelled)):
            return
        before = msgspec.msgpack.encode(self.machine.state)
        assert self.machine.handle(old, self.now) == [], f"a duplicate {old} was acted on"
        assert msgspec.msgpack.encode(self.machine.state) == before

    def crash_and_recover(self) -> None:
        state = msgspec.msgpack.decode(msgspec.msgpack.encode(self.machine.state), type=RunState)
        lost = dict(self.in_flight)
        self.machine = RunMachine(self.plan, state, rng=random.Random(self.crashes))
        self.in_flight.clear()
        self.crashes += 1
        self.carry_out(self.machine.recover(self.now))
        for task, old in lost.items():
            if task in self.in_flight:  # else an earlier-defined queued task took the free slot first
                assert self.in_flight[task].attempt == old.attempt + 1, f"{task} not re-run after the crash"
            else:
                assert self.machine.state.tasks[task].status is TaskStatus.QUEUED, f"{task} lost by the crash"
            assert self.machine.handle(StepSucceeded(task=task, attempt=old.attempt), self.now) == []

    def run(self) -> None:
        self.carry_out(self.machine.start(self.now))
        for _ in range(MAX_LOOPS):
            if self.machine.finished:
                return
            moves = []
            if self.in_flight:
                moves += ["answer"] * 6
            if self.timers:
                moves.append("timer")
            if self.delivered:
                moves.append("redeliver")
            if self.crashes < 2:
                moves.append("crash")
            if self.in_flight and self.interruptions < MAX_INTERRUPTIONS:
                moves.append("interrupt")
            if not self.cancelled:
                moves.append("cancel")
            assert self.in_flight or self.timers, "the run is stuck: nothing in flight, no timer, not finished"
            move = self.data.draw(st.sampled_from(moves))
            if move == "answer":
                self.answer()
            elif move == "timer":
                self.fire_timer()
            elif move == "redeliver":
                self.redeliver()
            elif move == "crash":
                self.crash_and_recover()
            elif move == "interrupt":
                self.interrupt()
            elif self.data.draw(st.integers(0, 9)) == 0:
                self.cancelled = True
                self.handle(Cancelled())
        pytest.fail(f"the run did not finish within {MAX_LOOPS} simulator steps")


@settings(max_examples=150, deadline=None)
@given(plan=plans(), data=st.data())
def test_random_runs_keep_every_scheduling_invariant(plan: Plan, data: st.DataObject) -> None:
    """Given a random DAG and random attempt outcomes, when the simulator drives the run to its end,
    then dependencies, SERIAL exclusion and the concurrency bound always held, every step ended
    in exactly one terminal state, Finish came once, the run status matches the step outcomes, and
    a task failed for want of retries only after max_retries + 1 charged failures (crashes and
    interruptions cost nothing)."""
    sim = Simulator(plan, data)

    sim.run()

    state = sim.machine.state
    event(f"run {state.status.value}")
    event(f"{sim.crashes} crash(es)")
    event(f"{sim.interruptions} interruption(s)")
    assert len(sim.finishes) == 1
    assert sim.finishes[0].status is state.status
    assert all(s.status.terminal for s in state.steps.values())
    assert all(t.status is not TaskStatus.RUNNING for t in state.tasks.values())
    required_failed = any(s.status is StepStatus.FAILED and sim.specs[n].required for n, s in state.steps.items())
    if sim.cancelled:
        assert state.status is RunStatus.CANCELLED
    else:
        assert (state.status is RunStatus.FAILED) == required_failed
        assert state.status in (RunStatus.COMPLETED, RunStatus.FAILED)
    for name, step in state.steps.items():
        if step.status is StepStatus.COMPLETED:
            assert sim.terminal_emits[name] == 1
        if step.status is StepStatus.FAILED and not sim.specs[name].required and state.status is RunStatus.FAILED:
            assert required_failed
    assert sim.machine.handle(TimerFired(), sim.now + 1e6) == []
    for task in state.tasks.values():  # crashes and interruptions never use up a retry budget
        if task.status is TaskStatus.FAILED and task.error is not None and task.error.retryable:
            budget = sim.specs[task.step].retry.max_retries
            assert sim.charged.get(task.id, 0) == budget + 1, f"{task.id} failed before its retries ran out"


def _run_with_outcomes(plan: Plan, outcomes: dict[str, list[str]]) -> dict[str, Any]:
    """Deterministic helper for the example below: answer each dispatch in order with scripted outcomes."""
    machine = RunMachine.new(plan, "run-x", rng=random.Random(0))
    queue = [a for a in machine.start(0.0) if isinstance(a, Dispatch)]
    now = 0.0
    while not machine.finished:
        if not queue:
            now = machine.next_timer()
            queue += [a for a in machine.handle(TimerFired(), now) if isinstance(a, Dispatch)]
            continue
        d = queue.pop(0)
        outcome = outcomes[d.step].pop(0)
        if outcome == "succeed":
            event: Event = StepSucceeded(task=d.task, attempt=d.attempt, output={"x": 1})
        else:
            event = StepFailed(task=d.task, attempt=d.attempt, error=ErrorInfo(type="E", message="e", retryable=True))
        queue += [a for a in machine.handle(event, now) if isinstance(a, Dispatch)]
    return {n: (s.status, s.attempts) for n, s in machine.state.steps.items()}


def test_simulated_retries_end_in_success_within_the_budget() -> None:
    """Given max_retries=2, when a step fails twice retryably and then succeeds, then it COMPLETES after 3 attempts."""
    p = Pipeline("x").step("a", fn=noop, max_retries=2)
    p.step("b", fn=noop, depends_on=["a"])
    result = _run_with_outcomes(p.plan(), {"a": ["fail", "fail", "succeed"], "b": ["succeed"]})
    assert result == {"a": (StepStatus.COMPLETED, 3), "b": (StepStatus.COMPLETED, 1)}
