"""The single-instance lock: the flock decides, across real processes, including kill -9."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagent_client.errors import AlreadyRunning, exit_code_for
from tagentd.cli.main import cli
from tagentd.plumbing.lock import InstanceLock, is_locked, read_pid

pytestmark = pytest.mark.timeout(30)

HOLDER = """
import sys
from pathlib import Path
from tagentd.plumbing.lock import InstanceLock
lock = InstanceLock(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold until our stdin closes or we are killed
"""


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def holder(runtime_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock; yielded once it has reported 'locked'."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(runtime_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_process_gets_already_running_with_holders_pid(runtime_dir: Path, holder: subprocess.Popen[str]) -> None:
    # Given another process holds the lock
    # When we try to take it
    with pytest.raises(AlreadyRunning) as caught:
        InstanceLock(runtime_dir)
    # Then the error names its pid, the runtime dir and what to do
    assert caught.value.message == (
        f"tagentd is already running (pid {holder.pid}) with runtime dir {runtime_dir}; "
        f"stop it with 'tagentd stop' or use another TAGENTD_RUNTIME_DIR"
    )
    assert caught.value.details["pid"] == holder.pid
    assert is_locked(runtime_dir)
    assert read_pid(runtime_dir) == holder.pid


def test_lock_is_free_after_holder_is_killed_9(runtime_dir: Path, holder: subprocess.Popen[str]) -> None:
    # Given the holder dies without any cleanup
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # Then the stale pidfile does not matter: the lock is free and we take it
    assert read_pid(runtime_dir) == holder.pid
    assert not is_locked(runtime_dir)
    with InstanceLock(runtime_dir) as lock:
        assert lock.held
        assert read_pid(runtime_dir) == os.getpid()


def test_close_releases_and_empties_the_pidfile(runtime_dir: Path) -> None:
    # Given we hold the lock
    lock = InstanceLock(runtime_dir)
    pidfile = runtime_dir / "tagentd.pid"
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600
    assert is_locked(runtime_dir)
    # When we close it (twice: idempotent)
    lock.close()
    lock.close()
    # Then it is free, the file stays (never unlinked) but holds no pid
    assert not is_locked(runtime_dir)
    assert pidfile.exists() and read_pid(runtime_dir) is None


def test_stale_pid_of_a_live_process_does_not_block(runtime_dir: Path) -> None:
    # Given a pidfile naming a live process (pid 1) but nobody holding the lock
    (runtime_dir / "tagentd.pid").write_text("1\n")
    # When we lock, Then it succeeds: the flock, not the pid, is the truth
    with InstanceLock(runtime_dir):
        assert read_pid(runtime_dir) == os.getpid()


def test_read_pid_tolerates_missing_and_garbage(runtime_dir: Path) -> None:
    assert read_pid(runtime_dir) is None
    (runtime_dir / "tagentd.pid").write_text("not a pid")
    assert read_pid(runtime_dir) is None
    assert not is_locked(runtime_dir)


def test_cli_start_refuses_while_lock_is_held(runtime_dir: Path, holder: subprocess.Popen[str], tmp_path: Path) -> None:
    # Given another process holds the runtime dir's lock
    # When `tagentd start` runs against that runtime dir
    result = CliRunner().invoke(cli, ["start", "--runtime-dir", str(runtime_dir), "--state-dir", str(tmp_path / "st")])
    # Then it says so on one line and exits with AlreadyRunning's code, starting nothing
    assert result.exit_code == exit_code_for("already_running") == 10
    assert result.stderr.startswith(f"tagentd: tagentd is already running (pid {holder.pid})")
    assert result.stderr.count("\n") == 1


def test_cli_status_and_stop_when_not_running(runtime_dir: Path) -> None:
    # Given no daemon on this runtime dir
    runner = CliRunner()
    # When `tagentd status` runs, Then one line and exit 3
    result = runner.invoke(cli, ["status", "--runtime-dir", str(runtime_dir)])
    assert result.exit_code == exit_code_for("daemon_unavailable") == 3
    assert result.stdout == f"tagentd is not running (runtime dir {runtime_dir}); start it with 'tagentd start'\n"
    # When `tagentd status --json` runs, Then only JSON on stdout, still exit 3
    result = runner.invoke(cli, ["status", "--json", "--runtime-dir", str(runtime_dir)])
    assert result.exit_code == 3
    assert result.stdout.startswith('{"running": false')
    # When `tagentd stop` runs, Then nothing to do is not an error
    result = runner.invoke(cli, ["stop", "--runtime-dir", str(runtime_dir)])
    assert result.exit_code == 0
    assert "not running" in result.stdout
