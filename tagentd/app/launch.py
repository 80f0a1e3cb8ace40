"""The daemon's start: claim the runtime dir, answer pings, then load and run the rest (daemon.py).

`tagentd start --foreground` comes here with its settings. In order:

1. the runtime and state dirs are made or checked (private, writable), the instance lock taken (one daemon
   per runtime dir), the log opened, the watched folders checked (the configuration errors a start can meet
   come before anything answers);
2. control.sock is bound and a porter (tagentd/control/porter.py) answers pings on it from its own thread;
3. the rest is imported and built while the porter answers — the engine, the stores and their recovery, the
   broker, the executor: about two thirds of the start-up — and the daemon runs (daemon.py), first answering
   what the porter held. After its first answer the daemon starts its workers, the folder watcher and the
   metrics registry (daemon.py).

So a ping is answered within the time of step 1 and 2 (the interpreter, click, the settings, ZeroMQ, msgspec
and the protocol); every other request waits for step 3, as it would have waited for the socket before. A
start that fails in step 3 answers the requests it held with its error (porter.fail), removes its socket
files and exits as before.
This module imports nothing heavy itself: importing it must not undo the point.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq

from tagent_client.wire import paths
from tagentd.control.porter import Porter, control_socket
from tagentd.plumbing.lock import InstanceLock
from tagentd.settings.config import LOG_FILE, Settings
from tagentd.watch.rules import watch_folders

SOCKETS = (paths.CONTROL_SOCKET, paths.EVENTS_SOCKET, paths.WORKERS_SOCKET)


def serve(settings: Settings, *, foreground_log: bool = True) -> int:
    """Run a daemon until it is stopped; returns the process exit code. Raises TagentError on bad setup."""
    runtime_dir = paths.ensure_private_dir(Path(settings.runtime_dir), "runtime dir")
    state_dir = paths.ensure_private_dir(Path(settings.state_dir), "state dir")
    lock = InstanceLock(runtime_dir)
    try:
        try:
            log_fd = setup_logging(state_dir, settings.log_level, foreground_log)
        except OSError as exc:  # a file of the state dir we may not write (the dir itself was checked)
            raise paths.unwritable(state_dir, "state dir", exc) from None
        folders = watch_folders(settings.watch_dirs)  # ConfigError: refuse to start, before anything answers
        zctx = zmq.Context()
        porter: Porter | None = None
        try:
            porter = open_door(zctx, runtime_dir, settings)
            from tagentd.app import daemon  # noqa: PLC0415 - the rest of the start, while the porter answers pings

            return daemon.serve(settings, folders, zctx, porter, log_fd)
        except BaseException as exc:
            if porter is not None:
                porter.fail(exc)  # a client waiting on a held request hears why (nothing once handed over)
            zctx.destroy(linger=0)  # left to the garbage collector, term() could wait forever on a queued message
            for name in SOCKETS:  # no socket file of a daemon that is not there (they are ours: we hold the lock)
                (runtime_dir / name).unlink(missing_ok=True)
            raise
    finally:
        lock.close()


def open_door(zctx: zmq.Context, runtime_dir: Path, settings: Settings) -> Porter:
    """Bind control.sock (0600, replacing a dead daemon's sockets) and start its porter."""
    for name in SOCKETS:
        stale = runtime_dir / name
        if stale.exists() or stale.is_symlink():
            stale.unlink()
    (runtime_dir / paths.WEB_FILE).unlink(missing_ok=True)  # a dashboard of a daemon that died
    old = os.umask(0o177)
    try:
        sock = control_socket(zctx, paths.endpoint(runtime_dir, paths.CONTROL_SOCKET), settings.max_message_bytes)
    finally:
        os.umask(old)
    os.chmod(runtime_dir / paths.CONTROL_SOCKET, 0o600)
    porter = Porter(sock, max_bytes=settings.max_message_bytes, load_timeout=settings.load_timeout)
    porter.start()
    return porter


def setup_logging(state_dir: Path, level: str, foreground: bool) -> int:
    """Log to state_dir/tagentd.log (and stderr in the foreground); returns the log file's fd for workers."""
    handlers: list[logging.Handler] = []
    log_path = state_dir / LOG_FILE
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    handlers.append(file_handler)
    if foreground:
        handlers.append(logging.StreamHandler())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level.upper())
    os.chmod(log_path, 0o600)
    return file_handler.stream.fileno()
