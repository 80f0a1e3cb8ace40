"""`DurableStore`: checkpoints as msgspec files — a write-ahead log plus per-run snapshots.

Layout under the state dir (docs/checkpoints.md has the details):

    wal/<NNNNNNNN>.wal   framed records: Created (a whole new run), Delta (what changed), Removed
    runs/<run_id>.ckpt   one framed RunCheckpoint: the run as of WAL sequence `wal_seq`
    runs.idx             the index: each stored run's RunEntry as of its snapshot (run_index.py)
    corrupt/             files that failed their checks, moved aside with a reason

Guarantees:
- `flush()` appends one batch of records for every run changed since the last
  flush and fsyncs once (group commit); when it returns, those changes survive
  kill -9 and power loss; when it raises, nothing of the batch is lost: the next
  flush writes it first;
- a snapshot is exactly the run as of its `wal_seq` (encoded in the same tick as
  that record), so replaying newer records on top never repeats history;
- a torn tail of the newest WAL segment (a crash mid-append) is cut off at the
  last good record (the cut bytes are kept in corrupt/ and reported); any other
  bad record or snapshot is reported with its path and moved aside, and the rest
  still loads — never a crash loop, never a silently wrong value;
- a checkpoint of an unknown newer format is refused with a clear message, even
  if its layout no longer decodes (it is never mistaken for a corrupt file);
- a finished run's snapshot is rewritten with every change it gets, so once a
  flush has written it the store can `release` the run (keep only its index
  entry) and `read` it back whole later; `load` builds only the unfinished runs
  and reads a finished run's snapshot only when the index cannot vouch for it.
"""

from __future__ import annotations

import asyncio
import logging
import os  # noqa: F401 (tests patch `checkpoint.os.fsync`; the WAL's fsyncs go through the same module)
from collections.abc import Callable
from pathlib import Path

import msgspec

from tagent_client.errors import NotFound
from tagentd.runs.index import RunIndex
from tagentd.runs.records import (
    Created,
    Delta,
    Removed,
    RunCheckpoint,
    WalRecord,
    check_format,
    checkpoint_decoder,
    checkpoint_of,
    encoder,
    peek_format,
    rebuild_run,
    record_run_id,
    replay,
    wal_decoder,
)
from tagentd.runs.run import Run, RunEntry
from tagentd.runs.store import Recovered
from tagentd.storage.records import CorruptRecord, frame, read_single, write_atomic
from tagentd.storage.wal import SegmentLog, cut_tail, move_aside

log = logging.getLogger("tagentd.checkpoint")

SEGMENT_BYTES = 16 * 1024 * 1024
INDEX_FILE = "runs.idx"

#: A snapshot waiting to be written: (run id, encoded RunCheckpoint).
Snapshot = tuple[str, bytes]


class _Progress:
    """How much of a run the store has written: history entries, log lines, tasks it knows, WAL sequences."""

    __slots__ = ("history", "log_seq", "tasks", "snap_seq", "last_seq")

    def __init__(self, run: Run, seq: int = 0) -> None:
        self.history = len(run.history)
        self.log_seq = run.log_seq
        self.tasks = set(run.state.tasks)
        self.snap_seq = 0      # the wal_seq of its newest snapshot (encoded; maybe still queued)
        self.last_seq = seq    # the sequence of its newest record


class DurableStore:
    """The durable RunStore. Only the daemon's loop calls it; fsyncs run in a thread.

    It tracks (holds) every run created or read back until `release`d; the index holds every stored run.
    """

    durable = True

    def __init__(self, state_dir: Path, segment_bytes: int | None = None,
                 on_fsync: Callable[[float], None] | None = None) -> None:
        self.root = Path(state_dir)
        self.wal_dir = self.root / "wal"
        self.runs_dir = self.root / "runs"
        self.corrupt_dir = self.root / "corrupt"
        for d in (self.wal_dir, self.runs_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self.segment_bytes = segment_bytes or SEGMENT_BYTES
        self._dirty: dict[str, Run] = {}
        self._created: list[Run] = []
        self._removed: list[str] = []
        self._progress: dict[str, _Progress] = {}
        self._runs_by_id: dict[str, Run] = {}
        self._seq = 0
        self._wal = SegmentLog(self.wal_dir, on_fsync)  # on_fsync: told each fsync's seconds (metrics)
        self._index = RunIndex(self.root / INDEX_FILE)
        self._unwritten = b""              # encoded records not yet durably appended (a failed flush keeps them)
        self._snapshots: list[Snapshot] = []  # encoded snapshots not yet written
        self._lock = asyncio.Lock()        # one flush at a time (the shutdown commit may overlap the committer's)
        self.problems: list[str] = []
        self.stats = {"flushes": 0, "records": 0, "bytes": 0, "snapshots": 0, "reads": 0}

    # -- the RunStore interface ----------------------------------------------------------------------

    def created(self, run: Run) -> None:
        self._created.append(run)
        self._runs_by_id[run.id] = run

    def changed(self, run: Run) -> None:
        self._dirty[run.id] = run

    def remove(self, run_id: str) -> None:
        self._removed.append(run_id)
        self._dirty.pop(run_id, None)
        self._runs_by_id.pop(run_id, None)

    @property
    def pending(self) -> bool:
        return self._lock.locked() or bool(self._created or self._dirty or self._removed or self._unwritten
                                           or self._snapshots)

    async def flush(self) -> None:
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if not (self._created or self._dirty or self._removed or self._unwritten or self._snapshots):
            return
        loop = asyncio.get_running_loop()
        payload, snapshots = self._encode_batch()
        self._unwritten += payload
        self._snapshots += snapshots
        rotate = self._wal.size + len(self._unwritten) > self.segment_bytes
        if rotate:
            # Encoded now, in the same tick as the batch, so each snapshot is exactly the state as of its wal_seq.
            self._snapshots += self._stale_snapshots()
        if self._unwritten:
            await self._wal.append(self._unwritten)  # fsynced; a failure cuts the segment back and raises
            self.stats["flushes"] += 1
            self.stats["bytes"] += len(self._unwritten)
            self._unwritten = b""
        if self._snapshots:
            await loop.run_in_executor(None, self._write_snapshots)
        self._index.write()  # the entries of the snapshots just written
        if rotate:
            self._index.sync()  # before the WAL goes: a run the index lacks must still be in the WAL
            # every run the old segments hold changes for is snapshotted; deleting a full segment (and the fsyncs
            # around it) takes milliseconds, so it runs in a thread while the loop goes on (the flush holds the lock:
            # nothing else touches the log meanwhile)
            await loop.run_in_executor(None, self._wal.retire)

    async def compact(self) -> None:
        """Flush, snapshot every run the WAL holds newer changes for, and drop the WAL (at a graceful stop, so the
        next start reads only the index). A failure is logged and leaves the WAL as it is."""
        async with self._lock:
            try:
                await self._flush()
                self._snapshots += self._stale_snapshots()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._write_snapshots)
                self._index.sync()
                await loop.run_in_executor(None, self._wal.retire)
            except OSError as exc:
                log.warning("could not compact the checkpoints (%s); the next start replays the WAL", exc)

    def release(self, run_id: str) -> RunEntry | None:
        """Stop holding a finished run whose snapshot has every change; its index entry, or None if it must stay."""
        run, progress = self._runs_by_id.get(run_id), self._progress.get(run_id)
        entry = self._index.entries.get(run_id)
        if run is None or progress is None or entry is None or not run.finished or run_id in self._dirty:
            return None
        if self._lock.locked():  # a flush is writing snapshots (in a thread): ask again after it
            return None
        if progress.snap_seq != progress.last_seq or entry.wal_seq != progress.snap_seq:
            return None
        if any(queued == run_id for queued, _ in self._snapshots):
            return None
        del self._runs_by_id[run_id], self._progress[run_id]
        return entry

    def read(self, run_id: str) -> Run:
        """A stored run, read back whole from its snapshot (held until released again).

        Raises NotFound if it has no readable snapshot (a damaged one is moved aside and reported; the run is
        dropped from the index), ConfigError if the snapshot is of a newer format.
        """
        path = self.runs_dir / f"{run_id}.ckpt"
        problems = len(self.problems)
        try:
            ckpt = self._read_checkpoint(path)
        except FileNotFoundError:
            ckpt = None
            self.problems.append(f"run {run_id}: its snapshot {path} is missing (deleted outside tagentd?)")
            log.error(self.problems[-1])
        if ckpt is None:
            self._index.drop(run_id)
            raise NotFound(f"run {run_id} is lost: {self.problems[problems]}", run_id=run_id)
        run = rebuild_run(ckpt)
        progress = _Progress(run, ckpt.wal_seq)
        progress.snap_seq = ckpt.wal_seq
        entry = run.entry(ckpt.wal_seq)
        if self._index.entries.get(run_id) != entry:  # the index lagged its snapshot: bring it up to date
            self._index.put(entry)
        self._progress[run_id] = progress
        self._runs_by_id[run_id] = run
        self._seq = max(self._seq, ckpt.wal_seq)
        self.stats["reads"] += 1
        return run

    def close(self) -> None:
        self._wal.close()
        self._index.close()

    # -- writing --------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _encode_batch(self) -> tuple[bytes, list[Snapshot]]:
        chunks: list[bytes] = []
        snapshots: list[Snapshot] = []
        for run in self._created:
            seq = self._next_seq()
            chunks.append(frame(encoder.encode(Created(seq=seq, checkpoint=checkpoint_of(run, seq)))))
            run.machine.take_changes()
            run.dirty_memory.clear()
            progress = self._progress[run.id] = _Progress(run, seq)
            self._dirty.pop(run.id, None)
            if run.state.status.finished:  # e.g. every step skipped at start
                snapshots.append(self._snapshot(run, progress))
        self._created.clear()
        for run in self._dirty.values():
            progress = self._progress.get(run.id)
            if progress is None:  # released or removed meanwhile: nothing of it is held any more
                continue
            steps_changed, tasks_changed = run.machine.take_changes()
            state = run.state
            tasks = {t: state.tasks[t] for t in tasks_changed if t in state.tasks}
            removed = [t for t in tasks_changed if t not in state.tasks and t in progress.tasks]
            progress.tasks.update(tasks)
            progress.tasks.difference_update(removed)
            seq = self._next_seq()
            delta = Delta(
                seq=seq, run_id=run.id, status=state.status, started_at=state.started_at,
                finished_at=state.finished_at, error=state.error, rolled_back_from=state.rolled_back_from,
                steps={s: state.steps[s] for s in steps_changed if s in state.steps}, tasks=tasks, removed_tasks=removed,
                removed_steps=[s for s in steps_changed if s not in state.steps],
                memory={k: run.memory.get(k) for k in run.dirty_memory},
                history=run.history[progress.history:], logs=run.logs_after(progress.log_seq),
                event_seq=run.event_seq,
            )
            run.dirty_memory.clear()
            progress.history = len(run.history)
            progress.log_seq = run.log_seq
            progress.last_seq = seq
            chunks.append(frame(encoder.encode(delta)))
            if state.status.finished:  # every change of a finished run: so it can leave memory once written
                snapshots.append(self._snapshot(run, progress))
        self._dirty.clear()
        for run_id in self._removed:
            chunks.append(frame(encoder.encode(Removed(seq=self._next_seq(), run_id=run_id))))
            self._progress.pop(run_id, None)
            self._index.drop(run_id)
            self._snapshots = [s for s in self._snapshots if s[0] != run_id]
            snapshots = [s for s in snapshots if s[0] != run_id]
            try:
                (self.runs_dir / f"{run_id}.ckpt").unlink()
            except FileNotFoundError:
                pass
        self._removed.clear()
        self.stats["records"] += len(chunks)
        return b"".join(chunks), snapshots

    def _snapshot(self, run: Run, progress: _Progress) -> Snapshot:
        """Encode the run as of its newest record; its index entry goes out once the snapshot is written."""
        progress.snap_seq = progress.last_seq
        self._index.put(run.entry(progress.last_seq))
        return run.id, encoder.encode(checkpoint_of(run, progress.last_seq))

    def _stale_snapshots(self) -> list[Snapshot]:
        """Snapshots of every run the WAL holds newer changes for than its .ckpt (before the WAL is dropped)."""
        out: list[Snapshot] = []
        for run_id, progress in self._progress.items():
            run = self._runs_by_id.get(run_id)
            if run is not None and progress.last_seq > progress.snap_seq:
                out.append(self._snapshot(run, progress))
        return out

    def _write_snapshots(self) -> None:
        """Write the queued snapshots in order (in a thread); what fails stays queued for the next flush."""
        while self._snapshots:
            run_id, payload = self._snapshots[0]
            write_atomic(self.runs_dir / f"{run_id}.ckpt", payload)
            self._snapshots.pop(0)
            self.stats["snapshots"] += 1

    # -- reading --------------------------------------------------------------------------------------

    def _move_aside(self, path: Path, reason: str) -> None:
        message = move_aside(path, self.corrupt_dir, "checkpoint", reason)
        self.problems.append(message)
        log.error(message)

    def _cut_tail(self, path: Path, data: bytes, exc: CorruptRecord) -> None:
        """Keep the torn bytes in corrupt/ for inspection, then truncate the segment to its last good record."""
        target = cut_tail(path, data, exc.offset, keep_dir=self.corrupt_dir)
        message = (f"checkpoint {path} ends in a torn record at byte {exc.offset} ({exc.reason}; a crash interrupted "
                   f"a write that was never acknowledged); cut it off, kept the {len(data) - exc.offset} bytes in {target}")
        self.problems.append(message)
        log.warning(message)

    def _read_checkpoint(self, path: Path) -> RunCheckpoint | None:
        """A snapshot file decoded; None if it is damaged (then it is moved aside and reported)."""
        try:
            payload = read_single(path)
        except CorruptRecord as exc:
            self._move_aside(path, str(exc))
            return None
        try:
            ckpt = checkpoint_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            check_format(peek_format(payload), path)
            self._move_aside(path, f"undecodable: {exc}")
            return None
        check_format(ckpt.format, path)
        return ckpt

    def load(self) -> Recovered:
        """Every stored run's index entry, and the unfinished runs whole (finished ones are `read` on demand).

        Snapshots read: those of unfinished runs, of runs with WAL records (the index may lag them), and of runs
        the index lacks; every one if the index is missing or damaged (it is rebuilt). Then the WAL on top.
        """
        why = self._index.read()
        records: list[WalRecord] = []

        def handle(path: Path, payload: bytes) -> None:
            try:
                record = wal_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                check_format(peek_format(payload), path)
                raise
            check_format(record.format, path)
            records.append(record)

        lost_records = self._wal.replay(handle, self._cut_tail, self._move_aside)
        index = self._index.entries
        in_wal = {record_run_id(record) for record in records}
        stored = {name[:-5] for name in os.listdir(self.runs_dir) if name.endswith(".ckpt")}
        if why is not None and stored:
            log.warning("the run index %s %s; rebuilding it from the snapshots", self._index.path, why)
        unfinished = {rid for rid, entry in index.items() if not entry.finished}
        wanted = sorted(stored & (in_wal | unfinished) | (stored - index.keys()))
        self._seq = max([entry.wal_seq for entry in index.values()] + [record.seq for record in records], default=0)
        checkpoints: dict[str, RunCheckpoint] = {}
        for run_id in wanted:
            ckpt = self._read_checkpoint(self.runs_dir / f"{run_id}.ckpt")
            if ckpt is not None:
                checkpoints[run_id] = ckpt
                self._seq = max(self._seq, ckpt.wal_seq)
        snapshots = {run_id: ckpt.wal_seq for run_id, ckpt in checkpoints.items()}  # of each .ckpt file read
        applied = dict(snapshots)  # newest record applied, per run
        for record in records:
            replay(record, checkpoints, applied)
        gone = [rid for rid in (index.keys() - stored) | set(wanted) if rid in index and rid not in checkpoints]
        for run_id in gone:  # removed, or its snapshot damaged and not in the WAL either
            self._index.drop(run_id)
        for record in records:  # a crash between retention's unlink and its Removed record: finish the unlink
            if isinstance(record, Removed) and record.run_id not in checkpoints:
                (self.runs_dir / f"{record.run_id}.ckpt").unlink(missing_ok=True)
        live = []
        for ckpt in sorted(checkpoints.values(), key=lambda c: c.state.created_at):
            live += self._recovered(rebuild_run(ckpt), snapshots.get(ckpt.state.run_id, 0),
                                    applied.get(ckpt.state.run_id, 0), lost_records)
        if why is not None or gone:
            self._index.rewrite()  # from the snapshots read; the next `write` retries if this fails
        else:
            self._index.write()
        return Recovered(entries=sorted(index.values(), key=lambda e: e.created_at), runs=live)

    def _recovered(self, run: Run, snap_seq: int, last_seq: int, lost_records: bool) -> list[Run]:
        """Square one rebuilt run with its snapshot and the index; [run] if it is unfinished (held), else []."""
        progress = _Progress(run, last_seq)
        progress.snap_seq = snap_seq
        # A segment set aside may hold this run's first records: snapshot it so it no longer depends on them.
        # A finished run whose final snapshot a crash prevented gets it now.
        if lost_records or (run.finished and snap_seq != last_seq):
            write_atomic(self.runs_dir / f"{run.id}.ckpt", encoder.encode(checkpoint_of(run, last_seq)))
            progress.snap_seq = last_seq
        entry = run.entry(progress.snap_seq)
        if self._index.entries.get(run.id) != entry:
            self._index.put(entry)
        if run.finished:
            return []  # every change is in its snapshot: read back on demand
        self._progress[run.id] = progress
        self._runs_by_id[run.id] = run
        return [run]
