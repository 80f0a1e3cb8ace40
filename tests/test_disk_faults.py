"""End-to-end: a real daemon whose state dir is read-only when it starts.

A read-only state dir is a read-only tmpfs when the tests run as root and may mount, a `chmod 500`
dir otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, processes_using

from tagent_client.errors import exit_code_for

pytestmark = pytest.mark.timeout(120)


def mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs on `path` (root only); False if this machine does not let us."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


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
