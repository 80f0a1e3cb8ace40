"""Failpoints: faults a test can switch on in a real daemon, where the real fault needs root.

Every failpoint is off unless an environment variable names it when the daemon starts (read
once, at import); nothing else can turn one on. docs/checkpoints.md lists them.

- `TAGENTD_FAILPOINT_DISK_FULL=<flag file>`: while `<flag file>` exists, every write of the
  durable stores (a WAL segment append, a snapshot or `watch-seen.bin` replacement) fails with
  ENOSPC, as on a full disk — after the file was opened, where a real full disk fails too.
  Creating and deleting the flag file fills and frees the "disk" of a running daemon.
"""

from __future__ import annotations

import errno
import os

DISK_FULL_ENV = "TAGENTD_FAILPOINT_DISK_FULL"

_disk_full_flag = os.environ.get(DISK_FULL_ENV) or None


def check_disk_space(path: object) -> None:
    """Raise OSError(ENOSPC) for `path` while the disk-full failpoint is on and its flag file exists."""
    if _disk_full_flag is not None and os.path.exists(_disk_full_flag):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
