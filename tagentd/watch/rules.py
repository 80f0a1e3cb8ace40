"""What the folder watcher accepts, and when a dropped file counts as complete: pure rules, no threads.

- `watchable(name)`: pipeline files are `*.py`, `*.toml` and `*.json`; hidden files, editor temp and
  backup files and `_`-prefixed helper modules are not.
- `folder_problem` / `file_problem`: files in a watched folder are code the daemon runs, so a folder
  or file that anyone but the daemon's user could have written is refused, with a one-line reason.
- `watch_folders`: which folders to watch (the configured ones, else the default), created if missing;
  a configured folder that is unsafe stops the daemon from starting (ConfigError).
- `Debouncer`: turns a storm of file-system events into one "settled" verdict per path, once the
  file is complete. It takes the time and a stat function as arguments, so tests drive it without
  processes or sleeps.

Nothing here imports watchdog, so `tagentd start` can check folders on the user's terminal cheaply.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tagent_client.errors import ConfigError

SUFFIXES = (".py", ".toml", ".json")
TEMP_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".part", ".bak", ".orig", ".crdownload")
MAX_FILE_BYTES = 4 * 1024 * 1024

# What happened to a path, as far as the watcher cares (see watcher.classify).
CREATED = "created"      # a new file, opened by a writer that has not closed it yet
MODIFIED = "modified"    # written to
CLOSED = "closed"        # a writer closed it
MOVED_IN = "moved_in"    # renamed into place: complete by construction
GONE = "gone"            # deleted or renamed away (it may come back before it settles)
TOUCHED = "touched"      # metadata changed (chmod, touch): check it again, nobody is writing
SCAN = "scan"            # found by a rescan, not by an event

#: (size, mtime_ns, ctime_ns, inode, device) of a file, or None when there is no file.
Probe = tuple[int, int, int, int, int] | None


def watchable(name: str) -> bool:
    """True for a pipeline file's name; False for hidden, temp, backup and `_helper` files."""
    if not name or name.startswith((".", "_", "#")) or name.lower().endswith(TEMP_SUFFIXES):
        return False
    return os.path.splitext(name)[1].lower() in SUFFIXES


def hidden_dir(name: str) -> bool:
    """A subfolder a recursive watch skips: hidden ones and `__pycache__`-style ones."""
    return name.startswith((".", "_"))


def probe(path: str) -> Probe:
    """The file's identity and size now (following a symlink), or None if there is none."""
    try:
        return stat_probe(os.stat(path))
    except OSError:
        return None


def stat_probe(st: os.stat_result) -> Probe:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def folder_problem(path: Path, uid: int | None = None) -> str | None:
    """Why `path` must not be watched (one line), or None when it is safe: ours, and nobody else can write it."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"watch folder {path} does not exist"
    except OSError as exc:
        return f"cannot read watch folder {path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"watch folder {path} is not a directory"
    if st.st_uid != uid:
        return (f"watch folder {path} is owned by uid {st.st_uid}, not you (uid {uid}); files in it are code "
                f"tagentd would run, so it is not watched: watch a folder of your own")
    if st.st_mode & 0o022:
        return (f"watch folder {path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); files "
                f"in it are code tagentd would run, so it is not watched: run 'chmod go-w {path}'")
    return None


def file_problem(st: os.stat_result, uid: int | None = None) -> str | None:
    """Why a file (stat of the opened file) is skipped, or None: it must be a regular file of ours nobody else can write."""
    uid = os.getuid() if uid is None else uid
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not you (uid {uid}); files are code, so only your own are run"
    if st.st_mode & 0o022:
        return f"writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod go-w' on it"
    if st.st_size > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB ({st.st_size} bytes)"
    return None


def default_watch_dir() -> Path:
    """$XDG_DATA_HOME/tagentd/pipelines, else ~/.local/share/tagentd/pipelines."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tagentd" / "pipelines"


@dataclass
class FolderSpec:
    """A folder to watch; `problem` set means it is unsafe and is not watched until it is fixed."""

    path: Path
    explicit: bool
    problem: str | None = None


def watch_folders(configured: list[Path]) -> list[FolderSpec]:
    """The folders to watch, each created (0700) if missing.

    Configured folders must be safe: ConfigError otherwise (the daemon does not start). The default
    folder is only reported: the daemon starts without it and watches it once it is fixed.
    """
    explicit = bool(configured)
    folders = []
    for path in dict.fromkeys(configured or [default_watch_dir()]):
        problem = _create(path) or folder_problem(path)
        if problem and explicit:
            raise ConfigError(f"{problem} (from watch_dirs / --watch)")
        folders.append(FolderSpec(path, explicit, problem))
    return folders


def _create(path: Path) -> str | None:
    if path.exists():
        return None
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create watch folder {path}: {exc.strerror}"
    finally:
        os.umask(old)
    return None


# -- settling -------------------------------------------------------------------------------------------------

_UNPROBED: Probe = (-1, -1, -1, -1, -1)


@dataclass
class _Pending:
    last: float                # time of the latest event
    writing: bool = False      # written to, and no close seen since
    moved_in: bool = False     # renamed into place since the latest write
    probe: Probe = _UNPROBED   # what the previous check saw
    probed_at: float = 0.0


class Debouncer:
    """When a path has settled: `quiet` seconds without events, then complete.

    Complete means: nobody is writing it (every write was followed by a close; a writer silent for
    `stall` seconds counts as done), and its size, times and inode were the same at two checks
    `recheck` seconds apart — or it was moved in by a rename, which needs one check. A path that is
    gone at its check has settled too: the caller decides what a deletion means. Any event resets
    the path's clock, so a save storm becomes one verdict.
    """

    def __init__(self, quiet: float = 0.2, recheck: float = 0.15, stall: float = 2.0) -> None:
        self.quiet = quiet
        self.recheck = recheck
        self.stall = stall
        self._pending: dict[str, _Pending] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def paths(self) -> list[str]:
        return list(self._pending)

    def note(self, path: str, kind: str, now: float) -> None:
        """Record one event (CREATED, MODIFIED, CLOSED, MOVED_IN, GONE, TOUCHED or SCAN) on `path`."""
        entry = self._pending.get(path)
        if entry is None:
            entry = self._pending[path] = _Pending(last=now)
        entry.last = now
        entry.probe = _UNPROBED
        if kind in (CREATED, MODIFIED):
            entry.writing, entry.moved_in = True, False
        elif kind == CLOSED:
            entry.writing = False
        elif kind == MOVED_IN:
            entry.writing, entry.moved_in = False, True
        elif kind == GONE:
            entry.writing, entry.moved_in = False, False

    def forget(self, path: str) -> None:
        self._pending.pop(path, None)

    def next_due(self) -> float | None:
        """The earliest time `due` may settle something (None: nothing pending)."""
        times = [self._ready_at(entry) for entry in self._pending.values()]
        return min(times) if times else None

    def _ready_at(self, entry: _Pending) -> float:
        at = entry.last + (self.stall if entry.writing else self.quiet)
        if entry.probe != _UNPROBED:
            at = max(at, entry.probed_at + self.recheck)
        return at

    def due(self, now: float, check: Callable[[str], Probe] = probe) -> list[str]:
        """Paths that settled by `now` (forgotten here); checks the others that are due and keeps them."""
        settled = []
        for path, entry in list(self._pending.items()):
            if now < self._ready_at(entry):
                continue
            seen = check(path)
            if seen is None or seen == entry.probe or entry.moved_in:
                del self._pending[path]
                settled.append(path)
            else:
                entry.probe, entry.probed_at = seen, now
        return settled
