"""`Spawner`: starts the pool's worker processes, forked from a warm template (tagentd.executor.template) when it can.

A worker forked from the template starts with the agent runtime already imported (shared copy-on-write), so
its first agent step does not wait seconds for pydantic-ai; a replacement worker is as warm as the first.

Guarantees:
- `spawn` never blocks the daemon's loop for long: it returns None while the template is still importing (the
  pool asks again on its next tick) and waits at most FORK_TIMEOUT for a fork (then the template is replaced);
- every process it returns has subprocess.Popen's `pid`, `poll`, `kill`, `terminate` and `wait`, and `poll`
  gives the exit status (-N for signal N) once the process has ended. A forked worker is signalled through its
  pidfd, so a recycled pid is never hit;
- the template dies with the daemon and its workers with the template (tagentd.executor.template); if the template dies
  anyway (killed, out of memory), its workers are reported ended and the next spawn starts a new template;
- if TEMPLATE_ATTEMPTS templates in a row end without forking a worker, or fork/SOCK_SEQPACKET are missing,
  workers are started as `python -m tagentd.worker` processes instead (they import the agent runtime themselves
  when they first meet an agent step), and the daemon says so in its log.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Protocol

from tagentd.executor import template
from tagentd.worker import wire
from tagentd.worker.credentials import CURVE_ENV, WorkerCredentials

log = logging.getLogger("tagentd.spawner")

FORK_TIMEOUT = 5.0             # a ready template answers a fork in milliseconds
TEMPLATE_READY_TIMEOUT = 90.0  # imports take 1-2 s on an idle machine, several on a loaded one
TEMPLATE_ATTEMPTS = 3          # template starts that may fail in a row before falling back to exec'd workers
TEMPLATE_RESTART_DELAY = 1.0   # between two starts of the template


class WorkerProcess(Protocol):
    """What the pool needs of a worker process (subprocess.Popen has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def terminate(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ProcessStarter(Protocol):
    """What the pool needs of a spawner (`Spawner` is the real one; tests give a fake)."""

    def start(self) -> None: ...

    def spawn(self, argv: list[str]) -> WorkerProcess | None: ...

    def close(self) -> None: ...


class ForkedWorker:
    """A worker the template forked: not this process's child, so its exit status comes from the template."""

    def __init__(self, template_process: TemplateProcess, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._template = template_process
        self._pidfd = pidfd

    def poll(self) -> int | None:
        if self.returncode is None:
            self._template.drain()
        if self.returncode is None and not self._template.alive and self._gone():
            self.ended(-signal.SIGKILL)  # the template died first: the kernel killed its workers (PDEATHSIG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = 0.5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(f"tagentd-w (pid {self.pid})", timeout or 0.0)
            # the exit is reported on the template's socket; with the template gone, the pidfd tells
            _readable(self._template.sock.fileno() if self._template.alive else self._pidfd, min(remaining, 0.5))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def ended(self, code: int) -> None:
        self.returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _gone(self) -> bool:
        if self._pidfd is not None:
            return _readable(self._pidfd, 0)  # a pidfd reads ready once its process has ended
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False


class TemplateProcess:
    """One run of `python -m tagentd.executor.template`: its process, its control socket, and the workers it forked."""

    def __init__(self, *, log_file: int | None, secrets: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-m", "tagentd.executor.template", "--parent-pid", str(os.getpid()),
                    "--control-fd", str(theirs.fileno())]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file or subprocess.DEVNULL,
                                         stderr=log_file or subprocess.DEVNULL, close_fds=True,
                                         pass_fds=(theirs.fileno(),), env={**os.environ, **secrets})
        finally:
            theirs.close()
        ours.setblocking(False)  # waits go through poll(2) with a deadline; never a blocking read on the loop
        self.sock = ours
        self.started = time.monotonic()
        self.ready: template.Ready | None = None
        self.alive = True
        self.children: dict[int, ForkedWorker] = {}
        self.forked = 0
        self._reqs = itertools.count(1)
        log.info("worker template started (pid %d)", self.proc.pid)

    def drain(self) -> None:
        """Take every report the template has sent (readiness, exits), without waiting."""
        while self.alive:
            received = self._receive()
            if received is None:
                return
            self._handle(*received)

    def fork(self, argv: list[str]) -> ForkedWorker | None:
        """A new worker running `tagentd.worker` with `argv`; None if the template failed to fork one."""
        req = next(self._reqs)
        try:
            self.sock.send(template.encode(template.Fork(req=req, argv=argv)))
        except OSError:
            self.died("its control socket is closed")
            return None
        deadline = time.monotonic() + FORK_TIMEOUT
        while self.alive and time.monotonic() < deadline:
            if not _readable(self.sock.fileno(), deadline - time.monotonic()):
                continue
            received = self._receive()
            if received is None:
                continue
            message, fds = received
            if isinstance(message, template.Forked) and message.req == req:
                child = ForkedWorker(self, message.pid, fds[0] if fds else None)
                self.children[message.pid] = child
                self.forked += 1
                return child
            if isinstance(message, template.ForkFailed) and message.req == req:
                self.kill(f"it could not fork a worker: {message.error}")
                return None
            self._handle(message, fds)
        if self.alive:
            self.kill(f"it did not fork a worker within {FORK_TIMEOUT:g}s")
        return None

    def kill(self, why: str) -> None:
        log.error("killing the worker template (pid %d): %s", self.proc.pid, why)
        self.proc.kill()
        self.died(why)

    def close(self) -> None:
        """Stop the template (it exits when its control socket closes; its remaining workers die with it).

        A template still importing has forked nothing and would notice the closed socket only once its imports
        are done (a second or more): it is terminated instead, so a stop right after a start is as quick."""
        if self.alive:
            self.alive = False
            self.sock.close()
            if self.ready is None and not self.forked:
                self.proc.terminate()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=2)

    def died(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.sock.close()
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=2)
        log.log(logging.INFO if self.ready is None and code == 0 else logging.WARNING,
                "the worker template (pid %d) ended (exit status %s, %s); %d worker(s) forked from it end too",
                self.proc.pid, code, why, len(self.children))

    # -- the socket ------------------------------------------------------------------------------

    def _receive(self) -> tuple[template.FromTemplate, list[int]] | None:
        try:
            packet, fds, _flags, _addr = socket.recv_fds(self.sock, template.MAX_PACKET, 1)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.died(f"control socket: {exc}")
            return None
        if not packet:
            for fd in fds:
                os.close(fd)
            self.died("it closed its control socket")
            return None
        return template.from_template.decode(packet), fds

    def _handle(self, message: template.FromTemplate, fds: list[int]) -> None:
        if isinstance(message, template.Ready):
            self.ready = message
            log.info("worker template (pid %d) warm after %.2fs of imports (agent runtime %s)", message.pid,
                     message.import_s, "imported" if message.agent_runtime else "unavailable")
        elif isinstance(message, template.Exited):
            child = self.children.pop(message.pid, None)
            if child is not None:
                child.ended(message.code)
        elif isinstance(message, template.Forked):  # a fork we gave up waiting for: it must not live on
            late = ForkedWorker(self, message.pid, fds.pop() if fds else None)
            late.kill()
            late.ended(-signal.SIGKILL)
            log.warning("killed worker pid %d: its fork was reported too late", message.pid)
        for fd in fds:
            os.close(fd)


def _readable(fd: int | None, timeout: float) -> bool:
    """Whether `fd` becomes readable within `timeout` seconds (poll(2): no FD_SETSIZE limit, unlike select)."""
    if fd is None:  # nothing to watch (no pidfds on this kernel): the caller polls
        time.sleep(min(max(0.0, timeout), 0.02))  # ok-sleep: a poll interval, not a wait for something
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class Spawner:
    """Starts workers for one pool: from the template while it works, as separate processes otherwise."""

    def __init__(self, *, log_file: int | None, token: str, stats: collections.Counter[str],
                 use_template: bool = True, credentials: WorkerCredentials | None = None) -> None:
        self.log_file = log_file
        # what each worker finds in its environment (and removes): the token, and the CURVE keys if it joins over tcp
        self.secrets = {wire.TOKEN_ENV: token, **({CURVE_ENV: credentials.to_env()} if credentials else {})}
        self.stats = stats
        self.use_template = use_template and hasattr(os, "fork") and hasattr(socket, "SOCK_SEQPACKET")
        self.template: TemplateProcess | None = None
        self._failures = 0
        self._last_start = 0.0

    def start(self) -> None:
        """Start the template now, so that it warms up while the daemon does the rest of its start."""
        if self.use_template and self.template is None:
            self._start_template()

    def spawn(self, argv: list[str]) -> WorkerProcess | None:
        """A new worker process running `tagentd.worker` with `argv` (--parent-pid is added); None: not now."""
        if not self.use_template:
            return self._exec(argv)
        current = self.template
        if current is not None:
            current.drain()
            if current.alive and current.ready is None:
                if time.monotonic() - current.started < TEMPLATE_READY_TIMEOUT:
                    return None
                current.kill(f"its imports took longer than {TEMPLATE_READY_TIMEOUT:g}s")
            if not current.alive:  # a template that forked workers worked; one that never did failed
                self._failures = 0 if current.forked else self._failures + 1
                self.template = current = None
        if current is None:
            if self._failures >= TEMPLATE_ATTEMPTS:
                log.error("the worker template failed %d times in a row; starting workers without it (their "
                          "first agent step will import the agent runtime)", self._failures)
                self.use_template = False
                return self._exec(argv)
            if time.monotonic() - self._last_start >= TEMPLATE_RESTART_DELAY:
                self._start_template()
            return None
        child = current.fork(argv)
        if child is not None:
            self.stats["workers_forked"] += 1
        return child

    def close(self) -> None:
        if self.template is not None:
            self.template.close()
            self.template = None

    def _start_template(self) -> None:
        self._last_start = time.monotonic()
        self.template = TemplateProcess(log_file=self.log_file, secrets=self.secrets)
        self.stats["templates_started"] += 1

    def _exec(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self.stats["workers_execd"] += 1
        return subprocess.Popen([sys.executable, "-m", "tagentd.worker", *argv, "--parent-pid", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=self.log_file or subprocess.DEVNULL,
                                stderr=self.log_file or subprocess.DEVNULL, close_fds=True,
                                env={**os.environ, **self.secrets})
