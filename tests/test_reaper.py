"""The suite ends processes a killed test session left behind, and never another live session's."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pid_alive, wait_until
from reaper import OWNER_ENV, identity, reap_orphans

pytestmark = pytest.mark.timeout(30)

# A stand-in for a test process: marks its children like conftest does, starts one that would run for a
# minute, prints its pid and waits to be killed.
SESSION = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from reaper import mark_children
    mark_children()
    child = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"],  # ok-sleep: the orphan
                             stdout=subprocess.PIPE)
    child.stdout.readline()  # it runs: its exec is over (until then /proc shows it without its environment)
    print(child.pid, flush=True)
    time.sleep(60)  # ok-sleep: killed by the test
""")


@pytest.fixture(autouse=True)
def one_reaper_test_at_a_time() -> Iterator[None]:
    """The tests here reap while they hold sessions' children: run in parallel (pytest-xdist), one test's reap would
    end the other's orphan before that test looks. A lock file in the temp dir lets one run at a time."""
    with open(Path(tempfile.gettempdir()) / "tagentd-test-reaper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _session_with_a_child() -> tuple[subprocess.Popen[str], int]:
    session = subprocess.Popen([sys.executable, "-c", SESSION, os.path.dirname(__file__)], stdout=subprocess.PIPE,
                               text=True)
    assert session.stdout is not None
    return session, int(session.stdout.readline())


def test_a_killed_sessions_child_is_reaped() -> None:
    # Given a test session that started a child, then was killed with SIGKILL (no teardown ran)
    session, child = _session_with_a_child()
    session.kill()
    session.wait()
    assert pid_alive(child)
    # When the next session starts
    reaped = reap_orphans()
    # Then the child is gone, and it is the only thing reaped on its account
    assert child in reaped
    wait_until(lambda: not pid_alive(child), 10, what="the orphan to die")


def test_a_live_sessions_child_is_left_alone() -> None:
    # Given a test session still running, with its child
    session, child = _session_with_a_child()
    try:
        # When another session reaps
        reaped = reap_orphans()
        # Then neither is touched
        assert child not in reaped and session.pid not in reaped
        assert pid_alive(child)
    finally:
        session.kill()
        session.wait()
        reap_orphans()
    wait_until(lambda: not pid_alive(child), 10, what="the child to be reaped")


def test_this_process_marks_its_children() -> None:
    # Given conftest ran in this process, Then what it starts carries its identity
    assert os.environ[OWNER_ENV] == identity(os.getpid())
