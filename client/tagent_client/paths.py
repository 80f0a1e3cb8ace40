"""Where the daemon's sockets and state live, and the ownership rules for them.

Runtime dir: $TAGENTD_RUNTIME_DIR, else $XDG_RUNTIME_DIR/tagentd, else /tmp/tagentd-$UID.
State dir:   $TAGENTD_STATE_DIR, else $XDG_STATE_HOME/tagentd, else ~/.local/state/tagentd.
Both are the owner's alone: mode 0700, owned by the current user.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"
WORKERS_SOCKET = "workers.sock"
PIDFILE = "tagentd.pid"


def runtime_dir() -> Path:
    if os.environ.get("TAGENTD_RUNTIME_DIR"):
        return Path(os.environ["TAGENTD_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "tagentd"
    return Path(f"/tmp/tagentd-{os.getuid()}")


def state_dir() -> Path:
    if os.environ.get("TAGENTD_STATE_DIR"):
        return Path(os.environ["TAGENTD_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tagentd"


def endpoint(directory: Path, name: str) -> str:
    """The ipc:// endpoint of socket `name` in `directory`."""
    return f"ipc://{directory / name}"


def check_private_dir(path: Path, what: str) -> None:
    """Raise ConfigError unless `path` is a directory owned by us and not group/other accessible."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {path} is not a directory; remove it or point TAGENTD_{what.split()[0].upper()}_DIR elsewhere")
    if info.st_uid != os.getuid():
        raise ConfigError(f"{what} {path} is owned by uid {info.st_uid}, not you (uid {os.getuid()}); refusing to use it")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{what} {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be private: run 'chmod 700 {path}'"
        )


def ensure_private_dir(path: Path, what: str) -> Path:
    """Create `path` (mode 0700, parents as needed) if missing, then check it is private to us."""
    if not path.exists():
        old = os.umask(0o077)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {what} {path}: {exc.strerror}; check the parent's permissions") from None
        finally:
            os.umask(old)
    check_private_dir(path, what)
    return path
