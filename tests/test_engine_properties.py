"""Property test of the run state machine: random DAGs, random outcomes, invariants that always hold.

A small simulator plays the shell: it keeps the dispatched attempts "in flight",
answers them in a random order with a random outcome, fires timers by advancing a
fake clock (several results at once now and then, taken together as the daemon does), and now and then re-delivers
an old event, interrupts an attempt (its
worker died for another step's reason), crashes and recovers the machine from a
msgpack checkpoint, or cancels the run. A successful attempt may add steps at run time
(`ctx.add_step`), now and then a bad batch (a name in use), and steps may have a
compensation, so failed and cancelled runs roll back, with crashes during the rollback too.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tagent_client import DependencyType, ExecutionMode, Pipeline
from tagent_client.core import together
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
from tagent_client.core.state import Compensation, ErrorInfo, Phase, RunState, RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import Plan, StepSpec
from tagent_client.define.spec import spec_of
from tagent_client.define.step import PipelineStep

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
            compensate=noop if draw(st.booleans()) else None,
            compensate_retries=draw(st.integers(0, 1)),
        )
    return p.plan()


MAX_ADDED = 6


class Simulator:
    """Carries out actions for a RunMachine and checks the invariants after every call."""

    def __init__(self, plan: Plan, data: st.DataObject) -> None:
        self.plan = plan
        self.data = data
        self.machine = RunMachine.new(plan, "run-prop", now=0.0, rng=random.Random(0))
        self.now = 0.0
        self.in_flight: dict[str, Dispatch] = {}
        self.timers: list[float] = []
        self.delivered: list[Event] = []
        self.finishes: list[Finish] = []
        self.terminal_emits: dict[str, int] = {}
        self.terminal_seen: dict[str, StepStatus] = {}
        self.cancelled = False
        self.crashes = 0
        self.interruptions = 0
        self.charged: dict[str, int] = {}  # per task: retryable failures and timeouts delivered (each uses a retry)
        self.added = 0
        self.refused: list[str] = []  # tasks whose attempt added a step with a name in use
        self.completion_order: list[str] = []
        self.compensation_order: list[str] = []  # steps in the order their compensation was first dispatched
        self.compensation_ends: dict[str, int] = {}
        self.answered: dict[str, bool] = {}  # the tasks of the frame being answered together: was each charged

    @property
    def specs(self) -> dict[str, StepSpec]:
        return self.machine.specs

    # -- carrying out actions -------------------------------------------------------------

    def carry_out(self, actions: list[Action], reissued: dict[str, float] | None = None) -> None:
        """Carry out `actions`; `reissued` (recovery only): the retry times the checkpoint kept, per task."""
        for action in actions:
            if isinstance(action, Dispatch):
                if action.phase is Phase.COMPENSATE:
                    self.check_compensation_allowed(action)
                else:
                    self.check_dispatch_allowed(action)
                assert action.task not in self.in_flight, f"{action.task} dispatched twice at once"
                self.in_flight[action.task] = action
            elif isinstance(action, CancelTask):
                if action.task in self.answered and action.task not in self.in_flight:  # its result is in this frame
                    if self.answered[action.task]:
                        self.charged[action.task] -= 1  # ignored: it uses no retry
                    continue
                current = self.in_flight.get(action.task)
                assert current is not None and current.attempt == action.attempt, f"cancel of a task not running: {action}"
                del self.in_flight[action.task]
            elif isinstance(action, ScheduleRetry):
                if reissued is not None:  # recovery re-issues a pending retry at its time, which may have passed
                    assert action.at == reissued[action.task], f"recovery moved the retry of {action.task}: {action}"
                else:  # a new retry (or a re-armed timer) is never set in the past
                    assert action.at >= self.now, f"{action} scheduled in the past (now {self.now})"
                self.timers.append(action.at)
            elif isinstance(action, Emit) and action.topic in ("step.completed", "step.failed", "step.skipped"):
                self.terminal_emits[action.data["step"]] = self.terminal_emits.get(action.data["step"], 0) + 1
                if action.topic == "step.completed":
                    self.completion_order.append(action.data["step"])
            elif isinstance(action, Emit) and action.topic in ("step.compensated", "step.compensation_failed"):
                self.compensation_ends[action.data["step"]] = self.compensation_ends.get(action.data["step"], 0) + 1
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

    def check_compensation_allowed(self, action: Dispatch) -> None:
        """Only a completed step with a compensation, during a rollback, never after its compensation ended."""
        step = self.machine.state.steps[action.step]
        assert self.machine.state.status is RunStatus.ROLLING_BACK, f"compensation of {action.step} outside a rollback"
        assert step.status is StepStatus.COMPLETED and self.specs[action.step].has_compensation
        assert action.step not in self.compensation_ends, f"{action.step} compensated again after it ended"
        assert action.item == step.output
        if action.step not in self.compensation_order:
            self.compensation_order.append(action.step)

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
            assert self.terminal_emits.get(name, 0) <= 1, f"{name} reported terminal twice"
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
        self.handle(self.outcome(self.data.draw(st.sampled_from(sorted(self.in_flight)))))

    def answer_together(self) -> None:
        """Several results at once, as one frame of a worker brings them: the machine takes them together
        (core/together.py), as the daemon does. A result whose attempt an earlier one of the frame cancelled (or
        whose run an earlier one ended) is ignored by the machine, and its charge and its refused additions with it."""
        tasks = self.data.draw(st.permutations(sorted(self.in_flight)))
        tasks = tasks[:self.data.draw(st.integers(2, max(2, len(tasks))))]
        charged, refused = dict(self.charged), len(self.refused)
        events = [self.outcome(task) for task in tasks]
        self.delivered += events
        event(f"{len(events)} results together")
        self.answered = {task: self.charged.get(task, 0) > charged.get(task, 0) for task in tasks}
        machine, taken = self.machine, set()

        def handle(result: Event, now: float) -> list[Action]:  # notes which results the machine acts on
            running = machine.index.running.get(getattr(result, "task", ""))
            if not machine.finished and running is not None and running.attempt == getattr(result, "attempt", None):
                taken.add(running.id)
            return RunMachine.handle(machine, result, now)

        machine.handle = handle  # type: ignore[method-assign]
        try:
            self.carry_out(together.handle_all(machine, events, self.now))
        finally:
            del machine.handle
        self.refused[refused:] = [task for task in self.refused[refused:] if task in taken]
        self.answered = {}

    def outcome(self, task: str) -> Event:
        """A random result of the attempt of `task` in flight (no longer in flight)."""
        dispatch = self.in_flight.pop(task)
        outcome = self.data.draw(st.sampled_from(OUTCOMES))
        self.now += self.data.draw(st.sampled_from([0.0, 0.1, 0.7]))
        if outcome == "succeed":
            added = self.additions(dispatch)
            event: Event = StepSucceeded(task=task, attempt=dispatch.attempt, output=self.data.draw(st.sampled_from(OUTPUTS)),
                                         added=added)
        elif outcome == "timeout":
            event = StepTimedOut(task=task, attempt=dispatch.attempt, timeout=1.0)
        else:
            error = ErrorInfo(type="ConnectionError" if outcome == "retryable" else "ValueError",
                              message=outcome, retryable=outcome == "retryable")
            event = StepFailed(task=task, attempt=dispatch.attempt, error=error)
        if outcome in ("retryable", "timeout"):
            self.charged[task] = self.charged.get(task, 0) + 1
        return event

    def additions(self, dispatch: Dispatch) -> list[StepSpec]:
        """Now and then, steps this attempt adds: new names depending on steps of the run or of the batch,
        or (rarely) a name the run already has, which must fail the attempt."""
        if dispatch.phase is not Phase.RUN or self.added >= MAX_ADDED or self.data.draw(st.integers(0, 3)) != 0:
            return []
        if self.data.draw(st.integers(0, 4)) == 0:
            self.refused.append(dispatch.task)
            return [spec_of(PipelineStep(name=dispatch.step, fn=noop), [])]
        batch: list[StepSpec] = []
        for _ in range(self.data.draw(st.integers(1, 2))):
            self.added += 1
            known = [*self.specs, *(s.name for s in batch)]
            deps = {d: DependencyType.HARD for d in known if self.data.draw(st.integers(0, 3)) == 0}
            batch.append(spec_of(PipelineStep(name=f"d{self.added}", fn=noop, depends_on=deps,
                                              compensate=noop if self.data.draw(st.booleans()) else None,
                                              max_retries=self.data.draw(st.integers(0, 1))), []))
        return batch

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
        self.machine = RunMachine(self.plan, state, rng=random.Random(self.crashes))  # added steps come back from state
        self.in_flight.clear()
        self.crashes += 1
        kept = {t.id: t.retry_at for t in state.tasks.values() if t.status is TaskStatus.WAITING_RETRY and t.retry_at is not None}
        self.carry_out(self.machine.recover(self.now), reissued=kept)
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
            if len(self.in_flight) > 1:
                moves += ["together"] * 2
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
            actions = {"answer": self.answer, "together": self.answer_together, "timer": self.fire_timer,
                       "redeliver": self.redeliver,
                       "crash": self.crash_and_recover, "interrupt": self.interrupt}
            if move in actions:
                actions[move]()
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
    ended = state.rolled_back_from or state.status
    if sim.cancelled and ended is RunStatus.CANCELLED:
        pass  # a cancel that arrived during a rollback changed nothing
    else:
        assert (ended is RunStatus.FAILED) == required_failed
        assert ended in (RunStatus.COMPLETED, RunStatus.FAILED)
    undo = [n for n in reversed(sim.completion_order) if sim.specs[n].has_compensation]
    if ended is RunStatus.COMPLETED or not undo:
        assert state.rolled_back_from is None and not sim.compensation_order
    else:  # compensation ran exactly for the completed steps that have one, latest completion first, each once
        event(f"rolled back {len(undo)} step(s)")
        assert sim.compensation_order == undo
        assert sim.compensation_ends == dict.fromkeys(undo, 1)
        failed = [n for n in undo if state.steps[n].compensation is Compensation.FAILED]
        assert state.status is (RunStatus.ROLLBACK_FAILED if failed else RunStatus.ROLLED_BACK)
    for task in sim.refused:  # a batch naming a step the run has fails its attempt, for good
        refused = state.steps[task]
        assert refused.status is StepStatus.FAILED and refused.error is not None and refused.error.type == "DynamicStepError"
    for name, step in state.steps.items():
        if step.spec is not None:
            event("steps added")
            assert step.spec.added_by in sim.completion_order, f"{name} added by a step that never completed"
        if step.status is StepStatus.COMPLETED:
            assert sim.terminal_emits[name] == 1
        if step.status is StepStatus.FAILED and not sim.specs[name].required and state.status is RunStatus.FAILED:
            assert required_failed
    assert sim.machine.handle(TimerFired(), sim.now + 1e6) == []
    for task in state.tasks.values():  # crashes and interruptions never use up a retry budget
        if task.phase is not Phase.COMPENSATE and task.status is TaskStatus.FAILED and task.error is not None and task.error.retryable:
            budget = sim.specs[task.step].retry.max_retries
            assert sim.charged.get(task.id, 0) == budget + 1, f"{task.id} failed before its retries ran out"


class Scripted:
    """Stands in for Hypothesis' `data`: each draw takes the next scripted value, to replay a found case."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, strategy: Any) -> Any:
        return self.values.pop(0)


def test_a_recovery_after_retry_times_passed_reissues_them_at_their_time_and_runs_them() -> None:
    """The case Hypothesis found (a retry re-issued in the past). Given one slot, s0 and s2 failed retryably
    (retries due at about 1.0 and 1.16) and the clock moved on to 1.4 while s3 ran, when the machine crashes
    and recovers at 1.4, then it keeps both retry times (s2's has passed: a shell fires it at once), s0 takes
    the slot, and the run still ends with every step in one terminal state."""
    p = Pipeline("prop", max_concurrent_steps=1)
    p.step("s0", fn=noop, max_retries=1, retry_delay=1.0)
    p.step("s1", fn=noop, execution_mode=ExecutionMode.CONCURRENT, max_retries=0, retry_delay=0.5)
    p.step("s2", fn=noop, execution_mode=ExecutionMode.CONCURRENT, max_retries=1, retry_delay=0.5)
    p.step("s3", fn=noop, execution_mode=ExecutionMode.CONCURRENT, max_retries=0, retry_delay=0.5)
    p.step("s4", fn=noop, max_retries=0, retry_delay=0.5)
    script = Scripted()
    sim = Simulator(p.plan(), script)  # type: ignore[arg-type]
    sim.carry_out(sim.machine.start(sim.now))
    script.values += ["s0", "retryable", 0.0]  # s0 fails: retry at ~1.0
    script.values += ["s1", "succeed", 0.0, 0, 0, OUTPUTS[0]]  # s1 adds a step named s1: refused, fails
    script.values += ["s2", "retryable", 0.7]  # s2 fails at 0.7: retry at ~1.16
    script.values += ["s3", "succeed", 0.7, 1, OUTPUTS[0]]  # s3 ends at 1.4; s0's retry takes the slot
    for _ in range(4):
        sim.answer()
    overdue = sim.machine.state.tasks["s2"].retry_at
    assert overdue is not None and overdue < sim.now == 1.4

    sim.crash_and_recover()

    assert sim.timers.count(overdue) == 2  # set when s2 failed, and again by the recovery: the same time
    while not sim.machine.finished:  # then everything else succeeds
        if sim.in_flight:
            script.values += [min(sim.in_flight), "succeed", 0.1, 1, OUTPUTS[0]]
            sim.answer()
        else:
            sim.fire_timer()
    state = sim.machine.state
    assert {n: s.status for n, s in state.steps.items()} == {
        "s0": StepStatus.COMPLETED, "s1": StepStatus.FAILED, "s2": StepStatus.COMPLETED,
        "s3": StepStatus.COMPLETED, "s4": StepStatus.COMPLETED}
    assert len(sim.finishes) == 1


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
