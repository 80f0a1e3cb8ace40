"""A step costs the same in a big run as in a small one (issue 17: flat at scale), and memory stays bounded.

Most tests drive a `RunMachine` directly through one shape of run at two sizes, N and 4N, and count
the work the engine does: the lines of `tagent_client/core/` executed (a `sys.settrace` counter, so
no clock and no load on the machine sways it). Work per step must stay about the same when the run
is four times bigger; an engine that looks again at every dependency, item or queued task each time
one of them changes does about four times the work per step at 4N and fails here. The same counter
watches defining a pipeline and answering a follower's "events after N"; the last test bounds the
finished runs the daemon keeps in memory by their steps.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tagent_client import DependencyType, ExecutionMode, Pipeline, when
from tagent_client.core import engine
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Cancelled, Dispatch, StepFailed, StepSucceeded, TimerFired
from tagent_client.core.state import ErrorInfo, RunStatus, StepStatus
from tagentd.runs import run as run_module
from tagentd.runs import submission
from tagentd.runs.durable import DurableStore
from tagentd.runs.table import RunTable

pytestmark = pytest.mark.timeout(120)

CORE = str(Path(engine.__file__).parent)
DEFINE = str(Path(engine.__file__).parent.parent / "define")
SMALL, BIG = 150, 600
#: Work per step at 4x the size over work per step at 1x: ~1 when linear, ~3-4 when quadratic.
MAX_GROWTH = 1.3
OUTPUT = {"valid": True, "url": "u", "n": 1}


def noop() -> None:
    return None


def lines_run(body: Callable[[], Any], package: str = CORE) -> int:
    """How many lines of `package` (tagent_client/core/) `body` executes (loop iterations count each time)."""
    count = 0

    def in_core(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return in_core

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return in_core if frame.f_code.co_filename.startswith(package) else None

    sys.settrace(calls)
    try:
        body()
    finally:
        sys.settrace(None)
    return count


def drive(pipeline: Pipeline, fail_first: frozenset[str] = frozenset()) -> RunMachine:
    """Run `pipeline` to its end: each dispatched task succeeds (with OUTPUT) in dispatch order, except the first
    attempt of the steps in `fail_first`, which fails retryably; retries are due at once (the clock jumps)."""
    machine = RunMachine.new(pipeline.plan(), "run-1", now=0.0, rng=random.Random(1))
    now = 0.0
    todo = deque(a for a in machine.start(now) if isinstance(a, Dispatch))
    while todo or not machine.finished:
        now += 1.0
        if not todo:  # only retries are left: their time comes
            now += 100.0
            todo.extend(a for a in machine.handle(TimerFired(), now) if isinstance(a, Dispatch))
            assert todo or machine.finished, "the run stalled"
            continue
        task = todo.popleft()
        if task.attempt == 1 and task.step in fail_first:
            event: Any = StepFailed(task=task.task, attempt=task.attempt, error=ErrorInfo(type="E", message="x", retryable=True))
        else:
            event = StepSucceeded(task=task.task, attempt=task.attempt, output=OUTPUT)
        todo.extend(a for a in machine.handle(event, now) if isinstance(a, Dispatch))
    assert machine.state.status is RunStatus.COMPLETED, machine.state.error
    return machine


def growth(shape: Callable[[int], Pipeline], **options: Any) -> float:
    """Work per step of the run `shape(BIG)` over that of `shape(SMALL)`."""
    per_step = []
    for n in (SMALL, BIG):
        pipeline = shape(n)
        work = lines_run(lambda: drive(pipeline, **options))  # noqa: B023 - called at once
        per_step.append(work / len(pipeline.plan().steps))
    return per_step[1] / per_step[0]


def fan_in(n: int, kinds: tuple[DependencyType, ...] = (DependencyType.HARD,), **end: Any) -> Pipeline:
    """start -> n steps -> end, where end depends on each of the n by `kinds` in turn."""
    p = Pipeline("fan_in", max_concurrent_steps=n + 2)
    p.step("start", fn=noop)
    for i in range(n):
        p.step(f"f{i}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
    deps = {f"f{i}": kinds[i % len(kinds)] for i in range(n)}
    data = {name: ["url"] for name, kind in deps.items() if kind is DependencyType.DATA}
    p.step("end", fn=noop, depends_on=deps, data_fields=data, **end)
    return p


@pytest.mark.parametrize("kinds", [
    (DependencyType.HARD,),
    (DependencyType.SOFT,),
    (DependencyType.DATA,),
    (DependencyType.VALIDATION,),
    (DependencyType.HARD, DependencyType.SOFT, DependencyType.DATA, DependencyType.VALIDATION),
], ids=["hard", "soft", "data", "validation", "mixed"])
def test_a_step_with_n_dependencies_costs_o1_per_finished_dependency(kinds: tuple[DependencyType, ...]) -> None:
    """Given start -> N steps -> end (end depends on all N by each dependency type),
    when the N finish one by one in definition order (the order that made the engine look at every
    finished dependency again each time), then the work per step at 4N is about that at N."""
    assert growth(lambda n: fan_in(n, kinds)) < MAX_GROWTH


def test_a_fan_in_with_a_condition_stays_linear() -> None:
    """Given the fan-in whose last step has a condition on the params, then its work per step stays flat too."""
    assert growth(lambda n: fan_in(n, condition=when("params.mode") != "off")) < MAX_GROWTH


def test_a_parallel_merge_of_n_items_through_few_slots_stays_linear() -> None:
    """Given a PARALLEL_MERGE step over N items with a merge, run 4 at a time (most items queued),
    when the items finish one by one, then neither counting the finished items nor picking the next
    queued one looks at every item: the work per item at 4N is about that at N."""

    def merge_of(n: int) -> Pipeline:
        p = Pipeline("merge", max_concurrent_steps=4)
        p.step("fan", fn=noop, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(n)), merge=len)
        p.step("after", fn=noop, depends_on=["fan"])
        return p

    def per_item(n: int) -> float:
        pipeline = merge_of(n)
        return lines_run(lambda: drive(pipeline)) / n

    assert per_item(BIG) / per_item(SMALL) < MAX_GROWTH


def test_many_queued_serial_steps_stay_linear() -> None:
    """Given N independent SERIAL steps (one runs at a time, the others wait queued), then picking the next
    one does not walk past every waiting one: the work per step at 4N is about that at N."""

    def serial(n: int) -> Pipeline:
        p = Pipeline("serial")
        for i in range(n):
            p.step(f"s{i}", fn=noop)
        return p

    assert growth(serial) < MAX_GROWTH


def test_many_retries_waiting_stay_linear() -> None:
    """Given the fan-in whose N middle steps each fail once (retryable) before they succeed, then finding the
    retries that are due does not look at every waiting one each time: the work per step at 4N is about that at N."""
    per_step = []
    for n in (SMALL, BIG):
        pipeline = fan_in(n)
        fail = frozenset(f"f{i}" for i in range(n))
        per_step.append(lines_run(lambda: drive(pipeline, fail_first=fail)) / n)  # noqa: B023 - called at once
    assert per_step[1] / per_step[0] < MAX_GROWTH


ALL_KINDS = (DependencyType.HARD, DependencyType.SOFT, DependencyType.DATA, DependencyType.VALIDATION)


def _run_fan_in(output: Callable[[str], dict[str, Any]]) -> tuple[RunMachine, list[Dispatch]]:
    """The 8-way fan-in by every dependency type, each f<i> succeeding with `output(step)`: the machine after,
    and the dispatches of `end`."""
    machine = RunMachine.new(fan_in(8, ALL_KINDS).plan(), "run-1", now=0.0)
    todo = deque(a for a in machine.start(0.0) if isinstance(a, Dispatch))
    ends = []
    while todo:
        task = todo.popleft()
        dispatched = [a for a in machine.handle(StepSucceeded(task=task.task, attempt=task.attempt,
                                                              output=output(task.step)), 1.0)
                      if isinstance(a, Dispatch)]
        ends += [a for a in dispatched if a.step == "end"]
        todo.extend(a for a in dispatched if a.step != "end")
    return machine, ends


def test_the_fan_in_step_gets_every_input_and_is_skipped_by_a_gate_that_did_not_pass() -> None:
    """Given the fan-in by every dependency type, then end is dispatched with each dependency's output as its
    input; and given one VALIDATION dependency whose output says invalid, then end is SKIPPED naming that gate."""
    machine, ends = _run_fan_in(lambda step: {"valid": step != "f3", "url": "u"})  # f3 is a VALIDATION dependency
    assert not ends
    assert machine.state.steps["end"].status is StepStatus.SKIPPED
    assert machine.state.steps["end"].skip_reason == "validation gate 'f3' did not pass"
    assert drive(fan_in(8, ALL_KINDS)).state.steps["end"].status is StepStatus.COMPLETED


def test_the_fan_in_step_runs_with_every_dependency_output() -> None:
    """Given the fan-in by every dependency type, when all N succeed, then end's dispatch carries all N inputs."""
    _, ends = _run_fan_in(lambda step: {"valid": True, "url": step})
    assert len(ends) == 1
    assert ends[0].inputs == {f"f{i}": {"valid": True, "url": f"f{i}"} for i in range(8)}


def test_defining_and_planning_n_steps_stays_linear() -> None:
    """Given a chain of N steps defined with `pipeline.step` one by one, when it is validated and planned, then
    neither adding a step (is its name taken?) nor checking one (its parameters among all steps) looks at every
    step: the definition's work per step at 4N is about that at N (a 10,000-step file loads within the timeout)."""

    def define(n: int) -> None:
        p = Pipeline("chain")
        for i in range(n):
            p.step(f"s{i}", fn=noop, depends_on=[f"s{i - 1}"] if i else None)
        p.plan()

    small, big = (lines_run(lambda: define(n), DEFINE) / n for n in (SMALL, BIG))  # noqa: B023 - called at once
    assert big / small < MAX_GROWTH


def test_steps_by_name_follow_every_change_of_the_list() -> None:
    """Given a pipeline's steps looked up by name (an index), when the list is changed in any way (append,
    insert, remove, pop, del, assignment, extend, clear), then lookups by name see the change at once."""
    p = Pipeline("p").step("a", fn=noop).step("b", fn=noop)
    steps = p.steps
    assert "a" in steps and steps["b"].name == "b" and steps.get("c") is None
    c = Pipeline("q").step("c", fn=noop).steps[0]
    steps.insert(0, c)
    assert steps["c"] is c
    steps.remove(c)
    assert "c" not in steps
    steps.pop()
    assert "b" not in steps and "a" in steps
    steps[0] = c
    assert "a" not in steps and "c" in steps
    del steps[0]
    assert "c" not in steps
    steps.extend([c])
    assert "c" in steps
    steps.clear()
    assert "c" not in steps and steps.get("c") is None
    p.step("a", fn=noop).step("a", fn=noop)
    assert [s.name for s in steps] == ["a"] and "duplicate step name 'a'" in " ".join(p.problems())


def test_a_follower_asking_for_new_events_of_a_long_run_is_not_answered_by_a_scan() -> None:
    """Given a run that has announced 20,000 events and 20,000 log lines (a 10,000-step run), when a follower
    (`tagent watch`, `Client.wait`) asks for what came after the newest few, as it does after every commit,
    then the daemon finds them by a binary search: a handful of lines run, not one per event."""
    run = submission.new_run(Pipeline("long").step("a", fn=noop).plan(), path="/p/long.py", source="src",
                             target=None, params=None, model=None, who="test")
    for i in range(20_000):
        run.add_event("step.completed", {"step": f"s{i}"}, float(i))
        run.add_log("a", 20, f"line {i}", float(i))
    newest = run.event_seq - 3
    here = str(Path(run_module.__file__))
    events, lines = [], []
    work = lines_run(lambda: (events.extend(run.events_after(newest)), lines.extend(run.logs_after(run.log_seq - 3))),
                     here)
    assert [e.seq for e in events] == [newest + 1, newest + 2, newest + 3]
    assert [line.message for line in lines] == ["line 19997", "line 19998", "line 19999"]
    assert work < 50


def test_finished_runs_in_memory_are_bounded_by_their_steps_not_only_their_number(tmp_path: Path) -> None:
    """Given a durable run table that may keep 256 finished runs but 1,000 steps in memory, when five 400-step runs
    finish (each written by a flush), then only the two most recent stay whole (800 steps) and the others are read
    back from disk when asked for; a run bigger than the budget alone still stays while it is the most recent."""
    store = DurableStore(tmp_path)
    table = RunTable(store, cache_size=256, cache_steps=1_000)
    wide = Pipeline("wide")
    for i in range(400):
        wide.step(f"s{i}", fn=noop)

    def finish(pipeline: Pipeline) -> str:
        run = submission.new_run(pipeline.plan(), path="/p/w.py", source="src", target=None, params=None, model=None,
                                 who="test")
        table.add(run)
        store.created(run)
        run.machine.handle(Cancelled(reason="done"), 1.0)
        asyncio.run(store.flush())
        table.finished(run)
        table.trim()
        return run.id

    ids = [finish(wide) for _ in range(5)]
    assert table.stats()["finished_in_memory"] == 2
    assert [table.live(rid) is not None for rid in ids] == [False, False, False, True, True]
    assert table.get(ids[0]).id == ids[0]  # read back from its snapshot
    huge = Pipeline("huge")
    for i in range(1_500):
        huge.step(f"h{i}", fn=noop)
    big = finish(huge)
    assert table.live(big) is not None and table.stats()["finished_in_memory"] == 1
