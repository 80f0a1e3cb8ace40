"""A bench script stopped by a signal (SIGTERM from a job runner or `timeout`, SIGHUP from a closed terminal,
Ctrl-C) stops every daemon and helper process it started: they each run in a session of their own, so nothing
else would. The scripts' temp dirs are put under the test's (TMPDIR), so what they start is found by its dirs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, processes_using, wait_until

BENCH = REPO / "bench"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir short enough for the sockets of the daemons the scripts make in it (a Unix socket's path has at
    most 107 bytes; pytest's tmp_path is too deep)."""
    path = Path(tempfile.mkdtemp(prefix="tagentd-bsig-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_running(root: Path, label: str) -> bool:
    """Whether a `tagentd start` runs in a bench temp dir `tagentd-bench-<label>...` under `root` (the measured
    daemon, not the throwaway one that warms the bytecode cache first)."""
    needle = str(root / f"tagentd-bench-{label}").encode()
    for pid in processes_using(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"tagentd" in argv and b"start" in argv and needle in environ:
            return True
    return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("script", "label", "sig"), [
    ("agent.py", "agent-plain-", signal.SIGTERM),  # a scripted LLM server and a daemon
    ("first_step.py", "first-", signal.SIGHUP),
    ("compose.py", "compose-", signal.SIGINT),
])
def test_a_bench_stopped_by_a_signal_leaves_no_process_behind(short_tmp: Path, script: str, label: str,
                                                               sig: signal.Signals) -> None:
    # Given a bench script whose daemon is running
    tmp_path = short_tmp
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    bench = subprocess.Popen([sys.executable, str(BENCH / script), "--quick"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: daemon_running(tmp_path, label) or bench.poll() is not None, 120, what=f"{script}'s daemon")
        assert bench.poll() is None, f"{script} ended before its daemon was seen: {bench.communicate()[1][-2000:]!r}"
        # When the script gets the signal
        bench.send_signal(sig)
        # Then it ends, and every process it started (the daemon, its workers, helpers) has ended too
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode != 0, stderr.decode(errors="replace")[-2000:]
        assert processes_using(tmp_path) == [], stderr.decode(errors="replace")[-2000:]
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait(10)
        for pid in processes_using(tmp_path):  # what the script failed to stop: no test leaves a process behind
            os.kill(pid, signal.SIGKILL)


def test_every_bench_script_runs_its_main_through_entry() -> None:
    """What makes the signals above stop a script's daemons (bench/harness.py `entry`); a script that calls its main
    directly dies at once on SIGTERM or SIGHUP."""
    scripts = sorted(p for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())
    assert scripts
    direct = [p.name for p in scripts if "entry(main)" not in p.read_text().split('if __name__ == "__main__":')[1]]
    assert direct == []
