"""`BrokerStore`: the broker's durability — a write-ahead log of its change records plus a snapshot.

Layout under the state dir (its own directory, apart from the run store):

    broker/<NNNNNNNN>.wal   framed `Logged` records (records.py framing), append-only
    broker/snapshot.ckpt    one framed `BrokerCheckpoint`: the whole broker as of WAL sequence `seq`

Guarantees:
- `flush()` appends every record the broker journalled since the last flush and
  fsyncs once; the daemon awaits it in the same commit as the run store, so a
  reply sent after the commit (a send, a put, a queued trigger) is on disk; its
  `written` callback runs once those records are in the file, while the fsync runs
  (what a parked receive waits for: docs/checkpoints.md, "Writing: group commit");
- while a flush waits for its fsync, `write_ahead()` appends what was journalled
  since behind it and queues its fsync right behind that one (docs/checkpoints.md,
  "Pipelined commits"; the caller decides whether the records may go ahead); the
  next flush awaits it. When a write or an fsync fails, everything not known to be
  on disk is cut off the log (once no fsync is queued) and kept to be written again
  first, in order, to a new segment;
- reads in a space's access log (`AccessLogged`), failed deliveries
  (`DeliveryFailed`) and messages sent with `durable=False` (the `volatile` ids
  given to `flush`) are appended without an fsync of their own: once appended they
  survive the daemon being killed, and they reach the disk with the next fsync (a
  power loss may lose the last few read lines, failure counts — a message is then
  delivered once more — or non-durable messages, never a durable write);
- when a segment passes SEGMENT_BYTES the whole state is snapshotted (encoded in
  the same tick as the last batch, so it is exactly the state as of `seq`) and
  the old segments are deleted;
- a torn tail of the newest segment is cut off; any other bad frame or a bad
  snapshot is moved to corrupt/ and reported (`problems`), the rest still loads;
  a newer format is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container
from pathlib import Path

import msgspec

from tagent_client.core.broker_records import UNSYNCED, MessageSent
from tagent_client.errors import ConfigError
from tagentd.broker.state import AnyRecord, Broker, BrokerSnapshot
from tagentd.runs.records import peek_format
from tagentd.storage.records import CorruptRecord, frame, read_single, write_atomic
from tagentd.storage.wal import SegmentLog, cut_tail, move_aside

log = logging.getLogger("tagentd.broker_store")

FORMAT = 1
SEGMENT_BYTES = 16 * 1024 * 1024
SNAPSHOT = "snapshot.ckpt"


class Logged(msgspec.Struct, tag="logged_record", kw_only=True):
    format: int = FORMAT
    seq: int
    record: AnyRecord


class BrokerCheckpoint(msgspec.Struct, tag="broker", kw_only=True):
    format: int = FORMAT
    seq: int
    state: BrokerSnapshot


_encoder = msgspec.msgpack.Encoder()
_logged_decoder = msgspec.msgpack.Decoder(Logged)
_ckpt_decoder = msgspec.msgpack.Decoder(BrokerCheckpoint)


def check_format(version: int, where: Path) -> None:
    if version > FORMAT:
        raise ConfigError(f"{where} was written by a newer tagentd (broker format {version}, this one reads up to "
                          f"{FORMAT}); upgrade tagentd or move the state dir aside")


class BrokerStore:
    """Durable store of one Broker. Only the daemon's loop calls it; fsyncs run in a thread."""

    durable = True

    def __init__(self, state_dir: Path, broker: Broker, on_fsync: Callable[[float], None] | None = None) -> None:
        self.dir = Path(state_dir) / "broker"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.corrupt_dir = Path(state_dir) / "corrupt"
        self.broker = broker
        self.problems: list[str] = []
        self.stats = {"flushes": 0, "records": 0, "bytes": 0, "snapshots": 0, "written_ahead": 0}
        self._seq = 0
        self._wal = SegmentLog(self.dir, on_fsync)  # on_fsync: told each fsync's seconds (metrics)
        self._unwritten = b""     # encoded records not written yet (a failed flush puts back what it had written)
        self._needs_sync = False  # whether they hold a record that must be fsynced
        self._unsynced: list[tuple[int, bytes]] = []  # (offset, bytes) written and not known on disk, in log order
        self._syncs: list[asyncio.Future[float | None]] = []  # their fsyncs, asked for and not yet awaited
        self._ahead = False       # a flush's fsync runs: what is journalled meanwhile may be written behind it
        self._ahead_failed = False  # writing ahead failed: the flush in flight fails too, and the next one retries
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> bool:
        """Encoded records a failed flush left to write, or records written ahead that a flush must await."""
        return bool(self._unwritten or self._syncs)

    # -- writing -----------------------------------------------------------------------------------

    def _encode(self, volatile: Container[tuple[str, str]]) -> None:
        records = self.broker.core.take_journal()
        if not records:
            return
        chunks = []
        for record in records:
            self._seq += 1
            chunks.append(frame(_encoder.encode(Logged(seq=self._seq, record=record))))
            if not (isinstance(record, UNSYNCED) or (isinstance(record, MessageSent)
                                                     and (record.message.mailbox, record.message.id) in volatile)):
                self._needs_sync = True
        self._unwritten += b"".join(chunks)
        self.stats["records"] += len(records)

    def _write(self) -> None:
        """Write the unwritten records (queueing their fsync if they need one); kept for a retry if the write fails."""
        data, sync = self._unwritten, self._needs_sync
        start = self._wal.write(data)  # on a failure nothing changed here: the records stay unwritten
        self._unwritten, self._needs_sync = b"", False
        self.stats["bytes"] += len(data)
        if sync or self._unsynced:  # kept until on disk, to be written again if an fsync fails
            self._unsynced.append((start, data))
        if sync:
            self._syncs.append(self._wal.sync())

    def write_ahead(self, volatile: Container[tuple[str, str]] = ()) -> bool:
        """Write what was journalled since the flush in flight wrote, while that flush's fsync runs, and queue its fsync
        behind that one (the next flush awaits it). True if it wrote; False (nothing done) when no flush is waiting for
        its fsync, or the segment is to be replaced. The caller decides whether the records may go ahead of the commit
        (docs/checkpoints.md, "Pipelined commits")."""
        if not self._ahead:
            return False
        self._encode(volatile)
        if not self._unwritten:
            return False
        try:
            self._write()
        except OSError:
            self._ahead, self._ahead_failed = False, True  # the flush in flight fails; the next one writes them
            return False
        self.stats["written_ahead"] += 1
        return True

    async def flush(self, volatile: Container[tuple[str, str]] = (), written: Callable[[], None] | None = None) -> None:
        """Append what was journalled since the last flush (after what was written ahead of it) and await the fsyncs of
        all of it; none if it is only records that need none (the unsynced kinds, and the sends of the `(mailbox,
        id)`s in `volatile`: messages sent with `durable=False`). `written()` is called once the records are in the
        file, while the fsync runs (at once if there is nothing to write); it must not raise. On a failure, all that
        is not known to be on disk is cut off the log and kept to be written again, in order, and the error raised."""
        async with self._lock:
            self._encode(volatile)
            rotate = self._wal.size + len(self._unwritten) > SEGMENT_BYTES
            snapshot = _encoder.encode(BrokerCheckpoint(seq=self._seq, state=self.broker.snapshot())) if rotate else None
            try:
                if self._unwritten:
                    self._write()
            except BaseException:
                await self._undo()
                raise
            if written is not None:
                written()
            syncs, covered = list(self._syncs), len(self._unsynced)
            self._ahead = not rotate  # what comes while the fsyncs run may be written behind them
            try:
                for syncing in syncs:
                    self._wal.synced(await syncing)
                if self._ahead_failed:
                    raise OSError("writing the broker log failed (records written ahead of a commit)")
            except BaseException:
                self._ahead = False
                await self._undo()
                raise
            self._ahead = False
            del self._syncs[:len(syncs)], self._unsynced[:covered]
            self.stats["flushes"] += bool(syncs)
            if snapshot is not None:
                await asyncio.get_running_loop().run_in_executor(None, write_atomic, self.dir / SNAPSHOT, snapshot)
                self.stats["snapshots"] += 1
                self._wal.retire()  # the snapshot holds everything; the next flush starts a new segment

    async def _undo(self) -> None:
        """A write or an fsync failed: once no fsync is queued, cut off everything not known to be on disk and keep
        it to be written again first (in log order), on a new segment."""
        await asyncio.gather(*self._syncs, return_exceptions=True)
        offset = self._unsynced[0][0] if self._unsynced else None
        self._unwritten = b"".join(data for _, data in self._unsynced) + self._unwritten
        self._needs_sync = self._needs_sync or bool(self._syncs)
        self._unsynced, self._syncs, self._ahead_failed = [], [], False
        self._wal.drop_partial(offset)

    def close(self) -> None:
        self._wal.close()

    # -- reading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the broker: the snapshot, then every newer WAL record. When a segment had to be moved aside, the
        state loaded (every record before the damage) is snapshotted at once, so it no longer depends on it."""
        snap_seq = 0
        path = self.dir / SNAPSHOT
        if path.exists():
            try:
                payload = read_single(path)
                try:
                    ckpt = _ckpt_decoder.decode(payload)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    check_format(peek_format(payload), path)
                    raise
                check_format(ckpt.format, path)
                self.broker.restore(ckpt.state)
                snap_seq = self._seq = ckpt.seq
            except (CorruptRecord, msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._move_aside(path, str(exc))

        def handle(segment: Path, payload: bytes) -> None:
            try:
                logged = _logged_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                check_format(peek_format(payload), segment)
                raise
            check_format(logged.format, segment)
            if logged.seq > snap_seq:
                self.broker.apply(logged.record)
            self._seq = max(self._seq, logged.seq)

        lost = self._wal.replay(handle, self._cut_tail, self._move_aside, numbered_only=True)
        self.broker.core.take_journal()
        if lost:  # a segment was moved aside: what it held before the damage is only in memory now
            write_atomic(self.dir / SNAPSHOT, _encoder.encode(BrokerCheckpoint(seq=self._seq, state=self.broker.snapshot())))
            self._wal.retire()

    def _move_aside(self, path: Path, reason: str) -> None:
        message = move_aside(path, self.corrupt_dir, "broker state", reason, prefix="broker-")
        self.problems.append(message)
        log.error(message)

    def _cut_tail(self, path: Path, data: bytes, exc: CorruptRecord) -> None:
        """Truncate the newest segment to its last good record (the torn bytes are not kept)."""
        cut_tail(path, data, exc.offset)
        message = f"broker log {path} ends in a torn record at byte {exc.offset} ({exc.reason}); cut it off"
        self.problems.append(message)
        log.warning(message)


class MemoryBrokerStore:
    """Keeps nothing (`durable = false`): the journal is dropped at every flush."""

    durable = False
    pending = False

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.problems: list[str] = []
        self.stats: dict[str, int] = {}

    async def flush(self, volatile: Container[tuple[str, str]] = (), written: Callable[[], None] | None = None) -> None:
        self.broker.core.take_journal()
        if written is not None:
            written()

    def write_ahead(self, volatile: Container[tuple[str, str]] = ()) -> bool:
        return False  # nothing is written

    def load(self) -> None:
        return None

    def close(self) -> None:
        return None
