"""Where the daemon's sockets and state live, and the ownership rules for them.

Runtime dir: $TAGENTD_RUNTIME_DIR, else $XDG_RUNTIME_DIR/tagentd, else /tmp/tagentd-$UID.
State dir:   $TAGENTD_STATE_DIR, else $XDG_STATE_HOME/tagentd, else ~/.local/state/tagentd.
Both are the owner's alone: mode 0700, owned by the current user.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import ConfigError, DiskFull, TagentError

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"
WORKERS_SOCKET = "workers.sock"
PIDFILE = "tagentd.pid"
WEB_FILE = "web.json"      # runtime dir: where the dashboard listens ({"url", "token_file", "pid"}), 0600
WEB_TOKEN = "web-token"    # state dir: the dashboard's login token, 0600, kept across restarts


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
    """Create `path` (mode 0700, parents as needed) if missing, then check it is private to us and writable."""
    if not path.exists():
        old = os.umask(0o077)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {what} {path}: {exc.strerror}; check the parent's permissions") from None
        finally:
            os.umask(old)
    check_private_dir(path, what)
    check_writable_dir(path, what)
    return path


def check_writable_dir(path: Path, what: str) -> None:
    """Raise ConfigError (DiskFull if it is full) unless a file can be created in `path` and take a byte.

    A probe file is created, written and removed: it is the only check that sees a read-only mount, a
    read-only bind or an ACL as the kernel does, for root too; the byte sees a full file system, where
    an empty file can still be created.
    """
    probe = path / f".tagentd-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise unwritable(path, what, exc) from None


def unwritable(path: Path, what: str, exc: OSError) -> TagentError:
    """The one-line error for a dir the daemon cannot write in: DiskFull if it is full, else ConfigError."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what} {path} is full ({exc.strerror}); free space in {path}")
    elsewhere = f"point TAGENTD_{what.split()[0].upper()}_DIR elsewhere"
    if exc.errno == errno.EROFS:
        fix = f"remount it read-write or {elsewhere}"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = f"run 'chmod 700 {path}' or {elsewhere}"
    else:
        fix = f"check the disk (dmesg) or {elsewhere}"
    return ConfigError(f"{what} {path} is not writable ({exc.strerror}); {fix}")


def read_web_file(directory: Path) -> dict[str, object] | None:
    """What the dashboard wrote to `directory`/web.json (`url`, `port`, `token_file`, `pid`), or None when it is
    not there or unreadable (no dashboard, or one that is starting again)."""
    import json

    try:
        data = json.loads((directory / WEB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("url"), str) else None
