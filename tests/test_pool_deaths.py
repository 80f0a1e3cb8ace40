"""Workers that die while steps are dispatched to them: the daemon never wedges.

Real daemons, real worker processes, real `kill -9` and `os._exit` (conftest `make_daemon`).
Steps leave their trace outside the daemon: each appends "step attempt pid start end" to an
effects file named in the run's params, so a test can see which process ran what, and when.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, processes_using, wait_until, write_pipeline

pytestmark = pytest.mark.timeout(90)


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


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """Set up before `make_daemon`, so torn down after it: every daemon and worker of the test has exited."""
    yield
    wait_until(lambda: not processes_using(tmp_path), 10, what=f"processes of {tmp_path} to exit")


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
