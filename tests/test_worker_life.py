"""A worker's life through a real daemon: it dies with the daemon that started it, and serves no other daemon.

Real daemons in private temp dirs, real kill -9; every wait has a deadline (`wait_until`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, pid_alive, processes_using, wait_until, write_pipeline

from tagentd import wire

pytestmark = pytest.mark.timeout(120)

STALE_TOKEN = "5ea1e0123456789f"  # what a worker of an earlier daemon would carry

NAP = """
    import asyncio
    from tagent_client import Pipeline

    pipeline = Pipeline("nap")

    @pipeline.task(timeout=60, max_retries=0)
    async def nap(ctx):
        await asyncio.sleep(60)  # ok-sleep: the step's own work, not a wait for something
"""

WHO = """
    import os
    from tagent_client import Pipeline

    pipeline = Pipeline("who", max_concurrent_steps=8)

    for i in range(8):
        pipeline.step(f"s{i}", fn=lambda ctx: os.getpid())
"""


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """Torn down after `make_daemon`: every daemon, template, worker and CLI of the test has exited."""
    yield
    left = processes_using(tmp_path)
    for pid in left:  # do not leak them into other tests, but fail this one
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of {tmp_path} still alive at teardown: {left}"


def no_survivors(root: Path, within: float = 10.0) -> None:
    """Every process of `root` (daemon, template, workers: their environment names its dirs) is gone in time."""
    wait_until(lambda: not processes_using(root), within, what=f"every process of {root} to exit")


def test_killing_the_daemon_right_after_start_or_mid_run_leaves_no_worker_behind(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon started in the background: `tagentd start` returns once it answers, before its workers are up
    daemon = make_daemon()
    started = daemon.admin("start", "--workers", "2", timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"tagentd started \(pid (\d+)\)", started.stdout).group(1))

    # When it is killed with SIGKILL at once (its workers are still starting)
    os.kill(pid, signal.SIGKILL)

    # Then no process of it survives: its workers die with it, however far they got
    no_survivors(tmp_path)

    # Given a daemon in the same dirs, running a step
    daemon.start()
    with daemon.client() as client:
        run = client.submit(write_pipeline(tmp_path, "nap.py", NAP))
        wait_until(lambda: client.status(run.id).steps["nap"].status == "running", 20, what="the step to start")

    # When only the daemon is killed with SIGKILL, mid-run
    os.kill(daemon.pid, signal.SIGKILL)
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == -signal.SIGKILL

    # Then again no worker survives it
    no_survivors(tmp_path)


def test_a_worker_left_over_from_another_daemon_is_refused_and_runs_no_step(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a worker of an earlier daemon in these dirs, still alive (its parent lives on) and trying to connect
    # to workers.sock as worker 1 with that daemon's token
    daemon = make_daemon()
    env = {**daemon.env, wire.TOKEN_ENV: STALE_TOKEN}
    endpoint = f"ipc://{daemon.runtime_dir / 'workers.sock'}"
    stale = subprocess.Popen([sys.executable, "-m", "tagentd.worker", "--endpoint", endpoint, "--id", "1",
                              "--parent-pid", str(os.getpid())], env=env, cwd=REPO,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # When a new daemon starts in the same dirs and runs steps
        daemon.start()
        with daemon.client() as client:
            result = client.wait(client.submit(write_pipeline(tmp_path, "who.py", WHO)).id, timeout=30)
            own = {w.pid for w in client.daemon_status().workers}

            # Then the stale worker is refused and exits at once
            _, err = stale.communicate(timeout=20)
            assert stale.returncode == wire.EXIT_REFUSED, err.decode(errors="replace")
            assert b"refused this worker" in err
            assert client.daemon_status().stats["workers_refused"] >= 1

        # And every step ran on the daemon's own workers
        assert result.success, result.summary()
        ran_on = set(result.step_outputs.values())
        assert ran_on <= own and stale.pid not in ran_on, (ran_on, own, stale.pid)
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()
    assert not pid_alive(stale.pid)
