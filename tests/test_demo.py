"""`make demo` (`python -m tagentd.cli.demo`) never touches the user's setup and never leaves a process behind.

Issue 11, finding 1: the demo's daemon used to watch the user's real watched folder (so
every file there ran again), to submit into a daemon the user already ran without saying
so, and to leave its daemon running when it failed midway. Each test runs the real demo
from the repository root, as `make demo` does, with HOME, the XDG dirs and TMPDIR in
temp dirs standing for the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, processes_using, wait_until, write_pipeline

pytestmark = pytest.mark.timeout(120)

MARKER_PIPELINE = """
    from tagent_client import Pipeline

    pipeline = Pipeline("marker")

    @pipeline.task()
    def mark(ctx):
        with open({marker!r}, "a") as f:
            f.write(ctx.run_id + "\\n")
"""

SLOW_PIPELINE = """
    import time
    from tagent_client import Pipeline

    pipeline = Pipeline("slow_demo")

    @pipeline.task(timeout=120, max_retries=0)
    def nap(ctx):
        time.sleep(60)  # ok-sleep: the step's own work, so the demo is killed while a step runs
"""


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """The user's TMPDIR: short, because the demo's sockets live in it (ipc paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tdemo"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def user_env(home: Path, tmp: Path) -> dict[str, str]:
    """A user's environment: their own HOME, XDG dirs (the runtime dir too) and TMPDIR; no TAGENTD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGENTD_", "XDG_"))}
    (home / "xdg-run").mkdir(parents=True, mode=0o700, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_RUNTIME_DIR=str(home / "xdg-run"), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"),
               PYTHONPATH=os.pathsep.join([str(REPO / "client"), str(REPO)]))
    env.pop("NOTIFY_SOCKET", None)
    return env


def start_demo(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The demo as `make demo` runs it, in its own process group (as a terminal's foreground job)."""
    return subprocess.Popen([sys.executable, "-m", "tagentd.cli.demo", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def watched_folder(home: Path) -> Path:
    folder = home / "data" / "tagentd" / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def assert_nothing_left(tmp: Path) -> None:
    wait_until(lambda: not processes_using(tmp), 10, what=f"every process of the demo to end: {processes_using(tmp)}")
    assert not list(tmp.glob("tagentd-demo-*")), "the demo's scratch dir was not removed"


def test_the_demo_runs_no_file_of_the_users_watched_folder(tmp_path: Path, demo_tmp: Path) -> None:
    # Given a pipeline file in the user's watched folder ($XDG_DATA_HOME/tagentd/pipelines), no daemon running
    home = tmp_path / "home"
    marker = tmp_path / "marker.txt"
    write_pipeline(watched_folder(home), "marker.py", MARKER_PIPELINE.format(marker=str(marker)))

    # When the demo runs to the end
    demo = start_demo(user_env(home, demo_tmp))
    out, _ = demo.communicate(timeout=100)

    # Then it completed, the user's file did not run, and nothing is left
    assert demo.returncode == 0, out
    assert "company_research: COMPLETED" in out
    assert not marker.exists(), f"the demo ran the user's watched file:\n{out}"
    assert_nothing_left(demo_tmp)


def test_the_demo_leaves_a_running_user_daemon_alone_and_says_so(tmp_path: Path, demo_tmp: Path) -> None:
    # Given the user's daemon, which already ran the file in the user's watched folder once
    home = tmp_path / "home"
    marker = tmp_path / "marker.txt"
    write_pipeline(watched_folder(home), "marker.py", MARKER_PIPELINE.format(marker=str(marker)))
    users = DaemonProcess(home)
    users.env = user_env(home, demo_tmp)
    users.runtime_dir = home / "xdg-run" / "tagentd"
    users.state_dir = home / "state" / "tagentd"
    users.start()
    try:
        wait_until(lambda: marker.exists(), 30, what="the user's daemon to run the watched file")
        before = json.loads(users.cli("runs", "--json").stdout)

        # When the demo runs (in the same environment)
        demo = start_demo(users.env)
        out, _ = demo.communicate(timeout=100)

        # Then it used a private daemon, said the user's keeps running, and the user's daemon got nothing
        assert demo.returncode == 0, out
        assert f"your own tagentd (pid {users.pid}, runtime dir {users.runtime_dir}) keeps running" in out
        assert "demo: the private daemon runs" in out
        assert json.loads(users.cli("runs", "--json").stdout) == before
        assert len(marker.read_text().splitlines()) == 1, "the user's watched file ran again"
        assert users.proc is not None and users.proc.poll() is None, "the demo stopped the user's daemon"
    finally:
        users.stop()
    assert_nothing_left(demo_tmp)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_killing_the_demo_while_a_step_runs_leaves_no_process(how: str, tmp_path: Path, demo_tmp: Path) -> None:
    # Given the demo running a pipeline whose step takes a minute
    slow = write_pipeline(tmp_path, "slow.py", SLOW_PIPELINE)
    demo = start_demo(user_env(tmp_path / "home", demo_tmp), str(slow))
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "step.started nap" in line:
            break
    else:
        pytest.fail("the demo ended before its step started:\n" + "".join(seen))

    # When it is interrupted: Ctrl-C in a terminal (SIGINT to the whole foreground group) or `kill PID`
    if how == "ctrl-c":
        os.killpg(demo.pid, signal.SIGINT)
    else:
        demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=60)

    # Then it stopped its daemon on the way out, and no process and no scratch dir remain
    assert "tagentd stopped" in rest, "".join(seen) + rest
    assert demo.returncode != 0
    assert_nothing_left(demo_tmp)


def test_the_demo_stops_its_daemon_when_its_reader_goes_away(tmp_path: Path, demo_tmp: Path) -> None:
    # Given the demo's output piped into a reader (`make demo | head -3`)
    demo = start_demo(user_env(tmp_path / "home", demo_tmp))
    assert demo.stdout is not None

    # When the reader has its 3 lines and goes away
    lines = [demo.stdout.readline() for _ in range(3)]
    demo.stdout.close()
    demo.wait(timeout=60)

    # Then the demo ended, its daemon too, and nothing remains
    assert lines[0].startswith("demo: starting a private tagentd")
    assert_nothing_left(demo_tmp)
