"""Workers that die while steps are dispatched to them: the daemon never wedges, and only the guilty pay.

The rules first, in process (`DeathLedger`, tagentd/executor/deaths.py, and `DispatchQueues`, tagentd/executor/queues.py);
then real daemons, real worker processes, real `kill -9` and `os._exit` (conftest `make_daemon`).
Steps leave their trace outside the daemon: each appends "step attempt pid start end" to an
effects file named in the run's params, so a test can see which process ran what, and when.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, pid_alive, wait_until, write_pipeline

from tagent_client.core.events import Dispatch, StepFailed, StepInterrupted, StepTimedOut, WorkerLost
from tagent_client.core.state import Phase
from tagentd.executor.deaths import Cause, DeathLedger, how_it_ended
from tagentd.executor.interface import PipelineCode, StepAttempt
from tagentd.executor.queues import DispatchQueues

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_process_left_behind")]


# -- the rules, in process ---------------------------------------------------------------------------------------


def attempt(task: str, number: int = 1, *, isolated: bool = False, timeout: float | None = None) -> Dispatch:
    return Dispatch(task=task, step=task, phase=Phase.RUN, attempt=number, inputs={}, isolated=isolated, timeout=timeout)


def died(ledger: DeathLedger, jobs: list[tuple[str, Dispatch]], *, cause: Cause = Cause.UNKNOWN, code: int = 3,
         alone: bool = False, worker: int = 1, now: float = 100.0) -> dict[str, object]:
    verdicts = ledger.died(worker, jobs, cause=cause, how=how_it_ended(code), where=f"worker {worker} (pid 9)",
                           alone=alone, now=now)
    assert len(verdicts) == len(jobs), "every step in flight gets exactly one verdict"
    return {event.task: event for _, event in verdicts}


def test_a_death_of_unknown_cause_interrupts_every_step_and_the_second_quarantines_them() -> None:
    """Given steps a and b in flight on a shared worker, when it dies (exit 3), then both are interrupted, not
    charged; when the worker running their next attempts dies too, then both must run alone from then on."""
    ledger = DeathLedger()
    first = died(ledger, [("r", attempt("a")), ("r", attempt("b"))])
    assert all(isinstance(e, StepInterrupted) for e in first.values())
    assert "exit 3" in first["a"].reason and "runs alone next" not in first["a"].reason
    assert not ledger.runs_alone("r", attempt("a", 2))

    second = died(ledger, [("r", attempt("a", 2)), ("r", attempt("b", 2))], worker=2)

    assert all(isinstance(e, StepInterrupted) for e in second.values())
    assert "it runs alone next" in second["a"].reason
    assert ledger.runs_alone("r", attempt("a", 3)) and ledger.runs_alone("r", attempt("b", 3))
    assert not ledger.runs_alone("other-run", attempt("a", 3))


def test_a_quarantined_step_that_kills_its_own_worker_fails_for_good_and_an_isolated_one_is_charged() -> None:
    """Given `a` quarantined and `i` isolated (never in a death), when each kills the worker it runs alone in
    (SIGSEGV), then `a` fails, not retryable, saying it killed its worker; `i` gets an ordinary, charged WorkerLost."""
    ledger = DeathLedger()
    for worker in (1, 2):
        died(ledger, [("r", attempt("a", worker))], worker=worker)

    [killed] = died(ledger, [("r", attempt("a", 3))], code=-signal.SIGSEGV, alone=True, worker=3).values()
    [lost] = died(ledger, [("r", attempt("i", 1, isolated=True))], code=-signal.SIGSEGV, alone=True, worker=4).values()

    assert isinstance(killed, StepFailed) and not killed.error.retryable
    assert killed.error.message.startswith("this step killed its worker (SIGSEGV)")
    assert "after 2 worker(s) died with it in flight" in killed.error.message
    assert isinstance(lost, WorkerLost) and "SIGSEGV" in lost.reason


def test_a_death_caused_by_a_timed_out_step_counts_only_against_that_step() -> None:
    """Given `slow` reported timed out on worker 1, when worker 1 exits 70 with `a` and `b` in flight, then `a`
    and `b` are interrupted and not counted, and `slow` is counted: a second such death quarantines it."""
    ledger = DeathLedger()
    for worker in (1, 2):
        ledger.timed_out(worker, ("r", "slow"), now=100.0)
        verdicts = died(ledger, [("r", attempt("a", worker)), ("r", attempt("b", worker))], cause=Cause.TIMEOUT,
                        code=70, worker=worker, now=101.0)
        assert all(isinstance(e, StepInterrupted) and "because of another step" in e.reason for e in verdicts.values())
    assert ledger.runs_alone("r", attempt("slow", 3))
    assert not ledger.runs_alone("r", attempt("a", 3)) and not ledger.runs_alone("r", attempt("b", 3))


def test_a_timeout_long_before_the_death_is_not_its_cause_and_a_stopped_worker_blames_nobody() -> None:
    """Given `old` timed out on worker 1 long ago, when worker 1 exits 70, then `old` is not counted; when the pool
    stops a worker with `a` in flight, then `a` is interrupted and nobody is counted."""
    ledger = DeathLedger(stuck_window=5.0)
    ledger.timed_out(1, ("r", "old"), now=0.0)
    ledger.timed_out(1, ("r", "old"), now=0.0)
    died(ledger, [], cause=Cause.TIMEOUT, code=70, worker=1, now=100.0)
    stopped = died(ledger, [("r", attempt("a"))], cause=Cause.POOL, code=0, worker=2)
    assert isinstance(stopped["a"], StepInterrupted)
    assert ledger.deaths == {}


def test_the_pool_killing_a_quarantined_step_at_its_timeout_fails_it_and_otherwise_charges_the_timeout() -> None:
    """Given `a` quarantined, when the pool kills its lone worker because it overran its timeout, then `a` fails
    saying it killed its worker (timeout); an ordinary step that overruns just times out (charged)."""
    ledger = DeathLedger()
    for worker in (1, 2):
        died(ledger, [("r", attempt("a", worker))], worker=worker)
    assert isinstance(ledger.overran(3, "r", attempt("a", 3, timeout=1.0), alone=True, now=100.0), StepFailed)
    overran = ledger.overran(4, "r", attempt("b", 1, timeout=1.0), alone=False, now=100.0)
    assert overran == StepTimedOut(task="b", attempt=1, timeout=1.0)


def test_an_attempt_that_reports_a_result_clears_its_record() -> None:
    """Given `a` quarantined, when an attempt of it reports a result, then it goes back to the shared workers."""
    ledger = DeathLedger()
    for worker in (1, 2):
        died(ledger, [("r", attempt("a", worker))], worker=worker)
    ledger.forget("r", "a")
    assert not ledger.runs_alone("r", attempt("a", 3))
    assert ledger.runs_alone("r", attempt("a", 3, isolated=True))


def test_exit_statuses_read_as_the_user_knows_them() -> None:
    assert [how_it_ended(c) for c in (3, 70, -signal.SIGSEGV, -signal.SIGKILL)] == ["exit 3", "exit 70", "SIGSEGV", "SIGKILL"]


def of_run(run_id: str, task: str) -> StepAttempt:
    code = PipelineCode(path=f"{run_id}.py", source="", source_hash="0" * 64)
    return StepAttempt(run_id=run_id, pipeline=run_id, code=code, dispatch=attempt(task), params={})


def test_dispatch_queues_serve_runs_in_rotation_and_a_step_put_back_first_keeps_its_place() -> None:
    """Given run x with three attempts and run y with one, when served, then x and y alternate; an attempt put back
    with first=True comes out next for its run; removed and forgotten attempts never come out."""
    queues = DispatchQueues()
    for task in ("x1", "x2", "x3"):
        queues.put(of_run("x", task), alone=False)
    queues.put(of_run("y", "y1"), alone=False)
    queues.put(of_run("y", "alone1"), alone=True)

    first = queues.next_shared()
    assert first is not None and first.dispatch.task == "x1"
    queues.put(first, alone=False, first=True)  # its worker was gone: it keeps its place
    queues.remove("x", "x3", 1)
    served = [queues.next_shared() for _ in range(3)]

    assert [w.dispatch.task for w in served if w is not None] == ["y1", "x1", "x2"]
    assert queues.next_shared() is None and len(queues) == 1 and queues.alone_waiting == 1
    queues.forget_run("y")
    assert queues.next_alone() is None and len(queues) == 0

# The preamble of every pipeline below: how a step leaves its trace outside the daemon.
TRACE = '''
import asyncio
import os
import time

from tagent_client import ExecutionMode, Pipeline, RetryableError


def trace(ctx, started):
    """Append "step attempt pid started ended" to the effects file, in one write."""
    line = f"{ctx.step_name}{'' if ctx.item_index is None else f'[{ctx.item_index}]'} {ctx.attempt} {os.getpid()} {started} {time.time()}\\n"
    fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
'''


class Effects:
    """The effects file, read from the test: one (task, attempt, pid, started, ended) per finished attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[tuple[str, int, int, float, float]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        out = []
        for raw in text[: text.rfind("\n") + 1].splitlines():
            task, attempt, pid, started, ended = raw.split(" ")
            out.append((task, int(attempt), int(pid), float(started), float(ended)))
        return out

    def of(self, task: str) -> list[tuple[str, int, int, float, float]]:
        return [row for row in self.rows() if row[0] == task]



def submit(daemon: DaemonProcess, path: Path, effects: Effects, **params: object) -> str:
    with daemon.client() as client:
        return client.submit(path, {"effects": str(effects.path), **params}).id


def answers(daemon: DaemonProcess) -> bool:
    """The daemon replies to a request within 2 s (a wedged loop does not)."""
    from tagent_client.errors import TagentError

    try:
        with daemon.client(timeout=2.0) as client:
            client.ping()
        return True
    except TagentError:
        return False


# -- finding 1: the daemon wedges when workers die during dispatch -------------------------------------------------

FLAPPERS = TRACE + '''
pipeline = Pipeline("flappers", max_concurrent_steps=128)


async def flap(ctx, item):
    """Fail at once, retryably, until the 15th attempt: 100 of these keep a retry coming due every millisecond."""
    started = time.time()
    if ctx.attempt < 15:
        raise RetryableError("not yet")
    trace(ctx, started)
    return item


async def crash(ctx):
    """End the worker process on the first attempt, as a segfaulting C extension would."""
    started = time.time()
    if ctx.attempt == 1:
        await asyncio.sleep(0.5)  # ok-sleep: let the retries get going first
        os._exit(3)
    trace(ctx, started)
    return "survived"


# Each retries after 0 to 200 ms (jitter), so that, whatever the worker's speed, most wait for a retry at any time
# and their retries keep coming due in the moment between the worker's death and the pool noticing it.
pipeline.step("flap", fn=flap, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(100)),
              max_retries=30, retry_delay=0.2, retry_backoff=1.0, retry_jitter=1.0)
pipeline.step("crash", fn=crash, execution_mode=ExecutionMode.CONCURRENT, max_retries=2, retry_delay=0.02)
'''


@pytest.mark.timeout(60)
def test_a_worker_that_exits_while_a_hundred_steps_keep_retrying_does_not_wedge_the_daemon(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given one worker, 100 steps that keep failing and retrying, and a step that calls os._exit(3) on its first attempt
    daemon = make_daemon(workers=1).start()
    effects = Effects(tmp_path / "effects.log")
    path = write_pipeline(tmp_path, "flappers.py", FLAPPERS)

    # When they run together, so the worker dies while the daemon keeps dispatching retries to it
    run_id = submit(daemon, path, effects)

    # Then the daemon keeps answering, and the run completes: the crashing step ran again in the replacement worker
    with daemon.client(timeout=5.0) as client:
        result = client.wait(run_id, timeout=30)
    assert result.status == "completed", result.error
    assert result.step_outputs["crash"] == "survived"
    assert len(result.step_outputs["flap"]) == 100
    assert answers(daemon)
    # And `tagentd stop` stops it
    stopped = daemon.admin("stop", "--timeout", "20", timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert daemon.proc is not None and daemon.proc.wait(timeout=5) == 0


LONG_STEPS = TRACE + '''
pipeline = Pipeline("long", max_concurrent_steps=64)


async def work(ctx, item):
    """About a second of work that must not be charged for deaths it did not cause (max_retries=0)."""
    started = time.time()
    await asyncio.sleep(1.0)  # ok-sleep: the step's own work
    trace(ctx, started)
    return item


async def flap(ctx, item):
    """Fail at once, retryably, until the 25th attempt: retries keep coming due all the time."""
    started = time.time()
    if ctx.attempt < 25:
        raise RetryableError("not yet")
    trace(ctx, started)
    return item


pipeline.step("work", fn=work, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(40)), max_retries=0)
pipeline.step("flap", fn=flap, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(50)),
              max_retries=40, retry_delay=0.2, retry_backoff=1.0, retry_jitter=1.0)
'''


def kill_workers(daemon: DaemonProcess) -> list[int]:
    """SIGKILL every worker process the daemon has right now (not the daemon)."""
    pids = daemon.worker_pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


@pytest.mark.timeout(90)
def test_kill9_of_the_workers_with_one_second_steps_in_flight_neither_wedges_the_daemon_nor_charges_the_steps(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two workers running forty ~1 s steps (max_retries=0) while fifty others keep failing and retrying.
    # Workers fork from the template, as for users: a step in flight on both killed workers is quarantined by the
    # rules, and each quarantined step then needs a fresh worker of its own — milliseconds to fork, but seconds
    # to start cold on a loaded machine, which made "completes within 30 s" a matter of luck.
    daemon = make_daemon(workers=2, template=True).start()
    effects = Effects(tmp_path / "effects.log")
    run_id = submit(daemon, write_pipeline(tmp_path, "long.py", LONG_STEPS), effects)
    with daemon.client(timeout=5.0) as client:
        wait_until(lambda: sum(w.completed for w in client.daemon_status().workers) >= 60, what="retries to flow")

        # When every worker is killed with SIGKILL, one after the other
        killed = kill_workers(daemon)

        # Then the daemon keeps answering, and the run completes: no step was charged for the deaths
        assert answers(daemon)
        wait_until(lambda: set(daemon.worker_pids()) - set(killed), 20, what="replacement workers")
        assert answers(daemon)
        result = client.wait(run_id, timeout=30)
        assert result.status == "completed", result.error
        assert sorted(result.step_outputs["work"]) == list(range(40))
        interrupted = [e for e in client.history(run_id) if e["what"] == "step.retrying" and not e["data"]["charged"]]
        assert interrupted, "no step was in flight on a killed worker"
        assert all("not counted against this step's retries" in e["data"]["error"] for e in interrupted)
    assert not set(killed) & set(daemon.worker_pids())


@pytest.mark.timeout(60)
def test_tagentd_stop_stops_the_daemon_while_its_workers_are_being_killed(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon running ~1 s steps and fast-retrying ones, whose worker something kills once it is busy
    daemon = make_daemon(workers=1).start()
    effects = Effects(tmp_path / "effects.log")
    submit(daemon, write_pipeline(tmp_path, "long.py", LONG_STEPS), effects)
    stop_killing = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        from tagent_client.errors import TagentError

        with daemon.client(timeout=1.0) as client:
            while not stop_killing.is_set():
                try:
                    busy = [w.pid for w in client.daemon_status().workers
                            if w.state == "ready" and w.running and w.completed >= 30]  # retries are flowing
                except TagentError:
                    busy = []  # a wedged daemon does not answer: keep trying until the test gives up
                for pid in busy:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                stop_killing.wait(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: killed, 30, what="a busy worker to be killed")

        # When `tagentd stop` is run while the killing goes on
        began = time.monotonic()
        stopped = daemon.admin("stop", "--timeout", "25", timeout=40)
        took = time.monotonic() - began
    finally:
        stop_killing.set()
        thread.join(5)

    # Then the daemon stops cleanly, well within the graceful wait for in-flight steps
    assert stopped.returncode == 0, (stopped.stderr, daemon.log())
    assert daemon.proc is not None and daemon.proc.wait(timeout=5) == 0
    assert took < 15, f"stopping took {took:.1f}s"


# -- finding 4: one crashing step must not fail its neighbours -----------------------------------------------------

NEIGHBOURS = TRACE + '''
pipeline = Pipeline("neighbours", max_concurrent_steps=32)


async def neighbour(ctx, item):
    """Work that outlasts the crash next to it; it has no retry to spare (max_retries=0)."""
    started = time.time()
    await asyncio.sleep(1.5)  # ok-sleep: the step's own work
    trace(ctx, started)
    return item


async def crash(ctx):
    """Trace the attempt, give the neighbours time to start, then end the worker as a segfault would."""
    started = time.time()
    trace(ctx, started)
    await asyncio.sleep(0.3)  # ok-sleep: the step's own work
    if ctx.attempt <= ctx.params["crashes"]:
        os._exit(3)
    return "survived"


pipeline.step("neighbour", fn=neighbour, execution_mode=ExecutionMode.PARALLEL_MERGE, over="params.items",
              max_retries=0)
pipeline.step("crash", fn=crash, execution_mode=ExecutionMode.CONCURRENT, max_retries=5, retry_delay=0.05,
              required=False)
'''


def retries_of(client: object, run_id: str, step: str) -> list[dict[str, object]]:
    return [e["data"] for e in client.history(run_id)  # type: ignore[attr-defined]
            if e["what"] == "step.retrying" and e["data"]["step"] == step]


@pytest.mark.timeout(60)
def test_a_max_retries_0_neighbour_of_a_step_that_calls_os_exit_completes(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given one worker running six steps with max_retries=0 next to a step that calls os._exit(3) once
    daemon = make_daemon(workers=1).start()
    effects = Effects(tmp_path / "effects.log")
    run_id = submit(daemon, write_pipeline(tmp_path, "neighbours.py", NEIGHBOURS), effects, crashes=1, items=list(range(6)))

    # When the crash takes their shared worker down
    with daemon.client() as client:
        result = client.wait(run_id, timeout=30)
        neighbour_retries = retries_of(client, run_id, "neighbour")
        crash_retries = retries_of(client, run_id, "crash")

    # Then the neighbours ran again without using a retry and completed, and so did the crashing step
    assert result.status == "completed", result.error
    assert sorted(result.step_outputs["neighbour"]) == list(range(6))
    assert result.step_outputs["crash"] == "survived"
    assert len(neighbour_retries) == 6 and not any(r["charged"] for r in neighbour_retries)
    assert all("exit 3" in str(r["error"]) for r in neighbour_retries)
    # (who caused it is unknown from outside, so the crashing step is not charged either: its first death)
    assert [r["charged"] for r in crash_retries] == [False]


@pytest.mark.timeout(90)
def test_a_step_that_kills_two_workers_runs_alone_then_fails_saying_it_killed_its_worker(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given one worker, three steps with max_retries=0, and a step that calls os._exit(3) on every attempt
    daemon = make_daemon(workers=1).start()
    effects = Effects(tmp_path / "effects.log")
    run_id = submit(daemon, write_pipeline(tmp_path, "neighbours.py", NEIGHBOURS), effects, crashes=99, items=[0, 1, 2])

    # When it has killed two workers with the others in flight next to it
    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)
        detail = client.status(run_id)
        neighbour_retries = retries_of(client, run_id, "neighbour")

    # Then its third attempt ran alone in a fresh worker, killed it too, and the step failed for good, saying so
    error = detail.steps["crash"].error or ""
    assert detail.steps["crash"].status == "failed"
    assert "this step killed its worker (exit 3)" in error and "after 2 worker(s) died with it in flight" in error
    attempts = effects.of("crash")
    assert [a for _, a, _, _, _ in attempts] == [1, 2, 3]
    alone_pid = attempts[2][2]
    assert [row for row in effects.rows() if row[2] == alone_pid] == [attempts[2]], "it did not run alone"
    assert alone_pid not in {pid for _, _, pid, _, _ in attempts[:2]}
    # And nobody else was charged: every neighbour completed (max_retries=0), re-run only without charge
    assert result.status == "completed", result.error
    assert sorted(result.step_outputs["neighbour"]) == [0, 1, 2]
    assert neighbour_retries and not any(r["charged"] for r in neighbour_retries)


HANGING = TRACE + '''
pipeline = Pipeline("hanging", max_concurrent_steps=32)


async def neighbour(ctx, item):
    started = time.time()
    await asyncio.sleep(2.5)  # ok-sleep: the step's own work, long enough to be in flight when the worker exits
    trace(ctx, started)
    return item


def hang(ctx):
    """A sync step that ignores its timeout: its worker reports the timeout, then has to exit (status 70)."""
    time.sleep(60)  # ok-sleep: the step's own (stuck) work


pipeline.step("neighbour", fn=neighbour, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(6)),
              max_retries=0)
pipeline.step("hang", fn=hang, execution_mode=ExecutionMode.CONCURRENT, timeout=0.5, max_retries=0, required=False)
'''


@pytest.mark.timeout(60)
def test_a_sync_step_hanging_past_its_timeout_does_not_charge_the_steps_sharing_its_worker(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given one worker with a short grace, six steps with max_retries=0, and a sync step that hangs past its timeout
    daemon = make_daemon(workers=1)
    daemon.env["TAGENTD_TIMEOUT_GRACE"] = "0.5"
    daemon.start()
    effects = Effects(tmp_path / "effects.log")
    run_id = submit(daemon, write_pipeline(tmp_path, "hanging.py", HANGING), effects)

    # When the hanging step times out and its worker exits because the step will not stop
    with daemon.client() as client:
        result = client.wait(run_id, timeout=30)
        detail = client.status(run_id)
        neighbour_retries = retries_of(client, run_id, "neighbour")

    # Then the hanging step is charged with its timeout, and its neighbours ran again uncharged and completed
    assert "exiting with status 70" in daemon.log() or "exit 70" in str(neighbour_retries)
    assert detail.steps["hang"].status == "failed" and "timed out" in (detail.steps["hang"].error or "")
    assert result.status == "completed", result.error
    assert sorted(result.step_outputs["neighbour"]) == list(range(6))
    assert len(neighbour_retries) == 6 and not any(r["charged"] for r in neighbour_retries)
    assert all("because of another step" in str(r["error"]) for r in neighbour_retries)


ISOLATED = TRACE + '''
pipeline = Pipeline("isolated", max_concurrent_steps=32)


async def pooled(ctx, item):
    started = time.time()
    await asyncio.sleep(3.0)  # ok-sleep: the step's own work, long enough to overlap the isolated step
    trace(ctx, started)
    return item


async def alone(ctx):
    started = time.time()
    await asyncio.sleep(1.0)  # ok-sleep: the step's own work
    trace(ctx, started)
    return os.getpid()


pipeline.step("pooled", fn=pooled, execution_mode=ExecutionMode.PARALLEL_MERGE, over=list(range(8)))
pipeline.step("alone", fn=alone, execution_mode=ExecutionMode.CONCURRENT, isolated=True)
'''


@pytest.mark.timeout(60)
def test_an_isolated_step_runs_alone_in_a_worker_started_for_it(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two workers and a run of eight ordinary steps plus one isolated=True step, all running at once
    daemon = make_daemon(workers=2).start()
    effects = Effects(tmp_path / "effects.log")
    pool = set(daemon.worker_pids())
    run_id = submit(daemon, write_pipeline(tmp_path, "isolated.py", ISOLATED), effects)

    # When the run runs, `tagentd status` shows the isolated step's worker as "alone", besides the pool's two
    with daemon.client() as client:
        alone = wait_until(lambda: [w for w in client.daemon_status().workers if w.state == "alone"], 20,
                           what="a worker running a step alone")
        result = client.wait(run_id, timeout=30)
    assert result.status == "completed", result.error

    # Then the isolated step ran in a process of its own, not one of the pool's, that ran nothing else
    [(_, _, alone_pid, alone_start, alone_end)] = effects.of("alone")
    assert result.step_outputs["alone"] == alone_pid == alone[0].pid and alone[0].running == 1
    assert alone_pid not in pool
    others = [row for row in effects.rows() if row[0] != "alone"]
    assert len(others) == 8 and alone_pid not in {pid for _, _, pid, _, _ in others}
    assert {pid for _, _, pid, _, _ in others} <= pool
    # while the other steps ran at the same time, in the pool's workers
    assert any(start < alone_end and alone_start < end for _, _, _, start, end in others)
    # And that process is stopped once its step is done; the pool keeps its two workers
    wait_until(lambda: not pid_alive(alone_pid), 10, what="the isolated step's worker to stop")
    assert set(daemon.worker_pids()) == pool
