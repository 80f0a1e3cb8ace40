"""`tagentd stop` (and the stop half of `restart`): ask the daemon to stop, say what it waits for, wait for it.

A graceful stop dispatches nothing new and waits for the steps in flight, at most
`--timeout` seconds (default: the daemon's, 10 s), then checkpoints what is still
running (it runs again after the next start). While it waits this prints which
steps it waits for and how long they have been running; Ctrl-C (or
`tagentd stop --fast` from elsewhere) turns it into a fast stop: checkpoint now.
The command returns once the process is gone and the lock is free.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from tagent_client.errors import DaemonUnavailable, RequestTimeout, TagentError
from tagent_client.wire import paths
from tagentd.app.stop_report import STOP_WAIT_GRACEFUL, waiting_line
from tagentd.plumbing.lock import is_locked, read_pid

POLL = 0.05
EXIT_POLL = 0.01     # `stop` returns this soon after the daemon is gone (a lock test per poll: cheap)
STATUS_EVERY = 0.5   # seconds between looks at what the stop waits for
REPEAT_EVERY = 5.0   # the waiting line is printed again this often when nothing changed
EXIT_MARGIN = 15.0   # after the drain: stopping workers (up to 5 s) and the last commit


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


class StopWatch:
    """Follows one stop: prints what the daemon says it waits for, and what it checkpoints, when that changes."""

    def __init__(self, client: Any, deadline: float) -> None:
        self.client = client
        self.deadline = deadline  # about when the daemon gives up waiting (time.monotonic())
        self.shown: tuple[Any, ...] | None = None
        self.shown_at = 0.0
        self.next_look = 0.0

    def show(self, stopping: dict[str, Any] | None) -> None:
        """Print what the daemon said, when it changed (or every REPEAT_EVERY s); nothing if no step runs."""
        waiting = list((stopping or {}).get("waiting") or [])
        if not waiting:
            return
        cutting = not stopping.get("graceful", True) or stopping.get("remaining_s", 1.0) <= 0
        shown = (cutting, *sorted(w["run_id"] + "/" + w["task"] for w in waiting))
        now = time.monotonic()
        if shown == self.shown and (cutting or now - self.shown_at < REPEAT_EVERY):
            return
        self.shown, self.shown_at = shown, now
        if cutting:
            click.echo(f"checkpointing {waiting_line(waiting)}; they run again after the next start")
        else:
            click.echo(f"waiting for {waiting_line(waiting)}; Ctrl-C or --fast to checkpoint and stop now")

    def look(self) -> None:
        """Ask the daemon what the stop waits for: every STATUS_EVERY s, and often around the deadline."""
        now = time.monotonic()
        if self.client is None or now < self.next_look:
            return
        self.next_look = now + (STATUS_EVERY if now < self.deadline - STATUS_EVERY else POLL)
        try:
            self.show(self.client.daemon_status().stats.get("stopping"))
        except TagentError:
            self.client = None  # going away: from now on only the lock and the pid tell


def stopping_rows(stopping: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The `stopping` row of `tagentd status` while a stop is under way."""
    if not stopping:
        return []
    waiting = stopping.get("waiting") or []
    if not stopping.get("graceful"):
        return [("stopping", f"now; checkpointing {waiting_line(waiting)}" if waiting else "now")]
    if not waiting:
        return [("stopping", "nothing in flight; stopping the workers")]
    return [("stopping", f"waiting for {waiting_line(waiting)}; {stopping.get('remaining_s', 0):g} s left, "
                         f"then they are checkpointed")]


def stop_daemon(runtime_dir: Path, *, fast: bool, timeout: float | None) -> None:
    """Stop the daemon on `runtime_dir` and wait until it has exited. Raises RequestTimeout if it does not."""
    from tagent_client.client.sync import Client  # noqa: PLC0415 - only the commands that talk to the daemon need it

    if not is_locked(runtime_dir):
        click.echo(f"tagentd is not running (runtime dir {runtime_dir}); nothing to stop")
        return
    pid = read_pid(runtime_dir)
    began = time.monotonic()
    drain = STOP_WAIT_GRACEFUL if timeout is None else timeout
    client = None
    try:
        client = Client(runtime_dir=runtime_dir, timeout=5.0)
        reply = client.shutdown(graceful=not fast, timeout=timeout)
        drain = 0.0 if fast else float(reply.get("timeout_s", drain))
        client.timeout = 1.0
    except (DaemonUnavailable, RequestTimeout):
        _terminate(runtime_dir, pid)
        reply = {}
    watch = StopWatch(client, began + drain)
    watch.show(reply)
    try:
        _wait_for_exit(runtime_dir, pid, began, began + drain + EXIT_MARGIN, watch)
    except KeyboardInterrupt:
        click.echo("\nstopping now: checkpointing the steps in flight (Ctrl-C again to stop waiting)")
        watch.deadline = time.monotonic()
        _stop_fast(runtime_dir)
        _wait_for_exit(runtime_dir, pid, began, time.monotonic() + EXIT_MARGIN, watch)
    finally:
        if client is not None:
            client.close()
    click.echo(f"tagentd stopped (pid {pid}, after {time.monotonic() - began:.1f} s)")


def _stop_fast(runtime_dir: Path) -> None:
    """Ask for a fast stop on a new connection: the Ctrl-C may have cut the old one mid-request (a reply
    left unread), and the request must not be lost behind it."""
    from tagent_client.client.sync import Client  # noqa: PLC0415

    try:
        with Client(runtime_dir=runtime_dir, timeout=5.0) as fresh:
            fresh.shutdown(graceful=False)
    except TagentError:
        pass  # gone already, or going: _wait_for_exit tells


def _terminate(runtime_dir: Path, pid: int | None) -> None:
    """The control socket does not answer: SIGTERM the lock holder (a graceful stop with its default wait)."""
    if not is_locked(runtime_dir):
        return
    if pid is None:
        raise DaemonUnavailable(
            f"a process holds the lock {runtime_dir / paths.PIDFILE} but does not answer and wrote no pid; "
            f"find it with 'fuser {runtime_dir / paths.PIDFILE}'")
    click.echo(f"tagentd: pid {pid} did not answer the stop request on {runtime_dir / paths.CONTROL_SOCKET}; "
               f"sending it SIGTERM", err=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _wait_for_exit(runtime_dir: Path, pid: int | None, began: float, deadline: float, watch: StopWatch) -> None:
    while is_locked(runtime_dir) or (pid is not None and pid_alive(pid)):
        if time.monotonic() >= deadline:
            raise RequestTimeout(
                f"tagentd (pid {pid}) is still running {time.monotonic() - began:.0f} s after the stop request; "
                f"stop it at once with 'tagentd stop --fast', or 'kill {pid}'", pid=pid)
        watch.look()
        time.sleep(EXIT_POLL)
