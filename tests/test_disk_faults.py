"""End-to-end: a real daemon whose state dir fills up, or is read-only or full when it starts.

The full disk is a real one when the tests run as root and may mount (a small tmpfs as the state
dir, filled with a file while the daemon runs), and always also the store's disk-full failpoint
(`TAGENTD_FAILPOINT_DISK_FULL`, tagentd/storage/failpoints.py), which works without root. A read-only
state dir is a read-only tmpfs as root, a `chmod 500` dir otherwise.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, processes_using, wait_until, write_pipeline

from tagent_client.errors import DiskFull, exit_code_for
from tagentd.storage.failpoints import DISK_FULL_ENV

pytestmark = pytest.mark.timeout(120)

# first -> ticker -> last; `ticker` saves to the run's memory (each save is a commit) until the gate file exists.
TICKER = """
    import asyncio
    import os

    from tagent_client import Pipeline

    pipeline = Pipeline("ticker")

    @pipeline.task()
    def first(ctx):
        return "first"

    @pipeline.task(depends_on=["first"], timeout=100)
    async def ticker(ctx, first):
        ticks = 0
        while not os.path.exists(ctx.params["gate"]):
            ticks += 1
            await ctx.memory.save("ticks", ticks)  # answered once it is on disk
            await asyncio.sleep(0.02)  # ok-sleep: the step's own pace between saves
        return ticks

    @pipeline.task(depends_on=["ticker"], final=True)
    def last(ctx, ticker):
        return {"ticks": ticker}
"""

QUICK = """
    from tagent_client import Pipeline

    pipeline = Pipeline("quick")

    @pipeline.task(final=True)
    def only(ctx):
        return "done"
"""


def mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs on `path` (root only); False if this machine does not let us."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Disk:
    """The state dir's disk, which a test fills and frees while the daemon runs."""

    def __init__(self, kind: str, state_dir: Path, flag: Path) -> None:
        self.kind, self.state_dir, self.flag = kind, state_dir, flag

    def fill(self) -> None:
        if self.kind == "failpoint":
            self.flag.touch()
            return
        with open(self.state_dir / "filler", "wb", buffering=0) as f:
            chunk = b"\0" * 65536
            try:
                while True:
                    f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        (self.flag if self.kind == "failpoint" else self.state_dir / "filler").unlink()


@pytest.fixture(params=["tmpfs", "failpoint"])
def daemon_and_disk(request: pytest.FixtureRequest, tmp_path: Path,
                    make_daemon: Callable[..., DaemonProcess]) -> Iterator[tuple[DaemonProcess, Disk]]:
    """A durable daemon (not started) whose state dir's disk the test can fill: a 4 MiB tmpfs, or the failpoint."""
    daemon = make_daemon(workers=1)
    daemon.state_dir.mkdir(mode=0o700)
    disk = Disk(request.param, daemon.state_dir, tmp_path / "disk-full")
    if request.param == "tmpfs":
        if not mount_tmpfs(daemon.state_dir, "size=4m,mode=0700"):
            pytest.skip("a real full disk needs root and mount(8); the failpoint variant covers the rest")
    else:
        daemon.env[DISK_FULL_ENV] = str(disk.flag)
    try:
        yield daemon, disk
    finally:
        daemon.stop()
        if request.param == "tmpfs":
            unmount(daemon.state_dir)


def long_poll(daemon: DaemonProcess, run_id: str, after: int, wait: float) -> Any:
    """A client's long poll for the run's events after `after` (its reply, or its error)."""
    with daemon.client(timeout=5) as client:
        return client.events(run_id, after=after, wait=wait)


def problem(daemon: DaemonProcess) -> str | None:
    """What `tagentd status --json` says is wrong with the state dir (None: nothing)."""
    done = daemon.admin("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["stats"]["state_dir_problem"]


def failed_commits(daemon: DaemonProcess) -> int:
    found = re.search(r"(\d+) commits failed", problem(daemon) or "")
    return int(found.group(1)) if found else 0


def segments(state_dir: Path) -> list[Path]:
    """Every WAL segment of both stores (runs and broker)."""
    return sorted(state_dir.glob("wal/*.wal")) + sorted(state_dir.glob("broker/*.wal"))


def test_a_full_disk_refuses_what_must_be_saved_answers_the_rest_and_resumes_when_space_returns(
        daemon_and_disk: tuple[DaemonProcess, Disk], tmp_path: Path) -> None:
    daemon, disk = daemon_and_disk
    state = daemon.state_dir
    gate = tmp_path / "gate"
    ticker = write_pipeline(tmp_path, "ticker.py", TICKER)
    quick = write_pipeline(tmp_path, "quick.py", QUICK)
    daemon.start()
    with daemon.client() as client:
        # Given a run whose step saves to the run's memory every 20 ms (a commit each) — work in flight
        run_id = client.submit(ticker, {"gate": str(gate)}).id
        wait_until(lambda: client.status(run_id).steps["ticker"].status == "running", 20, what="ticker to run")
        reported = {n for n, s in client.status(run_id).steps.items() if s.status == "completed"}
        assert reported == {"first"}
        before = segments(state)
        # And a client parked in a long poll for the run's next event (the ticker publishes none)
        latest = client.events(run_id).events[-1].seq
        baseline, ours = client.daemon_status().stats["requests"], itertools.count(1)  # each status call counts too
        parked = ThreadPoolExecutor(1).submit(long_poll, daemon, run_id, latest, 3.0)
        wait_until(lambda: client.daemon_status().stats["requests"] - baseline - next(ours) >= 2, 10,
                   what="the poll (a ping, then events) to arrive")

        # When the disk fills up
        disk.fill()
        # Then the daemon notices at its next commit, and keeps retrying
        wait_until(lambda: failed_commits(daemon) >= 5, 20, what="five failed commits")
        # And the parked poll ends with DiskFull when its wait is over, rather than wait for space
        assert isinstance(parked.exception(timeout=10), DiskFull), parked.exception()

    # And a ping and `tagentd status` still answer at once, status saying the disk is full and what to do
    began = time.monotonic()
    with daemon.client(timeout=5) as client:
        client.ping()
    assert time.monotonic() - began < 2.0
    shown = daemon.admin("status")
    assert shown.returncode == 0, shown.stderr
    assert "STATE DIR full since" in shown.stdout and f"free space in {state}" in shown.stdout, shown.stdout

    # And a submit fails at once with DiskFull: its code, its exit status and one line naming the state dir
    began = time.monotonic()
    refused = daemon.cli("submit", str(quick))
    assert refused.returncode == exit_code_for(DiskFull.code) == 15, (refused.returncode, refused.stderr)
    (line,) = refused.stderr.strip().splitlines()
    assert f"the state dir {state} is full" in line and f"free space in {state}" in line, line
    assert time.monotonic() - began < 10.0
    with daemon.client(timeout=5) as client, pytest.raises(DiskFull):
        client.submit(quick)

    # And the retries left no empty WAL segment behind, nor a new segment per retry
    assert len(segments(state)) <= len(before) + 1, (before, segments(state))
    assert [s for s in segments(state) if s.stat().st_size == 0] == []

    # When space is freed
    disk.free()
    # Then the daemon resumes by itself: status is clear again, the step goes on, the run completes
    wait_until(lambda: problem(daemon) is None, 10, what="the daemon to write again")
    gate.touch()
    with daemon.client() as client:
        result = client.wait(run_id, timeout=30)
        assert result.step_outputs["last"]["ticks"] >= 1
        later = client.submit(quick).id
        client.wait(later, timeout=30)
        completed = {r.run_id: r.status for r in client.runs()}
    assert completed == {run_id: "completed", later: "completed"}  # the refused submits left no run
    assert [s for s in segments(state) if s.stat().st_size == 0] == []

    # When everything is killed with SIGKILL and started again
    daemon.kill9()
    daemon.start()
    # Then nothing reported COMPLETED was lost, and no empty segment is left
    with daemon.client() as client:
        assert {r.run_id: r.status for r in client.runs()} == completed
        assert client.result(run_id).step_outputs["last"] == result.step_outputs["last"]
    assert [s for s in segments(state) if s.stat().st_size == 0] == []


@pytest.fixture
def read_only_state_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/state, which we may not write: a read-only tmpfs as root, mode 0500 otherwise."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if os.geteuid() == 0:
        if not mount_tmpfs(state, "ro,size=1m,mode=0700"):
            pytest.skip("root ignores file modes: a read-only state dir needs mount(8) here")
        try:
            yield state
        finally:
            unmount(state)
    else:
        state.chmod(0o500)
        try:
            yield state
        finally:
            state.chmod(0o700)


def test_a_read_only_state_dir_stops_the_start_with_one_line_and_the_config_exit_code(
        read_only_state_dir: Path, make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a state dir that exists, is private, but cannot be written
    daemon = make_daemon(workers=1)
    assert daemon.state_dir == read_only_state_dir
    # When the daemon is started in the foreground, and in the background
    for done in (daemon.start_refused(), daemon.admin("start", "--workers", "1")):
        # Then each exits with the config error's status and one line: the state dir, why, what to do
        assert done.returncode == exit_code_for("config") == 9, (done.returncode, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"tagentd: state dir {read_only_state_dir} is not writable ("), line
        assert "TAGENTD_STATE_DIR" in line, line
    # And no daemon is left behind
    assert processes_using(tmp_path) == []


def test_a_full_state_dir_stops_the_start_with_one_line_and_the_disk_full_exit_code(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a state dir on a file system that is full (a 1 MiB tmpfs, filled up)
    daemon = make_daemon(workers=1)
    state = daemon.state_dir
    state.mkdir(mode=0o700)
    if not mount_tmpfs(state, "size=1m,mode=0700"):
        pytest.skip("a full file system needs root and mount(8)")
    try:
        Disk("tmpfs", state, tmp_path / "unused").fill()
        # When the daemon is started in the foreground, and in the background
        for done in (daemon.start_refused(), daemon.admin("start", "--workers", "1")):
            # Then each exits with the disk-full status and one line: the state dir, why, what to do
            assert done.returncode == exit_code_for(DiskFull.code) == 15, (done.returncode, done.stderr)
            (line,) = done.stderr.strip().splitlines()
            assert line == f"tagentd: state dir {state} is full (No space left on device); free space in {state}", line
        # And no daemon is left behind
        assert processes_using(tmp_path) == []
    finally:
        unmount(state)
