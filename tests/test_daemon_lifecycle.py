"""The daemon's life around its runs, end to end: one daemon per runtime dir, private dirs and files, a graceful
stop whose result survives a restart, and what `tagent` says when no daemon answers.

Real daemons and workers (conftest `daemon` / `make_daemon`), each in private temp dirs. Nothing sleeps to wait:
tests poll with a deadline (`wait_until`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, pid_alive, wait_until, write_pipeline
from e2e_helpers import ECHO, RESEARCH, step_status

from tagent_client.errors import exit_code_for
from tagent_client.wire.paths import CONTROL_SOCKET, EVENTS_SOCKET, PIDFILE, WORKERS_SOCKET

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

EXIT_NOT_RUNNING = exit_code_for("daemon_unavailable")
EXIT_CONFIG = exit_code_for("config")
EXIT_ALREADY_RUNNING = exit_code_for("already_running")


# -- one daemon per runtime dir, private dirs ----------------------------------------------------------


def test_a_second_daemon_on_the_same_runtime_dir_refuses_to_start(daemon: DaemonProcess) -> None:
    # Given a running daemon
    # When another is started in the foreground on the same runtime dir
    second = daemon.admin("start", "--foreground", "--workers", "1", timeout=20)

    # Then it refuses with exit 10, saying why, and the first keeps serving
    assert second.returncode == EXIT_ALREADY_RUNNING, (second.returncode, second.stderr)
    assert "already running" in second.stderr and str(daemon.pid) in second.stderr
    with daemon.client() as client:
        assert client.ping()["pid"] == daemon.pid


@pytest.mark.parametrize("which", ["runtime", "state"])
def test_a_dir_readable_by_others_is_refused(which: str, make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a runtime (or state) dir with mode 0755
    daemon = make_daemon()
    directory = daemon.runtime_dir if which == "runtime" else daemon.state_dir
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)

    # When the daemon is started
    proc = daemon.admin("start", "--foreground", "--workers", "1", timeout=20)

    # Then it refuses with exit 9 and says how to fix it
    assert proc.returncode == EXIT_CONFIG, (proc.returncode, proc.stderr)
    assert f"chmod 700 {directory}" in proc.stderr
    assert not (daemon.runtime_dir / CONTROL_SOCKET).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a dir to another user")
def test_a_runtime_dir_owned_by_another_user_is_refused(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a private runtime dir that belongs to "nobody"
    daemon = make_daemon()
    daemon.runtime_dir.mkdir(mode=0o700)
    os.chown(daemon.runtime_dir, 65534, 65534)

    # When the daemon is started
    proc = daemon.admin("start", "--foreground", "--workers", "1", timeout=20)

    # Then it refuses with exit 9, naming the owner
    assert proc.returncode == EXIT_CONFIG, (proc.returncode, proc.stderr)
    assert "owned by uid 65534" in proc.stderr


def test_sockets_dirs_and_state_files_are_private(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a daemon that has finished a run (so there are checkpoint files)
    path = write_pipeline(tmp_path, "echo.py", ECHO)
    with daemon.client() as client:
        client.wait(client.submit(path).id, timeout=10)

    # Then the runtime dir is 0700, its sockets and pidfile 0600
    def mode(p: Path) -> int:
        return stat.S_IMODE(p.lstat().st_mode)

    assert mode(daemon.runtime_dir) == 0o700
    for name in (CONTROL_SOCKET, EVENTS_SOCKET, WORKERS_SOCKET):
        sock = daemon.runtime_dir / name
        assert stat.S_ISSOCK(sock.lstat().st_mode) and mode(sock) == 0o600, name
    assert mode(daemon.runtime_dir / PIDFILE) == 0o600
    # And under the state dir every dir is 0700 and every file 0600
    files = [p for p in daemon.state_dir.rglob("*") if p.is_file()]
    assert files, "no state files written"
    assert {str(p): oct(mode(p)) for p in files if mode(p) != 0o600} == {}
    dirs = [daemon.state_dir, *(p for p in daemon.state_dir.rglob("*") if p.is_dir())]
    assert {str(p): oct(mode(p)) for p in dirs if mode(p) != 0o700} == {}


# -- stopping --------------------------------------------------------------------------------------------


def test_a_graceful_stop_lets_a_running_step_finish_and_its_result_survives_a_restart(
        daemon: DaemonProcess, make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a run whose step is sleeping 0.3 s
    path = write_pipeline(tmp_path, "short.py", """
        import asyncio
        from tagent_client import Pipeline

        pipeline = Pipeline("short")

        @pipeline.task(final=True)
        async def nap(ctx):
            await asyncio.sleep(0.3)  # ok-sleep: the step's own work (or a yield), not a wait for something
            return {"slept": 0.3, "attempt": ctx.attempt}
    """)
    with daemon.client() as client:
        run = client.submit(path)
        wait_until(lambda: step_status(client, run.id, "nap") == "running", 5, what="nap to start")

    workers = daemon.worker_pids()

    # When the daemon is stopped gracefully
    stopped = daemon.admin("stop", timeout=30)

    # Then the stop waited for the step, and nothing is left running
    assert stopped.returncode == 0, stopped.stderr
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0
    assert len(workers) == 2 and not any(pid_alive(p) for p in workers)
    assert "tagentd stopped" in daemon.log()
    # And after a restart the completed result is still there, run once
    again = make_daemon(root=daemon.root).start()
    with again.client() as client:
        result = client.result(run.id)
        detail = client.status(run.id)
    assert result.status == "completed"
    assert result.final_output == {"slept": 0.3, "attempt": 1}
    assert detail.steps["nap"].attempts == 1


def test_tagent_without_a_running_daemon_exits_3_with_one_line(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon that ran and stopped (its runtime dir exists, its sockets are gone)
    daemon = make_daemon(workers=1).start()
    daemon.stop()

    for args in (["runs"], ["status", "0abc1def"], ["result", "0abc1def", "--json"], ["submit", str(RESEARCH)]):
        # When a tagent command is run
        proc = daemon.cli(*args)

        # Then it exits 3 with one line saying how to start the daemon, and nothing on stdout
        assert proc.returncode == EXIT_NOT_RUNNING, (args, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "tagentd start" in lines[0], (args, proc.stderr)
        assert proc.stdout == ""


def test_a_killed_daemon_leaves_a_socket_nobody_answers_and_tagent_exits_3(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon killed with SIGKILL (its socket files stay behind)
    daemon = make_daemon(workers=1).start()
    daemon.kill9()
    assert (daemon.runtime_dir / CONTROL_SOCKET).exists()

    # When tagent is run
    proc = daemon.cli("runs")

    # Then it exits 3 with one line mentioning 'tagentd start'
    assert proc.returncode == EXIT_NOT_RUNNING, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "tagentd start" in proc.stderr
