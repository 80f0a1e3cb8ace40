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

from tagent_client.core.broker_records import UNSYNCED, MessageSent, Record
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
        self.stats = {"flushes": 0, "records": 0, "bytes": 0, "snapshots": 0}
        self._seq = 0
        self._wal = SegmentLog(self.dir, on_fsync)  # on_fsync: told each fsync's seconds (metrics)
        self._unwritten = b""
        self._needs_sync = False
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> bool:
        """Encoded records a failed flush left to write."""
        return bool(self._unwritten)

    # -- writing -----------------------------------------------------------------------------------

    def _encode(self, records: list[Record], volatile: Container[tuple[str, str]]) -> None:
        chunks = []
        for record in records:
            self._seq += 1
            chunks.append(frame(_encoder.encode(Logged(seq=self._seq, record=record))))
            if not (isinstance(record, UNSYNCED) or (isinstance(record, MessageSent)
                                                     and (record.message.mailbox, record.message.id) in volatile)):
                self._needs_sync = True
        self._unwritten += b"".join(chunks)
        self.stats["records"] += len(records)

    async def flush(self, volatile: Container[tuple[str, str]] = (), written: Callable[[], None] | None = None) -> None:
        """Append what was journalled since the last flush; fsync unless it is only records that need none (the
        unsynced kinds, and the sends of the `(mailbox, id)`s in `volatile`: messages sent with `durable=False`).
        `written()` is called once the records are in the file, while the fsync runs (at once if there is nothing to
        write); it must not raise."""
        async with self._lock:
            records = self.broker.core.take_journal()
            if records:
                self._encode(records, volatile)
            if not self._unwritten:
                if written is not None:
                    written()
                return
            rotate = self._wal.size + len(self._unwritten) > SEGMENT_BYTES
            snapshot = _encoder.encode(BrokerCheckpoint(seq=self._seq, state=self.broker.snapshot())) if rotate else None
            loop = asyncio.get_running_loop()
            # Reads, failure counts and non-durable sends alone are not fsynced; a failure cuts the segment back and raises.
            await self._wal.append(self._unwritten, fsync=self._needs_sync, written=written)
            self.stats["bytes"] += len(self._unwritten)
            self.stats["flushes"] += self._needs_sync
            self._unwritten = b""
            self._needs_sync = False
            if snapshot is not None:
                await loop.run_in_executor(None, write_atomic, self.dir / SNAPSHOT, snapshot)
                self.stats["snapshots"] += 1
                self._wal.retire()  # the snapshot holds everything; the next flush starts a new segment

    def close(self) -> None:
        self._wal.close()

    # -- reading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the broker: the snapshot, then every newer WAL record."""
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

    def load(self) -> None:
        return None

    def close(self) -> None:
        return None
