"""The run state machine (RunMachine), driven directly: retries (backoff, jitter, timeouts,
lost workers, interruptions that use no retry), events that arrive stale, and how a
run ends early or partly (cancel, fail_fast, optional steps, the final output).

Driven as test_engine.py says (engine_helpers.py): a plan, events with a fake `now`, no step function run.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from engine_helpers import (
    CONCURRENT,
    PARALLEL_MERGE,
    chain_pipeline,
    dispatch_of,
    dispatched,
    fail,
    finishes,
    flaky_pipeline,
    noop,
    started,
    status,
    steps,
    succeed,
    topics,
)

from tagent_client import Pipeline
from tagent_client.core.events import (
    Cancelled,
    CancelTask,
    Emit,
    Finish,
    Persist,
    ScheduleRetry,
    StepInterrupted,
    StepSucceeded,
    StepTimedOut,
    TimerFired,
    WorkerLost,
)
from tagent_client.core.result import PipelineResult
from tagent_client.core.rules import backoff_delay
from tagent_client.core.state import RunStatus, StepStatus, TaskStatus
from tagent_client.define.plan import RetrySpec

pytestmark = pytest.mark.timeout(60)


# -- retries -----------------------------------------------------------------------------------------------------




def test_retryable_failures_back_off_exponentially_within_jitter_bounds_and_capped() -> None:
    """Given delay=1, backoff=2, max_delay=3, jitter=0.1, when `flaky` fails retryably three times,
    then each retry is scheduled at now + d with d in [base*0.9, base] for bases 1, 2, 3 (capped)."""
    machine, _ = started(flaky_pipeline())
    now = 10.0
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        actions = fail(machine, "flaky", retryable=True, now=now, type_="ConnectionError")
        (retry,) = [a for a in actions if isinstance(a, ScheduleRetry)]
        assert base * 0.9 <= retry.at - now <= base
        assert "step.retrying" in topics(actions)
        assert status(machine, "flaky") is StepStatus.RETRYING
        # a timer that fires early dispatches nothing and is re-armed for the due time
        assert machine.handle(TimerFired(), now=retry.at - 0.001) == [ScheduleRetry(task="", at=retry.at)]
        now = retry.at
        actions = machine.handle(TimerFired(), now=now)
        assert dispatch_of(actions, "flaky").attempt == attempt + 1
        now += 0.5


def test_jitter_comes_from_the_machine_rng_so_a_seed_makes_it_deterministic() -> None:
    """Given two machines with the same seed, when the same failure happens, then the retry times are equal."""
    times = []
    for _ in range(2):
        machine, _ = started(flaky_pipeline(), seed=42)
        actions = fail(machine, "flaky", retryable=True, now=5.0)
        times.append([a.at for a in actions if isinstance(a, ScheduleRetry)])
    assert times[0] == times[1]
    assert times[0][0] == 5.0 + backoff_delay(RetrySpec(delay=1.0, max_delay=3.0), 1, random.Random(42))


def test_timer_before_the_retry_is_due_is_rearmed_and_after_it_redispatches() -> None:
    """Given a retry due at t, when TimerFired comes before t, then only a re-armed timer; at t, attempt 2 is dispatched."""
    machine, _ = started(flaky_pipeline(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=10.0)
    assert machine.next_timer() == 11.0

    assert machine.handle(TimerFired(), now=10.5) == [ScheduleRetry(task="", at=11.0)]  # early: re-armed
    actions = machine.handle(TimerFired(), now=11.0)

    assert dispatch_of(actions, "flaky").attempt == 2
    assert status(machine, "flaky") is StepStatus.RUNNING
    assert machine.next_timer() is None


def test_non_retryable_failure_is_not_retried() -> None:
    """Given max_retries=3, when `flaky` raises a non-retryable error, then it FAILS at once and so does the run."""
    machine, _ = started(flaky_pipeline())

    actions = fail(machine, "flaky", retryable=False, message="bad input")

    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    assert status(machine, "flaky") is StepStatus.FAILED
    assert machine.state.steps["flaky"].attempts == 1
    assert machine.state.status is RunStatus.FAILED
    assert "flaky" in machine.state.error and "bad input" in machine.state.error


def test_exhausted_retries_fail_the_step_and_the_run_naming_the_step() -> None:
    """Given max_retries=2, when all three attempts fail retryably, then the step FAILS after attempt 3."""
    machine, _ = started(flaky_pipeline(max_retries=2, retry_jitter=0.0))
    now = 0.0
    for _ in range(2):
        fail(machine, "flaky", retryable=True, now=now)
        now = machine.next_timer()
        machine.handle(TimerFired(), now=now)

    actions = fail(machine, "flaky", retryable=True, now=now, message="still down")

    assert status(machine, "flaky") is StepStatus.FAILED
    assert machine.state.steps["flaky"].attempts == 3
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]
    assert "flaky" in machine.state.error and "still down" in machine.state.error


def test_timeout_is_retried_and_the_final_failure_says_timed_out() -> None:
    """Given timeout=5 and max_retries=1, when both attempts time out, then the step fails with 'timed out'."""
    machine, _ = started(flaky_pipeline(max_retries=1, timeout=5.0))

    actions = machine.handle(StepTimedOut(task="flaky", attempt=1, timeout=5.0), now=5.0)
    assert [a for a in actions if isinstance(a, ScheduleRetry)]
    machine.handle(TimerFired(), now=machine.next_timer())
    machine.handle(StepTimedOut(task="flaky", attempt=2), now=20.0)

    error = machine.state.steps["flaky"].error
    assert status(machine, "flaky") is StepStatus.FAILED
    assert error is not None and "timed out" in error.message and "5s" in error.message
    assert "timed out" in machine.state.error and "flaky" in machine.state.error


def test_lost_worker_is_retried() -> None:
    """Given max_retries=1, when the worker running `flaky` dies, then it is retried."""
    machine, _ = started(flaky_pipeline(max_retries=1))
    actions = machine.handle(WorkerLost(task="flaky", attempt=1, reason="segfault"), now=1.0)
    assert [a.task for a in actions if isinstance(a, ScheduleRetry)] == ["flaky"]
    assert "segfault" in machine.state.tasks["flaky"].error.message


def test_an_interrupted_attempt_runs_again_at_once_without_using_a_retry() -> None:
    """Given max_retries=0, when the worker running `flaky` dies for another step's reason (StepInterrupted),
    then `flaky` is dispatched again at once as attempt 2, the event says it was not charged, and its one
    attempt's worth of budget is intact: the next retryable failure still fails it (no retry to spare)."""
    machine, _ = started(flaky_pipeline(max_retries=0))

    actions = machine.handle(StepInterrupted(task="flaky", attempt=1, reason="worker 3 ended (exit 3)"), now=1.0)

    assert isinstance(actions[0], Persist)
    assert dispatch_of(actions, "flaky").attempt == 2
    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    [retrying] = [a for a in actions if isinstance(a, Emit) and a.topic == "step.retrying"]
    assert retrying.data["charged"] is False and retrying.data["retry_at"] == 1.0
    assert "worker 3 ended (exit 3)" in retrying.data["error"] and "WorkerLostError" in retrying.data["error"]
    task = machine.state.tasks["flaky"]
    assert (task.attempt, task.interrupted) == (2, 1)
    assert status(machine, "flaky") is StepStatus.RUNNING
    assert machine.handle(StepSucceeded(task="flaky", attempt=1, output="late"), now=1.5) == []
    fail(machine, "flaky", retryable=True, now=2.0)
    assert status(machine, "flaky") is StepStatus.FAILED


def test_interruptions_never_use_up_retries_however_many() -> None:
    """Given max_retries=1, when `flaky` is interrupted five times, then fails retryably once, then it is retried
    once more (attempt 7) and a second failure fails it: only the two failures counted."""
    machine, _ = started(flaky_pipeline(max_retries=1, retry_jitter=0.0))
    for attempt in range(1, 6):
        machine.handle(StepInterrupted(task="flaky", attempt=attempt), now=float(attempt))
    actions = fail(machine, "flaky", retryable=True, now=10.0)
    assert [a.task for a in actions if isinstance(a, ScheduleRetry)] == ["flaky"]
    assert [a for a in actions if isinstance(a, Emit) and a.topic == "step.retrying"][0].data["charged"] is True
    assert dispatch_of(machine.handle(TimerFired(), now=machine.next_timer()), "flaky").attempt == 7
    fail(machine, "flaky", retryable=True, now=20.0)
    assert status(machine, "flaky") is StepStatus.FAILED


def test_an_interrupted_item_reruns_alone_and_a_full_run_still_respects_max_concurrent_steps() -> None:
    """Given a PARALLEL_MERGE of 3 items with max_concurrent_steps=2, when item 0 is interrupted, then item 0 (not
    the queued item 2) takes the slot it freed, and the step's other running item is untouched."""
    p = Pipeline("p", max_concurrent_steps=2).step("fan", fn=noop, execution_mode=PARALLEL_MERGE, over=[1, 2, 3],
                                                  max_retries=0)
    machine, actions = started(p)
    assert dispatched(actions) == ["fan[0]", "fan[1]"]

    actions = machine.handle(StepInterrupted(task="fan[0]", attempt=1), now=1.0)

    assert dispatched(actions) == ["fan[0]"] and dispatch_of(actions, "fan[0]").attempt == 2
    assert machine.state.tasks["fan[1]"].status is TaskStatus.RUNNING
    assert machine.state.tasks["fan[2]"].status is TaskStatus.QUEUED


def test_max_retries_zero_fails_on_the_first_retryable_error() -> None:
    """Given max_retries=0, when `flaky` fails retryably, then it FAILS without a retry."""
    machine, _ = started(flaky_pipeline(max_retries=0))
    actions = fail(machine, "flaky", retryable=True)
    assert not [a for a in actions if isinstance(a, ScheduleRetry)]
    assert status(machine, "flaky") is StepStatus.FAILED


# -- stale events ---------------------------------------------------------------------------------------------------


def test_events_for_an_old_attempt_an_unknown_task_or_a_finished_run_are_ignored() -> None:
    """Given a retried step, when events arrive for attempt 1, an unknown task, or after the end, they change nothing."""
    machine, _ = started(flaky_pipeline(retry_jitter=0.0))
    fail(machine, "flaky", retryable=True, now=1.0)
    machine.handle(TimerFired(), now=2.0)
    before = msgspec.msgpack.encode(machine.state)

    assert machine.handle(StepSucceeded(task="flaky", attempt=1, output="late"), now=3.0) == []
    assert machine.handle(StepSucceeded(task="nope", attempt=1), now=3.0) == []
    assert machine.handle(WorkerLost(task="flaky", attempt=1), now=3.0) == []
    assert msgspec.msgpack.encode(machine.state) == before

    succeed(machine, "flaky", output="ok", now=4.0)
    assert machine.finished
    assert machine.handle(StepSucceeded(task="flaky", attempt=2, output="dup"), now=5.0) == []
    assert machine.handle(Cancelled(), now=5.0) == []
    assert machine.state.steps["flaky"].output == "ok"
    assert machine.state.status is RunStatus.COMPLETED


# -- cancellation, fail_fast, optional steps -------------------------------------------------------------------------


def test_cancel_stops_running_tasks_and_cancels_every_unfinished_step() -> None:
    """Given a done step, two running ones and a pending one, when Cancelled, then running tasks get CancelTask,
    unfinished steps are CANCELLED, the done one stays COMPLETED, and the run is CANCELLED."""
    p = steps(Pipeline("p"), "done", "r1", "r2")
    p.step("later", fn=noop, depends_on=["r1"])
    machine, _ = started(p)
    succeed(machine, "done", output=1)

    actions = machine.handle(Cancelled(reason="user pressed ctrl-c"), now=2.0)

    assert sorted((a.task, a.attempt) for a in actions if isinstance(a, CancelTask)) == [("r1", 1), ("r2", 1)]
    assert {n: s.status for n, s in machine.state.steps.items()} == {
        "done": StepStatus.COMPLETED, "r1": StepStatus.CANCELLED, "r2": StepStatus.CANCELLED, "later": StepStatus.CANCELLED,
    }
    assert machine.state.status is RunStatus.CANCELLED
    assert machine.state.error == "user pressed ctrl-c"
    assert finishes(actions) == [Finish(status=RunStatus.CANCELLED)]
    assert succeed(machine, "r1") == []


def test_fail_fast_cancels_the_rest_of_the_run_when_a_required_step_fails() -> None:
    """Given fail_fast and two running steps, when one fails for good, then the other is cancelled and the run FAILS."""
    p = steps(Pipeline("p", fail_fast=True), "a", "b")
    p.step("c", fn=noop, depends_on=["b"])
    machine, _ = started(p)

    actions = fail(machine, "a", retryable=False, message="disk full")

    assert [a.task for a in actions if isinstance(a, CancelTask)] == ["b"]
    assert status(machine, "b") is StepStatus.CANCELLED and status(machine, "c") is StepStatus.CANCELLED
    assert machine.state.status is RunStatus.FAILED
    assert "fail_fast" in machine.state.error and "'a'" in machine.state.error
    assert finishes(actions) == [Finish(status=RunStatus.FAILED)]


def test_fail_fast_ignores_optional_steps() -> None:
    """Given fail_fast, when a required=False step fails, then the run goes on."""
    p = Pipeline("p", fail_fast=True)
    p.step("extra", fn=noop, execution_mode=CONCURRENT, required=False)
    p.step("main", fn=noop, execution_mode=CONCURRENT)
    machine, _ = started(p)
    fail(machine, "extra", retryable=False)
    assert status(machine, "main") is StepStatus.RUNNING
    actions = succeed(machine, "main")
    assert finishes(actions) == [Finish(status=RunStatus.COMPLETED)]


def test_optional_step_failure_leaves_the_run_completed_but_listed_as_failed() -> None:
    """Given required=False `extra`, when it fails, then the run COMPLETES and the result lists `extra` as failed."""
    p = Pipeline("p")
    p.step("extra", fn=noop, execution_mode=CONCURRENT, required=False)
    p.step("main", fn=noop, execution_mode=CONCURRENT)
    machine, _ = started(p)
    fail(machine, "extra", retryable=False, message="optional thing broke")
    succeed(machine, "main", output="report")

    result = PipelineResult.from_state(machine.plan, machine.state)
    assert result.status == "completed" and result.success
    assert result.failed_steps == ["extra"]
    assert "optional thing broke" in result.error_details["extra"]
    assert result.step_outputs == {"main": "report"}


def test_final_output_is_the_single_sink_or_the_step_marked_final() -> None:
    """Given a -> b, then final_output is b's; given final=True on a, it is a's; given two sinks, it is None."""
    p = chain_pipeline()
    machine, _ = started(p)
    for name, out in [("a", 1), ("b", 2), ("c", 3)]:
        succeed(machine, name, output=out)
    assert PipelineResult.from_state(machine.plan, machine.state).final_output == 3

    p2 = steps(Pipeline("p"), "x", "y")
    machine, _ = started(p2)
    succeed(machine, "x", output="X")
    succeed(machine, "y", output="Y")
    assert PipelineResult.from_state(machine.plan, machine.state).final_output is None
    plan = msgspec.structs.replace(machine.plan, steps=[msgspec.structs.replace(machine.plan.steps[0], final=True),
                                                        machine.plan.steps[1]])
    assert PipelineResult.from_state(plan, machine.state).final_output == "X"
