"""Failpoints: faults a test can switch on in a real daemon, where the real fault needs root.

Every failpoint is off unless an environment variable names it when the daemon starts (read
once, at import); nothing else can turn one on. docs/checkpoints.md lists them.

- `TAGENTD_FAILPOINT_DISK_FULL=<flag file>`: while `<flag file>` exists, every write of the
  durable stores (a WAL segment append, a snapshot or `watch-seen.bin` replacement) fails with
  ENOSPC, as on a full disk — after the file was opened, where a real full disk fails too.
  Creating and deleting the flag file fills and frees the "disk" of a running daemon.
- `TAGENTD_FAILPOINT_SLOW_FSYNC=<flag file>`: while `<flag file>` exists, every fsync of a WAL
  append first waits as many seconds as the file says (a number; empty: 1), as on a slow or
  busy disk — in the log's fsync thread, after the batch was written, where a real slow fsync
  spends its time.
- `TAGENTD_FAILPOINT_FSYNC_FAILS=<flag file>`: when a WAL fsync finds `<flag file>`, it deletes it
  and fails with EIO (after the slow-fsync wait), as a disk that reports a write error once:
  each creation of the file fails exactly one fsync (Linux reports a writeback error once, and a
  later fsync of the same file may then succeed although the data is lost).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

DISK_FULL_ENV = "TAGENTD_FAILPOINT_DISK_FULL"
SLOW_FSYNC_ENV = "TAGENTD_FAILPOINT_SLOW_FSYNC"
FSYNC_FAILS_ENV = "TAGENTD_FAILPOINT_FSYNC_FAILS"

_disk_full_flag = os.environ.get(DISK_FULL_ENV) or None
_slow_fsync_flag = os.environ.get(SLOW_FSYNC_ENV) or None
_fsync_fails_flag = os.environ.get(FSYNC_FAILS_ENV) or None


def check_disk_space(path: object) -> None:
    """Raise OSError(ENOSPC) for `path` while the disk-full failpoint is on and its flag file exists."""
    if _disk_full_flag is not None and os.path.exists(_disk_full_flag):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fsync_delay() -> None:
    """Wait before a WAL fsync while the slow-fsync failpoint is on and its flag file exists."""
    if _slow_fsync_flag is None:
        return
    try:
        text = Path(_slow_fsync_flag).read_text().strip()
    except OSError:
        return  # no flag file: the disk is fast again
    time.sleep(float(text or 1))


def fsync_fault() -> None:
    """Raise OSError(EIO) once per creation of the fsync-fails flag file (deleting it), while that failpoint is on."""
    if _fsync_fails_flag is None:
        return
    try:
        os.unlink(_fsync_fails_flag)
    except OSError:
        return  # no flag file: the disk is healthy
    raise OSError(errno.EIO, os.strerror(errno.EIO), "fsync (failpoint)")
