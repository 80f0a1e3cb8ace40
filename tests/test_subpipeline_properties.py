"""Property test of child runs: random DAGs nesting one level of sub-pipelines, random outcomes and crashes.

A small shell plays the daemon's run driver for a parent run and its child runs, with the rules of
`tagent_client.core.children` (child ids from the charged attempt, the `ChildLedger`, `child_outcome`):
a sub-pipeline task's successful attempt starts (or re-attaches to) its child instead of reporting, the
child's end is fed back to the parent, and the children a parent's actions leave waiting for nobody are
cancelled. It answers attempts of every run in a random order with random outcomes, fires timers, crashes
and recovers every machine from a msgpack checkpoint (the ledger is lost, as the daemon's memory is), and
cancels the parent. Every run must end, and no child may be left unfinished (orphaned) or started twice.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_engine_properties import OUTCOMES, OUTPUTS, noop, plans

from tagent_client import Pipeline
from tagent_client.core.children import (
    ChildLedger,
    charged_attempt,
    child_outcome,
    child_output,
    child_run_id,
    may_orphan,
    orphans,
)
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import (
    Action,
    Cancelled,
    CancelTask,
    Dispatch,
    Event,
    Finish,
    ScheduleRetry,
    StepFailed,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
)
from tagent_client.core.result import PipelineResult
from tagent_client.core.state import ErrorInfo, Phase, RunState, RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import DependencyType, ExecutionMode, Plan, RetrySpec, StepKind, StepSpec

pytestmark = pytest.mark.timeout(120)

PARENT = "parent-run"
MAX_LOOPS = 4_000


@st.composite
def nested_plans(draw: st.DrawFn) -> Plan:
    """A random parent DAG with one or two sub-pipeline steps (fan-out or single), each running a random child DAG."""
    parent = draw(plans())
    steps = list(parent.steps)
    for n in range(draw(st.integers(1, 2))):
        child = msgspec.structs.replace(draw(plans()), name=f"child{n}")
        deps = {s.name: DependencyType.HARD for s in steps if draw(st.integers(0, 3)) == 0}  # children start early
        fan_out = draw(st.booleans())
        steps.append(StepSpec(
            name=f"sub{n}", kind=StepKind.PIPELINE, deps=deps, child=child,
            mode=ExecutionMode.PARALLEL_MERGE if fan_out else ExecutionMode.CONCURRENT,
            over=list(range(draw(st.integers(0, 3)))) if fan_out else None,
            retry=RetrySpec(max_retries=draw(st.integers(0, 2)), delay=0.5), required=draw(st.booleans()),
        ))
    return msgspec.structs.replace(parent, steps=steps)


class Family:
    """Carries out the actions of a parent run and its children the way the daemon's driver does."""

    def __init__(self, plan: Plan, data: st.DataObject) -> None:
        self.data = data
        self.plans: dict[str, Plan] = {PARENT: plan}
        self.machines: dict[str, RunMachine] = {PARENT: RunMachine.new(plan, PARENT, rng=random.Random(0))}
        self.in_flight: dict[tuple[str, str], Dispatch] = {}
        self.timers: list[tuple[float, str]] = []
        self.ledger = ChildLedger()
        self.now = 0.0
        self.crashes = 0
        self.cancelled = False
        self.starts: dict[str, int] = {}  # child id -> how often a new child machine was made for it
        self.by_attempt: dict[tuple[str, int], str] = {}  # (task, charged attempt) -> its child
        self.depth = 0  # how deep apply() calls are nested (a child's end feeds its parent, ...)
        self.links: dict[str, str] = {}  # child id -> the parent's task it reports to (its durable ChildLink)

    @property
    def parent(self) -> RunMachine:
        return self.machines[PARENT]

    # -- the driver ----------------------------------------------------------------------------------

    def apply(self, run_id: str, actions: list[Action]) -> None:
        self.depth += 1
        try:
            self.carry_out(run_id, actions)
        finally:
            self.depth -= 1
        if self.depth == 0:  # the turn is over: nothing may be left in between
            self.check_no_orphan()

    def carry_out(self, run_id: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                assert (run_id, action.task) not in self.in_flight, f"{run_id}:{action.task} dispatched twice at once"
                self.in_flight[(run_id, action.task)] = action
            elif isinstance(action, CancelTask):
                self.in_flight.pop((run_id, action.task), None)
            elif isinstance(action, ScheduleRetry):
                self.timers.append((action.at, run_id))
        if run_id == PARENT and may_orphan(actions):
            live = {c: task for c, task in self.links.items() if not self.machines[c].finished}
            for child in orphans(self.parent.state, live):
                self.ledger.ended(child)
                self.apply(child, self.machines[child].handle(Cancelled(reason=f"parent run {run_id} ended"), self.now))
        if run_id != PARENT and any(isinstance(a, Finish) for a in actions):
            self.child_ended(run_id)

    def check_no_orphan(self) -> None:
        """Every unfinished child's task is still live in the parent (queued, running or waiting to retry) and its
        current or next attempt is the one the child belongs to (a retry starts a child of its own), unless the
        child is rolling back: its compensations run to their end on their own, whoever waited for it."""
        for child, task in self.links.items():
            if not self.machines[child].finished and self.machines[child].state.status is not RunStatus.ROLLING_BACK:
                assert not self.parent.finished, f"child {child} outlived its parent"
                state = self.parent.state.tasks.get(task)
                assert state is not None and state.status.name not in ("CANCELLED", "FAILED", "SUCCEEDED"), (
                    f"child {child} runs for {task}, which no longer waits for it")
                next_charged = state.attempt - state.interrupted + (state.status.name != "RUNNING")
                assert child == child_run_id(PARENT, task, next_charged), (
                    f"child {child} runs for {task}, whose attempt {state.attempt} ({state.status.name}) has another")

    def child_ended(self, child: str) -> None:
        waiter = self.ledger.ended(child)
        if waiter is not None:
            result = PipelineResult.from_state(self.plans[child], self.machines[child].state)
            self.apply(waiter[0], self.machines[waiter[0]].handle(child_outcome(waiter[1], waiter[2], result), self.now))

    def start_child(self, dispatch: Dispatch) -> None:
        """The params attempt of a sub-pipeline task succeeded: start its child, or re-attach to it."""
        task = self.parent.state.tasks[dispatch.task]
        assert task.attempt == dispatch.attempt
        child = child_run_id(PARENT, dispatch.task, charged_attempt(task))
        first = self.by_attempt.setdefault((dispatch.task, charged_attempt(task)), child)
        assert first == child, f"{dispatch.task} charged attempt {charged_attempt(task)} has two children"
        self.ledger.started(PARENT, dispatch.task, dispatch.attempt, child)
        if child not in self.machines:
            plan = self.parent.specs[dispatch.step].child
            assert plan is not None
            self.starts[child] = self.starts.get(child, 0) + 1
            self.plans[child] = plan
            self.links[child] = dispatch.task
            self.machines[child] = RunMachine.new(plan, child, now=self.now, rng=random.Random(len(self.machines)))
            self.apply(child, self.machines[child].start(self.now))
        elif self.machines[child].finished:
            self.child_ended(child)

    # -- the world's choices ---------------------------------------------------------------------------

    def answer(self) -> None:
        key = self.data.draw(st.sampled_from(sorted(self.in_flight)))
        dispatch = self.in_flight.pop(key)
        run_id = key[0]
        outcome = self.data.draw(st.sampled_from(OUTCOMES))
        self.now += self.data.draw(st.sampled_from([0.0, 0.1, 0.7]))
        spec = self.machines[run_id].specs[dispatch.step]
        if outcome == "succeed" and spec.child is not None and dispatch.phase is Phase.RUN:
            self.start_child(dispatch)
            return
        if outcome == "succeed":
            event: Event = StepSucceeded(task=dispatch.task, attempt=dispatch.attempt,
                                         output=self.data.draw(st.sampled_from(OUTPUTS)))
        elif outcome == "timeout":
            event = StepTimedOut(task=dispatch.task, attempt=dispatch.attempt, timeout=1.0)
        else:
            error = ErrorInfo(type="ConnectionError" if outcome == "retryable" else "ValueError",
                              message=outcome, retryable=outcome == "retryable")
            event = StepFailed(task=dispatch.task, attempt=dispatch.attempt, error=error)
        self.apply(run_id, self.machines[run_id].handle(event, self.now))

    def fire_timer(self) -> None:
        due, run_id = min(self.timers)
        self.timers.remove((due, run_id))
        self.now = max(self.now, due)
        self.apply(run_id, self.machines[run_id].handle(TimerFired(), self.now))

    def crash_and_recover(self) -> None:
        """kill -9: every machine comes back from its checkpoint, the shell's memory (ledger, in flight) is lost."""
        self.crashes += 1
        self.in_flight.clear()
        self.timers.clear()
        self.ledger = ChildLedger()
        for run_id, machine in list(self.machines.items()):
            state = msgspec.msgpack.decode(msgspec.msgpack.encode(machine.state), type=RunState)
            self.machines[run_id] = RunMachine(self.plans[run_id], state, rng=random.Random(self.crashes))
        for run_id, machine in list(self.machines.items()):
            if not machine.finished:
                self.apply(run_id, machine.recover(self.now))

    def run(self) -> None:
        self.apply(PARENT, self.parent.start(self.now))
        for _ in range(MAX_LOOPS):
            if all(m.finished for m in self.machines.values()):
                return
            moves = ["answer"] * 6 if self.in_flight else []
            if self.timers:
                moves.append("timer")
            if self.crashes < 2:
                moves.append("crash")
            if not self.cancelled and not self.parent.finished:
                moves.append("cancel")
            assert self.in_flight or self.timers, "stuck: nothing in flight, no timer, and a run not finished"
            move = self.data.draw(st.sampled_from(moves))
            if move == "answer":
                self.answer()
            elif move == "timer":
                self.fire_timer()
            elif move == "crash":
                self.crash_and_recover()
            elif self.data.draw(st.integers(0, 19)) == 0:
                self.cancelled = True
                self.apply(PARENT, self.parent.handle(Cancelled(reason="user"), self.now))
        pytest.fail(f"the runs did not finish within {MAX_LOOPS} simulator steps")


@settings(max_examples=150, deadline=None)
@given(plan=nested_plans(), data=st.data())
def test_nested_runs_all_end_and_no_child_is_orphaned_or_started_twice(plan: Plan, data: st.DataObject) -> None:
    """Given a random parent DAG with sub-pipeline steps, random outcomes, crashes and a cancel,
    when the shell drives every run to its end,
    then the parent and every child run ended (none orphaned), no child id was started twice (a re-run after a
    crash re-attaches), and each completed sub-pipeline step's output is what its children gave."""
    family = Family(plan, data)

    family.run()

    event(f"parent {family.parent.state.status.value}, {len(family.machines) - 1} child run(s), {family.crashes} crash(es)")
    assert all(m.finished for m in family.machines.values()), "a child run was left unfinished"
    assert all(count == 1 for count in family.starts.values()), "a child run was started twice"
    for name, step in family.parent.state.steps.items():
        if family.parent.specs[name].child is None or step.status is not StepStatus.COMPLETED:
            continue
        outputs = step.output if step.items is not None else [step.output]
        tasks = [f"{name}[{i}]" for i in range(len(outputs))] if step.items is not None else [name]
        for task, output in zip(tasks, outputs, strict=True):
            given = [child_output(PipelineResult.from_state(family.plans[c], family.machines[c].state))
                     for c in family.machines if c != PARENT and any(c == child_run_id(PARENT, task, k) for k in range(1, 40))
                     and family.machines[c].state.status.value == "completed"]
            assert output in given, f"{task} completed with an output no child of it gave"


def test_a_child_whose_task_was_cancelled_is_an_orphan_while_its_parent_goes_on() -> None:
    """Given a parent whose fan-out step has a child running for item 1, and another step still running
    When item 0 fails for good (its step fails, so item 1's task is cancelled)
    Then the parent goes on, and `orphans` names item 1's child, which nobody waits for any more."""
    child = Pipeline("child")
    child.step("x", fn=noop)
    parent = Pipeline("parent", max_concurrent_steps=4)
    parent.step("slow", fn=noop, execution_mode=ExecutionMode.CONCURRENT)
    parent.step("each", pipeline=child, over=[0, 1], max_retries=0, required=False)
    machine = RunMachine.new(parent.plan(), PARENT)
    dispatched = {a.task: a for a in machine.start(0.0) if isinstance(a, Dispatch)}
    assert sorted(dispatched) == ["each[0]", "each[1]", "slow"]
    live = {child_run_id(PARENT, "each[1]", 1): "each[1]"}  # item 1's params attempt succeeded: its child runs
    assert orphans(machine.state, live) == []

    error = ErrorInfo(type="ValueError", message="bad params", retryable=False)
    actions = machine.handle(StepFailed(task="each[0]", attempt=1, error=error), 0.1)

    assert not machine.finished and may_orphan(actions)
    assert orphans(machine.state, live) == list(live)


def parent_with_a_child_running() -> tuple[RunMachine, dict[str, str]]:
    """A parent whose step `paid` (it has a compensation) completed and whose sub-pipeline task `sub` runs its
    child (the child of its first charged attempt); returns the machine and {child id: task}."""
    child = Pipeline("child")
    child.step("x", fn=noop)
    parent = Pipeline("parent", max_concurrent_steps=2)
    parent.step("paid", fn=noop, compensate=noop, execution_mode=ExecutionMode.CONCURRENT)
    parent.step("sub", pipeline=child, max_retries=2, execution_mode=ExecutionMode.CONCURRENT)
    machine = RunMachine.new(parent.plan(), PARENT, rng=random.Random(0))
    assert sorted(a.task for a in machine.start(0.0) if isinstance(a, Dispatch)) == ["paid", "sub"]
    machine.handle(StepSucceeded(task="paid", attempt=1, output=None), 0.1)
    live = {child_run_id(PARENT, "sub", 1): "sub"}
    assert orphans(machine.state, live) == []
    return machine, live


def test_a_task_that_moves_on_to_a_retry_orphans_the_child_of_its_earlier_attempt() -> None:
    """A case Hypothesis found. Given a sub-pipeline task whose child runs, and whose attempt re-run after a
    crash (same charged attempt: it would re-attach) ends before re-attaching (it timed out)
    When the task waits to retry (its retry is charged: it will start a child of its own)
    Then `may_orphan` says so and `orphans` names the old child, which nobody will re-attach to."""
    machine, live = parent_with_a_child_running()
    machine.handle(StepInterrupted(task="sub", attempt=1, reason="crash"), 0.2)  # re-run at once, as attempt 2
    assert machine.state.tasks["sub"].attempt == 2 and orphans(machine.state, live) == []

    actions = machine.handle(StepTimedOut(task="sub", attempt=2, timeout=1.0), 0.3)

    assert machine.state.tasks["sub"].status is TaskStatus.WAITING_RETRY
    assert may_orphan(actions) and orphans(machine.state, live) == list(live)


def test_a_cancel_that_rolls_the_parent_back_orphans_the_child_of_a_queued_task() -> None:
    """A case Hypothesis found. Given a sub-pipeline task whose child runs and which is queued to re-run
    (re-attach) after an interruption, and a completed step with a compensation
    When the run is cancelled, so it rolls back (no Finish yet) and the queued task is cancelled (no CancelTask)
    Then `may_orphan` says so and `orphans` names the child: it is cancelled now, not when the rollback ends."""
    machine, live = parent_with_a_child_running()
    machine.hold()  # (the daemon is stopping: the interrupted attempt stays queued)
    machine.handle(StepInterrupted(task="sub", attempt=1, reason="crash"), 0.2)
    assert machine.state.tasks["sub"].status is TaskStatus.QUEUED and orphans(machine.state, live) == []

    actions = machine.handle(Cancelled(reason="user"), 0.3)

    assert machine.state.status is RunStatus.ROLLING_BACK and not any(isinstance(a, (Finish, CancelTask)) for a in actions)
    assert may_orphan(actions) and orphans(machine.state, live) == list(live)
