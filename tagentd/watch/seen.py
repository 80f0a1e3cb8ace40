"""The folder watcher's durable memory: which (file path, content hash) it has started, and as which run.

It is what makes "the same content never starts twice" hold across daemon restarts. Two sources
are merged at start:

- `<state dir>/watch-seen.bin`: one framed msgpack `SeenRecord` (records.py framing: length and
  CRC-32 checked), replaced atomically (temp file, fsync, rename, fsync dir) after each start;
- the runs in the checkpoint store whose audit trail says the watcher started them.

The file is written only after the commit that made the run durable, so a crash in between leaves
the run in the store (and the store says the watcher started it): nothing starts twice, nothing is
lost. `started` is how: the entry takes part in the group commit (tagentd/app/commit.py) as a
`CommitParticipant` with nothing of its own to flush, and is remembered, then saved, only once
that commit has written the run (a failed commit keeps it for the next one). The file covers runs
that retention has since removed. It keeps the newest `MAX_ENTRIES`.
A corrupt file is moved to `corrupt/` and reported; one written by a newer tagentd is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec

from tagent_client.errors import ConfigError
from tagentd.plumbing.ports import MarkDirty
from tagentd.storage.records import CorruptRecord, read_single, write_atomic

log = logging.getLogger("tagentd.watcher")

FORMAT = 1
FILE_NAME = "watch-seen.bin"
MAX_ENTRIES = 10_000


class SeenEntry(msgspec.Struct, array_like=True):
    """One started file version: where, its sha256, the run it started, when."""

    path: str
    hash: str
    run_id: str
    at: float


class SeenRecord(msgspec.Struct, tag="seen", kw_only=True):
    format: int = FORMAT
    entries: list[SeenEntry] = []


_decoder = msgspec.msgpack.Decoder(SeenRecord)
_encoder = msgspec.msgpack.Encoder()
Starting = list[tuple[SeenEntry, "asyncio.Future[None]"]]


def _unwatched() -> None:
    return None


class SeenFiles:
    """(path, hash) → SeenEntry, oldest first; `save` makes it durable. A participant of the group commit."""

    def __init__(self, file: Path | None = None, mark_dirty: MarkDirty = _unwatched) -> None:
        self.file = file
        self.mark_dirty = mark_dirty
        self.problems: list[str] = []
        self._entries: dict[tuple[str, str], SeenEntry] = {}
        self._starting: Starting = []  # started runs whose commit has not yet written them
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, state_dir: Path, mark_dirty: MarkDirty = _unwatched) -> SeenFiles:
        """Read `state_dir/watch-seen.bin` (missing: empty). ConfigError if a newer tagentd wrote it."""
        seen = cls(state_dir / FILE_NAME, mark_dirty)
        path = seen.file
        assert path is not None
        try:
            record = _decoder.decode(read_single(path))
        except FileNotFoundError:
            return seen
        except (CorruptRecord, msgspec.DecodeError, msgspec.ValidationError, OSError) as exc:
            seen.problems.append(_move_aside(path, state_dir, str(exc)))
            return seen
        if record.format > FORMAT:
            raise ConfigError(f"{path} was written by a newer tagentd (format {record.format}, this one reads up to "
                              f"{FORMAT}); upgrade tagentd or move the file aside")
        for entry in record.entries:
            seen._entries[(entry.path, entry.hash)] = entry
        return seen

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, hash_: str) -> SeenEntry | None:
        return self._entries.get((path, hash_))

    def add(self, path: str, hash_: str, run_id: str, at: float | None = None) -> None:
        """Remember that this version of `path` started `run_id` (the first run wins; oldest entries drop out)."""
        key = (path, hash_)
        if key in self._entries:
            return
        self._entries[key] = SeenEntry(path, hash_, run_id, time.time() if at is None else at)
        while len(self._entries) > MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]

    def encode(self) -> bytes:
        return _encoder.encode(SeenRecord(entries=list(self._entries.values())))

    async def started(self, path: str, hash_: str, run_id: str, at: float) -> None:
        """Remember that this version of `path` started `run_id` once the next commit has written the run, then save.

        Returns after the save; OSError if the file could not be written (the entry is remembered all the same,
        and the run, in the checkpoint store, still says the watcher started it).
        """
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting.append((SeenEntry(path, hash_, run_id, at), written))
        self.mark_dirty()
        await written
        await self.save()

    # -- the group commit (CommitParticipant) -------------------------------------------------------

    def prepare(self) -> Starting:
        taken, self._starting = self._starting, []
        return taken

    def flush(self, token: Starting) -> None:
        return None  # the file is written after the commit, by `started`: only then is the run on disk

    def committed(self, token: Starting) -> None:
        for entry, written in token:
            self.add(entry.path, entry.hash, entry.run_id, entry.at)
            if not written.done():
                written.set_result(None)

    def failed(self, token: Starting) -> None:
        self._starting[:0] = token

    async def save(self) -> None:
        """Write the whole map atomically (in a thread); saves never overlap."""
        if self.file is None:
            return
        async with self._lock:
            await asyncio.to_thread(write_atomic, self.file, self.encode())


def _move_aside(path: Path, state_dir: Path, reason: str) -> str:
    corrupt = state_dir / "corrupt"
    target = corrupt / f"{path.name}.{int(time.time())}"
    try:
        corrupt.mkdir(mode=0o700, exist_ok=True)
        path.replace(target)
    except OSError as exc:
        message = f"watcher memory {path} is unreadable ({reason}) and could not be moved aside: {exc.strerror}"
    else:
        message = f"watcher memory {path} is unreadable ({reason}); moved it to {target}"
    log.error("%s; files whose runs were removed by retention may start again", message)
    return message
