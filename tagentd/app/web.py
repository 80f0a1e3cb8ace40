"""`WebSupervisor`: the dashboard's process (`python -m tagentd.web`), started, kept alive and stopped by the daemon.

The daemon itself serves no HTTP: the dashboard is a client of its sockets in a process of its own. Guarantees:
- it is started once the daemon's sockets answer (after `ControlServer.start`), with the daemon's runtime and
  state dirs and `web_host`/`web_port`; its output goes to the daemon's log;
- it dies with the daemon (its lifeline: PR_SET_PDEATHSIG), and a stop ends it (SIGTERM, then SIGKILL after
  STOP_GRACE seconds) before the daemon exits: no process is left behind;
- when it dies it is started again after a delay that doubles from BACKOFF_MIN to BACKOFF_MAX, and drops back
  to BACKOFF_MIN once a process has lived STABLE_AFTER seconds; it keeps the port its first process got
  (a bookmark keeps working) unless that port cannot be had again;
- `info()` says whether it runs, its pid, address and restarts (`tagentd status`, `tagent ui`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tagent_client.wire import paths
from tagentd.settings.config import Settings

log = logging.getLogger("tagentd.web")

POLL = 0.25          # seconds between two looks at the process
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a process that lived this long resets the backoff
STOP_GRACE = 3.0


class WebSupervisor:
    """Runs the dashboard's process for the daemon's lifetime; `run()` is a daemon task, `stop()` ends it."""

    def __init__(self, settings: Settings, log_fd: int | None) -> None:
        self.settings = settings
        self.runtime_dir = Path(settings.runtime_dir)
        self.log_fd = log_fd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.port = settings.web_port
        self._stopping = False

    def argv(self, port: int) -> list[str]:
        s = self.settings
        return [sys.executable, "-m", "tagentd.web", "--runtime-dir", str(s.runtime_dir), "--state-dir",
                str(s.state_dir), "--host", s.web_host, "--port", str(port), "--parent-pid", str(os.getpid()),
                "--log-level", s.log_level]

    async def run(self) -> None:
        delay = BACKOFF_MIN
        port = self.port
        while not self._stopping:
            started = time.monotonic()
            out = self.log_fd if self.log_fd is not None else subprocess.DEVNULL
            # Started from the loop's (main) thread, which lives as long as the daemon: the lifeline's death signal
            # is tied to the thread that forked.
            self.proc = subprocess.Popen(self.argv(port), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         close_fds=True)
            self.starts += 1
            wrote = False
            while self.proc.poll() is None:
                wrote = wrote or self._learn_port(self.proc.pid)
                await asyncio.sleep(POLL)
            if self._stopping:
                break
            wrote = wrote or self._learn_port(self.proc.pid)  # it may have died before we looked
            self._forget(self.proc.pid)
            lived = time.monotonic() - started
            if lived >= STABLE_AFTER:
                delay = BACKOFF_MIN
            port = self.port if wrote else self.settings.web_port  # a port it could not have again is given up
            log.warning("the dashboard (pid %d) exited with status %s after %.1f s; starting it again in %.1f s",
                        self.proc.pid, self.proc.returncode, lived, delay)
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)

    async def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after STOP_GRACE s) and start no other."""
        self._stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + STOP_GRACE
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._forget(proc.pid)

    def _learn_port(self, pid: int) -> bool:
        """Whether the process `pid` wrote web.json; if so, remember its port for the next start."""
        info = paths.read_web_file(self.runtime_dir)
        if info is None or info.get("pid") != pid:
            return False
        self.port = int(str(info.get("port") or 0))
        return True

    def _forget(self, pid: int) -> None:
        """Remove web.json if the process `pid` wrote it and could not (killed)."""
        info = paths.read_web_file(self.runtime_dir)
        if info is not None and info.get("pid") == pid:
            (self.runtime_dir / paths.WEB_FILE).unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        running = self.proc is not None and self.proc.poll() is None
        web = paths.read_web_file(self.runtime_dir) if running else None
        return {"enabled": True, "running": running, "pid": self.proc.pid if running and self.proc else None,
                "url": web.get("url") if web else None, "token_file": web.get("token_file") if web else None,
                "restarts": max(0, self.starts - 1)}
