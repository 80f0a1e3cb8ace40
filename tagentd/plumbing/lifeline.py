"""A child process's tie to its parent: die with it, and a name that says what it is.

Used by the worker template, every worker and the dashboard process, first thing after they start (stdlib only, so it
costs nothing to import before anything else).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

#: Exit status of a process whose parent was already gone when it armed its death signal (= wire.EXIT_LOST_DAEMON).
EXIT_ORPHANED = 71


def _prctl(option: int, arg: int | bytes) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, log: logging.Logger) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux: PR_SET_PDEATHSIG), then make sure the
    parent is still `parent_pid`: if it died before the signal was armed, this process was re-parented and
    nothing would ever kill it, so it exits now with EXIT_ORPHANED.

    The signal fires when the parent *thread* that created this process ends: parents must spawn from a thread
    that lives as long as they do (the daemon's and the template's main thread).
    """
    if not _prctl(PR_SET_PDEATHSIG, signal.SIGKILL):
        log.warning("PR_SET_PDEATHSIG unavailable; relying on the parent-pid check")
    if os.getppid() != parent_pid:
        log.error("the process that started this one (pid %d) is gone; exiting with status %d", parent_pid,
                  EXIT_ORPHANED)
        sys.stderr.flush()
        os._exit(EXIT_ORPHANED)


def set_name(name: str) -> None:
    """Name this process in ps/top and /proc/PID/comm (Linux, at most 15 bytes); a no-op elsewhere."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc malloc_trim), e.g. before forking; a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass
