"""`RunIndex`: one `RunEntry` per stored run, kept in `state/runs.idx`, so start-up reads no snapshot it need not.

The index is derived data: each entry is the run as of its newest snapshot
(`runs/<id>.ckpt`), and the whole file can be rebuilt from the snapshots. The
file is a sequence of framed `IndexChanges` records (records.py): entries put
and run ids dropped. Appends are not fsynced one by one; a rewrite (compaction)
replaces the file atomically with one record holding every entry.

Guarantees (what the run store relies on):
- an entry is appended only after the snapshot it describes is on disk;
- `sync()` makes the file durable and complete; the store calls it before it
  deletes WAL segments, so a run whose entry a crash lost or left stale still
  has WAL records, and start-up reads such runs from their snapshot;
- `read()` never trusts a damaged file: a torn tail (a crash mid-append) is cut
  off; any other damage, or an unknown format, means "rebuild" (the store reads
  every snapshot and rewrites the file);
- a failed write is never raised to the run store's caller (the index is not
  what makes a change durable): the file is marked stale and rewritten whole at
  the next write or `sync()`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from tagentd.runs.run import RunEntry
from tagentd.storage.records import CorruptRecord, frame, read_frames, write_atomic
from tagentd.storage.wal import cut_tail, is_torn_tail

log = logging.getLogger("tagentd.index")

INDEX_FORMAT = 1
#: The file is rewritten once it holds more than twice as many records as entries, plus this slack.
COMPACT_SLACK = 1024


class IndexChanges(msgspec.Struct, tag="index", kw_only=True):
    """Entries put (new or replacing the run's previous one), then run ids dropped."""

    format: int = INDEX_FORMAT
    put: list[RunEntry] = []
    dropped: list[str] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(IndexChanges)


class RunIndex:
    """The entries by run id, and the file that keeps them. Used only from the daemon's loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, RunEntry] = {}
        self._put: list[RunEntry] = []
        self._dropped: list[str] = []
        self._records = 0
        self._stale = False
        self._fd: int | None = None
        self._failing = ""  # the last write error logged (each new one is logged once)

    def read(self) -> str | None:
        """Load the file. None if it was used; otherwise why not ("is missing", "is damaged: ..."): rebuild then."""
        self.entries.clear()
        self._stale = True
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return "is missing"
        entries: dict[str, RunEntry] = {}
        records = 0
        try:
            for _, payload in read_frames(data, self.path):
                changes = _decoder.decode(payload)
                if changes.format != INDEX_FORMAT:
                    return f"has format {changes.format} (this tagentd writes {INDEX_FORMAT})"
                for entry in changes.put:
                    entries[entry.run_id] = entry.shared()
                for run_id in changes.dropped:
                    entries.pop(run_id, None)
                records += 1
        except CorruptRecord as exc:
            if not is_torn_tail(data, exc):
                return f"is damaged ({exc.reason} at byte {exc.offset})"
            cut_tail(self.path, data, exc.offset)
            log.info("run index %s ended in a torn append (a crash); cut it at byte %d", self.path, exc.offset)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"is damaged (undecodable: {exc})"
        self.entries = entries
        self._records = records
        self._stale = False
        return None

    def put(self, entry: RunEntry) -> None:
        """The run's entry as of the snapshot just encoded (written by the next `write`, after that snapshot)."""
        self.entries[entry.run_id] = entry
        self._put.append(entry)

    def drop(self, run_id: str) -> None:
        if self.entries.pop(run_id, None) is not None:
            self._dropped.append(run_id)

    def write(self) -> None:
        """Append what was put and dropped since the last write (call once their snapshots are on disk).

        Rewrites the file instead when it is stale or has grown well past its entries. Not fsynced. A failure is
        logged and leaves the index stale (the next write or `sync` rewrites it), never raised.
        """
        if self._stale or self._records > 2 * len(self.entries) + COMPACT_SLACK:
            try:
                self.rewrite()
            except OSError as exc:
                self._failed(f"could not rewrite the run index {self.path}: {exc}; will try again")
            return
        if not (self._put or self._dropped):
            return
        data = frame(_encoder.encode(IndexChanges(put=self._put, dropped=self._dropped)))
        self._put, self._dropped = [], []
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._records += 1
        except OSError as exc:
            self._failed(f"could not append to the run index {self.path}: {exc}; it will be rewritten")
            self._stale = True
            self._close_fd()

    def rewrite(self) -> None:
        """Replace the file atomically (and durably) with one record of every entry; raises OSError."""
        self._put, self._dropped = [], []
        self._close_fd()
        write_atomic(self.path, _encoder.encode(IndexChanges(put=list(self.entries.values()))))
        self._records = 1
        self._stale = False
        self._failing = ""

    def sync(self) -> None:
        """Make the file durable and complete: write what is pending, fsync (or rewrite); raises OSError."""
        self.write()
        if self._stale:
            self.rewrite()
        elif self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        try:
            self.sync()
        except OSError as exc:
            log.warning("could not write the run index %s: %s; the next start rebuilds what it lacks", self.path, exc)
        self._close_fd()

    def _failed(self, message: str) -> None:
        if message != self._failing:
            log.warning(message)
            self._failing = message

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
