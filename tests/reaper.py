"""Processes left behind by a test session that was killed (SIGKILL skips fixture teardown) are ended by the next.

Every pytest process marks the environment it passes to its children with its own identity (pid and start time,
so a reused pid is not mistaken for it). A process whose mark names a test process that no longer exists was
started by a killed session: nobody will stop it, so `reap_orphans()` kills it. A process of a session that is
still running (another suite in parallel on the same machine) is never touched.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

OWNER_ENV = "TAGENTD_TEST_OWNER"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def identity(pid: int) -> str:
    """`PID:STARTTIME` of a live process: what children find in OWNER_ENV."""
    return f"{pid}:{_start_time(pid)}"


def mark_children() -> None:
    """Make every process this one starts from now on carry this process's identity in its environment."""
    os.environ[OWNER_ENV] = identity(os.getpid())


def _owner_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = OWNER_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def _owner_alive(owner: str) -> bool:
    pid, _, started = owner.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == started


def reap_orphans() -> list[int]:
    """SIGKILL every process whose owning test process is gone; returns their pids."""
    reaped = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        owner = _owner_of(int(entry.name))
        if owner is None or _owner_alive(owner) or _start_time(int(entry.name)) is None:
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
        reaped.append(int(entry.name))
    return reaped
