"""One daemon per runtime dir: an exclusive flock on `<runtime_dir>/tagentd.pid`.

The flock is the truth, not the pid in the file: the kernel drops the lock when the
holder exits, however it exits (kill -9 included), so a stale pidfile can never block
a start and a recycled pid can never fake a running daemon. The pid inside is written
after locking, for display only.

The file is never unlinked: unlinking a locked file lets a second daemon lock a fresh
inode at the same path while the first still runs. On a clean release it is emptied.

Guarantee for child processes: the fd is O_CLOEXEC, so workers started by exec
(subprocess, multiprocessing "spawn"/"forkserver") do not inherit the lock. A child
created by a bare fork() does share it and would keep it held after the daemon dies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from tagent_client.errors import AlreadyRunning, ConfigError
from tagent_client.wire.paths import PIDFILE

_PID_READ_WINDOW = 0.2  # the holder writes its pid right after locking; give it that long


class InstanceLock:
    """Holds the runtime dir's single-instance lock from construction until `close()`."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.path = self.runtime_dir / PIDFILE
        self._fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the lock file {self.path}: {exc.strerror}; check the runtime dir's owner and permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise already_running(self.runtime_dir, _wait_for_pid(self.path)) from None
            raise ConfigError(f"cannot lock {self.path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot write the pid to {self.path}: {exc.strerror}") from None
        self._fd = fd
        self.pid = os.getpid()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """Empty the pidfile and release the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last fd of the open file description releases the flock

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def already_running(runtime_dir: Path, pid: int | None) -> AlreadyRunning:
    """The error for "another daemon holds this runtime dir", with what to do about it."""
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return AlreadyRunning(
        f"tagentd is already running ({who}) with runtime dir {runtime_dir}; "
        f"stop it with 'tagentd stop' or use another TAGENTD_RUNTIME_DIR",
        pid=pid,
        runtime_dir=str(runtime_dir),
    )


def read_pid(runtime_dir: Path) -> int | None:
    """The pid written in the pidfile, for display; None when missing, empty or garbage.

    This does not say whether that process is running: `is_locked` is the truth.
    """
    try:
        text = (Path(runtime_dir) / PIDFILE).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_locked(runtime_dir: Path) -> bool:
    """True while some process holds the lock (a daemon is running on this runtime dir).

    Probes by taking and immediately dropping a shared lock, so a daemon starting in that
    same instant can see a spurious "already running"; callers use this for display and
    for waiting, never as the gate to start (the daemon's own flock is the gate).
    """
    try:
        fd = os.open(Path(runtime_dir) / PIDFILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return False
    finally:
        os.close(fd)  # also drops our probe lock
    return False


def _wait_for_pid(path: Path) -> int | None:
    """Read the holder's pid, allowing the short window between its flock and its write."""
    deadline = time.monotonic() + _PID_READ_WINDOW
    while True:
        pid = read_pid(path.parent)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.01)
