"""`StoreHealth`: whether the daemon's commits reach the state dir, and what to tell requests while they do not.

The daemon sends a reply only after the commit that makes what it reports durable. When a
commit fails (a full disk, a file system remounted read-only, an I/O error) the daemon keeps
the changes in memory, holds the replies and events that wait for them, and retries every
`RETRY_S`; this object says so meanwhile:

- `commit_failed` / `commit_succeeded` mark the start and end of an outage (each logged once,
  not at every retry);
- `refusal()` is the error a request that needs a commit gets at once while it lasts:
  `DiskFull` for ENOSPC / EDQUOT, else `ConfigError` (the state dir is not writable), else a
  plain TagentError — one line that names the state dir and what to do;
- `problem()` is the line `tagentd status` shows (`stats.state_dir_problem`).
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

from tagent_client.errors import ConfigError, DiskFull, TagentError

log = logging.getLogger("tagentd")

RETRY_S = 0.5
FULL = (errno.ENOSPC, errno.EDQUOT)


class StoreHealth:
    """The state of the daemon's commits: healthy, or failing since `since` with `error`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.error: BaseException | None = None
        self.since: float | None = None
        self.failed_commits = 0

    @property
    def failing(self) -> bool:
        return self.error is not None

    def commit_failed(self, exc: BaseException) -> None:
        """A commit raised `exc`: start (or go on with) an outage; logged when it starts or its cause changes."""
        new = self.error is None or _kind(exc) != _kind(self.error)
        self.error = exc
        self.failed_commits += 1
        if self.since is None:
            self.since = time.time()
        if new:  # an OSError says it all; anything else is a bug: its traceback goes to the log
            log.error("cannot write to the state dir %s: %s; replies and events wait, requests that need a commit "
                      "are refused, retrying every %g s", self.state_dir, self._cause(), RETRY_S,
                      exc_info=None if isinstance(exc, OSError) else exc)

    def commit_succeeded(self) -> None:
        """A commit reached the disk: end the outage, if there was one."""
        if self.error is None:
            return
        log.warning("the state dir is writable again after %.1f s (%d failed commits); held replies and events sent",
                    time.time() - (self.since or time.time()), self.failed_commits)
        self.error, self.since, self.failed_commits = None, None, 0

    def refusal(self) -> TagentError:
        """The error for a request that needs a commit while commits fail."""
        d, cause = self.state_dir, self._cause()
        retry = "the daemon retries on its own and resumes as soon as it can write again"
        if _kind(self.error) in FULL:
            return DiskFull(f"the state dir {d} is full ({cause}): nothing can be saved, so this request was refused; "
                            f"free space in {d} ({retry})", state_dir=str(d))
        if isinstance(self.error, OSError):
            return ConfigError(f"the state dir {d} cannot be written ({cause}), so this request was refused; make "
                               f"it writable again ({retry})", state_dir=str(d))
        return TagentError(f"the daemon cannot save its state ({cause}), so this request was refused; see the "
                           f"log {d / 'tagentd.log'}", state_dir=str(d))

    def problem(self) -> str | None:
        """One line for `tagentd status` while commits fail, else None."""
        if self.error is None:
            return None
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        fix = f"free space in {self.state_dir}" if _kind(self.error) in FULL else "make it writable again"
        return (f"{'full' if _kind(self.error) in FULL else 'not writable'} since {when} ({self._cause()}, "
                f"{self.failed_commits} commits failed): nothing new is saved; {fix} (the daemon resumes by itself)")

    def _cause(self) -> str:
        exc = self.error
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        return repr(exc)


def _kind(exc: BaseException | None) -> object:
    """What makes two failures the same outage: the errno of an OSError, else the exception type."""
    return exc.errno if isinstance(exc, OSError) else type(exc)
