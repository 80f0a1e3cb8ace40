"""Shared fixtures: a real tagentd in private temp dirs, and helpers to wait without sleeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reaper import mark_children, reap_orphans

REPO = Path(__file__).resolve().parent.parent

mark_children()  # every daemon, worker and CLI a test starts carries this process's identity (tests/reaper.py)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before the first test: end what a killed earlier session left running (never another live session's)."""
    if hasattr(session.config, "workerinput"):
        return  # xdist workers: the controller reaps once
    reaped = reap_orphans()
    if reaped:
        print(f"\nreaped {len(reaped)} process(es) left by a killed test session: {reaped}", file=sys.stderr)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # ok-sleep: polling interval of a deadline-bounded wait


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_worker_template(pid: int) -> bool:
    """Whether `pid` runs `python -m tagentd.executor.template` (its forked workers keep that command line too)."""
    try:
        return b"tagentd.executor.template" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def processes_using(root: Path) -> list[int]:
    """Live pids (not this one) whose command line or environment mentions `root`: daemons, workers, CLIs of a test."""
    needle = os.path.join(str(root), "").encode()  # "root/": tmp dirs test_x1 and test_x10 must not match each other
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in blob and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """After the test, every daemon, worker and CLI it started under its temp dir has exited (waited for, 10 s at
    most). Modules take it with `pytest.mark.usefixtures("no_process_left_behind")`: set up before the test's own
    fixtures (`make_daemon`), so torn down after them."""
    yield
    wait_until(lambda: not processes_using(tmp_path), 10, what=f"processes of {tmp_path} to exit")


class DaemonProcess:
    """A real `tagentd start --foreground` in its own runtime/state dirs, driven by tests."""

    def __init__(self, root: Path, workers: int = 2, extra: list[str] | None = None, template: bool = False) -> None:
        self.root = root
        self.runtime_dir = root / "run"
        self.state_dir = root / "state"
        self.workers = workers
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path: Path | None = None  # where the daemon's stderr goes (None: nowhere)
        self.env = dict(os.environ)
        self.env.update(
            TAGENTD_RUNTIME_DIR=str(self.runtime_dir),
            TAGENTD_STATE_DIR=str(self.state_dir),
            XDG_CONFIG_HOME=str(root / "config"),
            XDG_DATA_HOME=str(root / "data"),  # the default watch folder is data/tagentd/pipelines
            PYTHONPATH=os.pathsep.join([str(REPO / "client"), str(REPO), self.env.get("PYTHONPATH", "")]),
            # Workers forked from the warm template (the default for users) are what test_worker_life and
            # test_chaos exercise; elsewhere separate worker processes (worker_template = false, the same
            # worker code) spare each of the suite's daemon starts the template's seconds of imports.
            TAGENTD_WORKER_TEMPLATE="true" if template else "false",
        )
        self.env.pop("NOTIFY_SOCKET", None)

    def start(self, timeout: float = 20.0, workers_timeout: float = 60.0) -> DaemonProcess:
        """Start the daemon; return once it answers and all its workers are ready (they are forked from the
        worker template once it has imported the agent runtime, a second or more after the daemon answers)."""
        argv = [sys.executable, "-m", "tagentd", "start", "--foreground", "--workers", str(self.workers), *self.extra]
        with open(self.stderr_path or os.devnull, "ab") as stderr:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        wait_until(self._answers, timeout, what=f"tagentd to answer (log: {self.state_dir / 'tagentd.log'})")
        wait_until(self._workers_ready, workers_timeout, what=f"{self.workers} ready worker(s)")
        return self

    def _workers_ready(self) -> bool:
        """Whether every worker is ready; a status call slow to answer (a busy daemon) is "not yet", not a failure:
        `start`'s own deadline decides."""
        from tagent_client.errors import TagentError

        try:
            with self.client(timeout=5.0) as c:
                workers = c.daemon_status().workers
        except TagentError:
            return False
        return len(workers) == self.workers and all(w.state == "ready" for w in workers)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"tagentd exited with {self.proc.returncode}; log:\n{self.log()}")
        from tagent_client.errors import TagentError

        try:
            with self.client(timeout=1.0) as c:
                c.ping()
            return True
        except TagentError:
            return False

    def client(self, timeout: float = 10.0):  # noqa: ANN201
        from tagent_client.client.sync import Client

        return Client(runtime_dir=self.runtime_dir, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `tagent ARGS` against this daemon."""
        return subprocess.run([sys.executable, "-m", "tagent_client.cli", *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)

    def admin(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `tagentd ARGS` against this daemon."""
        return subprocess.run([sys.executable, "-m", "tagentd", *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """Live worker processes: children of the worker template (a child of the daemon), or of the daemon."""
        found = []
        for pid in children_of(self.pid):
            found += children_of(pid) if is_worker_template(pid) else [pid]
        return [p for p in found if pid_alive(p)]

    def log(self) -> str:
        path = self.state_dir / "tagentd.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else "(no log)"

    def start_refused(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `tagentd start --foreground` expecting it to refuse to start; returns its exit status and output."""
        argv = [sys.executable, "-m", "tagentd", "start", "--foreground", "--workers", str(self.workers), *self.extra]
        done = subprocess.run(argv, env=self.env, text=True, capture_output=True, timeout=timeout, check=False)
        assert done.returncode != 0, f"tagentd started although it should have refused; stderr:\n{done.stderr}"
        return done

    def kill9(self) -> None:
        """SIGKILL the daemon and every worker at once, as a crash would."""
        assert self.proc is not None
        workers = self.worker_pids()
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        wait_until(lambda: not any(pid_alive(p) for p in workers), 10, what="workers to die")

    def stop(self) -> None:
        """Stop gracefully if running; SIGKILL whatever is left. Leaves no process behind."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        for pid in workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def sigint_restored() -> Iterator[None]:
    """No test leaves SIGINT's handling changed for the next (code run in-process may ignore it)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory of real daemons in private temp dirs; all are stopped (and checked gone) at teardown."""
    started: list[DaemonProcess] = []
    tmp_path.chmod(0o700)

    def make(workers: int = 2, extra: list[str] | None = None, root: Path | None = None,
             template: bool = False) -> DaemonProcess:
        daemon = DaemonProcess(root or tmp_path, workers, extra, template)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A started daemon with 2 workers."""
    return make_daemon().start()


def write_pipeline(directory: Path, name: str, source: str) -> Path:
    """Write a pipeline file (dedented source) and return its path."""
    import textwrap

    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path
