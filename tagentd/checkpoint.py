"""`DurableStore`: checkpoints as msgspec files — a write-ahead log plus per-run snapshots.

Layout under the state dir (docs/checkpoints.md has the details):

    wal/<NNNNNNNN>.wal   framed records: Created (a whole new run), Delta (what changed), Removed
    runs/<run_id>.ckpt   one framed RunCheckpoint: the run as of WAL sequence `wal_seq`
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
  if its layout no longer decodes (it is never mistaken for a corrupt file).
"""

from __future__ import annotations

import asyncio
import logging
import os  # noqa: F401 (tests patch `checkpoint.os.fsync`; the WAL's fsyncs go through the same module)
import random
from pathlib import Path
from typing import Any

import msgspec
from tagent_client.engine import RunMachine
from tagent_client.errors import ConfigError
from tagent_client.plan import Plan
from tagent_client.protocol import LogRecord
from tagent_client.state import RunState, RunStatus, StepState, TaskState

from .records import CorruptRecord, frame, read_single, write_atomic
from .runs import AuditEntry, Run, RunSource
from .wal import SegmentLog, cut_tail, is_torn_tail, move_aside  # noqa: F401 (is_torn_tail: re-exported)

log = logging.getLogger("tagentd.checkpoint")

FORMAT = 1
SEGMENT_BYTES = 16 * 1024 * 1024


class RunCheckpoint(msgspec.Struct, tag="run", kw_only=True):
    """A whole run: source snapshot, plan, state, memory, history and counters."""

    format: int = FORMAT
    wal_seq: int = 0
    source: RunSource
    plan: Plan
    state: RunState
    memory: dict[str, Any] = {}
    history: list[AuditEntry] = []
    logs: list[LogRecord] = []
    event_seq: int = 0


class Created(msgspec.Struct, tag="created", kw_only=True):
    format: int = FORMAT
    seq: int
    checkpoint: RunCheckpoint


class Delta(msgspec.Struct, tag="delta", kw_only=True):
    """What changed in one run since its previous record."""

    format: int = FORMAT
    seq: int
    run_id: str
    status: RunStatus
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    steps: dict[str, StepState] = {}
    tasks: dict[str, TaskState] = {}
    removed_tasks: list[str] = []
    memory: dict[str, Any] = {}
    history: list[AuditEntry] = []
    logs: list[LogRecord] = []
    event_seq: int = 0


class Removed(msgspec.Struct, tag="removed", kw_only=True):
    format: int = FORMAT
    seq: int
    run_id: str


WalRecord = Created | Delta | Removed


class _Version(msgspec.Struct):
    """Just the `format` of any record: read before the full decode, which a newer layout may fail."""

    format: int = 0


_encoder = msgspec.msgpack.Encoder(enc_hook=lambda o: o.model_dump(mode="json"))
_wal_decoder = msgspec.msgpack.Decoder(WalRecord)
_ckpt_decoder = msgspec.msgpack.Decoder(RunCheckpoint)
_version_decoder = msgspec.msgpack.Decoder(_Version)

#: A snapshot waiting to be written: (run id, encoded RunCheckpoint).
Snapshot = tuple[str, bytes]


class _Progress:
    """How much of a run the store has written: history entries, log lines, tasks it knows."""

    __slots__ = ("history", "log_seq", "tasks", "snap_seq", "last_seq", "snapshot_final")

    def __init__(self, history: int = 0, log_seq: int = 0, tasks: set[str] | None = None) -> None:
        self.history = history
        self.log_seq = log_seq
        self.tasks = tasks or set()
        self.snap_seq = 0
        self.last_seq = 0
        self.snapshot_final = False


def peek_format(payload: bytes) -> int:
    """The `format` field of an encoded record, or 0 if it has none (then it is simply undecodable)."""
    try:
        return _version_decoder.decode(payload).format
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0


def check_format(version: int, where: Path) -> None:
    if version > FORMAT:
        raise ConfigError(
            f"{where} was written by a newer tagentd (checkpoint format {version}, this one reads up to {FORMAT}); "
            f"upgrade tagentd or move the state dir aside"
        )


class DurableStore:
    """The durable RunStore. Only the daemon's loop calls it; fsyncs run in a thread."""

    durable = True

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.wal_dir = self.root / "wal"
        self.runs_dir = self.root / "runs"
        self.corrupt_dir = self.root / "corrupt"
        for d in (self.wal_dir, self.runs_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self._dirty: dict[str, Run] = {}
        self._created: list[Run] = []
        self._removed: list[str] = []
        self._progress: dict[str, _Progress] = {}
        self._runs_by_id: dict[str, Run] = {}
        self._seq = 0
        self._wal = SegmentLog(self.wal_dir)
        self._unwritten = b""              # encoded records not yet durably appended (a failed flush keeps them)
        self._snapshots: list[Snapshot] = []  # encoded snapshots not yet written
        self._lock = asyncio.Lock()        # one flush at a time (the shutdown commit may overlap the committer's)
        self.problems: list[str] = []
        self.stats = {"flushes": 0, "records": 0, "bytes": 0, "snapshots": 0}

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
        rotate = self._wal.size + len(self._unwritten) > SEGMENT_BYTES
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
        if rotate:
            self._wal.retire()  # every run the old segments hold changes for is snapshotted

    def close(self) -> None:
        self._wal.close()

    # -- writing --------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _encode_batch(self) -> tuple[bytes, list[Snapshot]]:
        chunks: list[bytes] = []
        snapshots: list[Snapshot] = []
        for run in self._created:
            seq = self._next_seq()
            chunks.append(frame(_encoder.encode(Created(seq=seq, checkpoint=self._checkpoint(run, seq)))))
            run.machine.take_changes()
            run.dirty_memory.clear()
            progress = _Progress(len(run.history), run.log_seq, set(run.state.tasks))
            progress.last_seq = seq
            self._progress[run.id] = progress
            self._dirty.pop(run.id, None)
            if run.state.status.finished:  # e.g. every step skipped at start
                snapshots.append((run.id, _encoder.encode(self._checkpoint(run, seq))))
                progress.snap_seq = seq
                progress.snapshot_final = True
        self._created.clear()
        for run in self._dirty.values():
            progress = self._progress.setdefault(run.id, _Progress())
            steps_changed, tasks_changed = run.machine.take_changes()
            state = run.state
            tasks = {t: state.tasks[t] for t in tasks_changed if t in state.tasks}
            removed = [t for t in tasks_changed if t not in state.tasks and t in progress.tasks]
            progress.tasks.update(tasks)
            progress.tasks.difference_update(removed)
            seq = self._next_seq()
            delta = Delta(
                seq=seq, run_id=run.id, status=state.status, started_at=state.started_at,
                finished_at=state.finished_at, error=state.error,
                steps={s: state.steps[s] for s in steps_changed}, tasks=tasks, removed_tasks=removed,
                memory={k: run.memory.get(k) for k in run.dirty_memory},
                history=run.history[progress.history:], logs=run.logs_after(progress.log_seq),
                event_seq=run.event_seq,
            )
            run.dirty_memory.clear()
            progress.history = len(run.history)
            progress.log_seq = run.log_seq
            progress.last_seq = seq
            chunks.append(frame(_encoder.encode(delta)))
            if not state.status.finished:
                progress.snapshot_final = False  # resumed or retried: its next finish needs a new snapshot
            elif not progress.snapshot_final:
                snapshots.append((run.id, _encoder.encode(self._checkpoint(run, seq))))
                progress.snap_seq = seq
                progress.snapshot_final = True
        self._dirty.clear()
        for run_id in self._removed:
            chunks.append(frame(_encoder.encode(Removed(seq=self._next_seq(), run_id=run_id))))
            self._progress.pop(run_id, None)
            self._snapshots = [s for s in self._snapshots if s[0] != run_id]
            snapshots = [s for s in snapshots if s[0] != run_id]
            try:
                (self.runs_dir / f"{run_id}.ckpt").unlink()
            except FileNotFoundError:
                pass
        self._removed.clear()
        self.stats["records"] += len(chunks)
        return b"".join(chunks), snapshots

    def _checkpoint(self, run: Run, seq: int) -> RunCheckpoint:
        return RunCheckpoint(wal_seq=seq, source=run.source, plan=run.plan, state=run.state, memory=run.memory,
                             history=run.history, logs=run.logs, event_seq=run.event_seq)

    def _stale_snapshots(self) -> list[Snapshot]:
        """Snapshots of every run the WAL holds newer changes for than its .ckpt (before the WAL is dropped)."""
        out: list[Snapshot] = []
        for run_id, progress in self._progress.items():
            run = self._runs_by_id.get(run_id)
            if run is not None and progress.last_seq > progress.snap_seq:
                out.append((run_id, _encoder.encode(self._checkpoint(run, progress.last_seq))))
                progress.snap_seq = progress.last_seq
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

    def load(self) -> list[Run]:
        """Every stored run, rebuilt: snapshots first, then the WAL on top."""
        checkpoints: dict[str, RunCheckpoint] = {}
        snapshots: dict[str, tuple[int, bool]] = {}  # run id -> (wal_seq, finished) of its .ckpt file
        for path in sorted(self.runs_dir.glob("*.ckpt")):
            try:
                payload = read_single(path)
            except CorruptRecord as exc:
                self._move_aside(path, str(exc))
                continue
            try:
                ckpt = _ckpt_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                check_format(peek_format(payload), path)
                self._move_aside(path, f"undecodable: {exc}")
                continue
            check_format(ckpt.format, path)
            checkpoints[ckpt.state.run_id] = ckpt
            snapshots[ckpt.state.run_id] = (ckpt.wal_seq, ckpt.state.status.finished)
            self._seq = max(self._seq, ckpt.wal_seq)
        applied = {run_id: seq for run_id, (seq, _) in snapshots.items()}  # newest record applied, per run

        def handle(path: Path, payload: bytes) -> None:
            try:
                record = _wal_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                check_format(peek_format(payload), path)
                raise
            self._replay(record, checkpoints, applied, path)

        lost_records = self._wal.replay(handle, self._cut_tail, self._move_aside)
        runs = [self._rebuild(ckpt) for ckpt in checkpoints.values()]
        runs.sort(key=lambda r: r.state.created_at)
        self._runs_by_id = {r.id: r for r in runs}
        for run in runs:
            progress = _Progress(len(run.history), run.log_seq, set(run.state.tasks))
            snap_seq, snap_final = snapshots.get(run.id, (0, False))
            progress.snap_seq = snap_seq
            progress.last_seq = applied.get(run.id, snap_seq)
            progress.snapshot_final = snap_final and progress.last_seq == snap_seq
            self._progress[run.id] = progress
            # A segment set aside may hold this run's first records: snapshot it so it no longer depends on them.
            # A finished run whose final snapshot a crash prevented gets it now.
            if lost_records or (run.finished and not progress.snapshot_final):
                write_atomic(self.runs_dir / f"{run.id}.ckpt", _encoder.encode(self._checkpoint(run, progress.last_seq)))
                progress.snap_seq = progress.last_seq
                progress.snapshot_final = run.finished
        return runs

    def _replay(self, record: WalRecord, ckpts: dict[str, RunCheckpoint], applied: dict[str, int], path: Path) -> None:
        check_format(record.format, path)
        self._seq = max(self._seq, record.seq)
        if isinstance(record, Created):
            run_id = record.checkpoint.state.run_id
            if record.seq > applied.get(run_id, 0):
                ckpts[run_id] = record.checkpoint
                applied[run_id] = record.seq
        elif isinstance(record, Removed):
            ckpts.pop(record.run_id, None)
            applied.pop(record.run_id, None)
        else:
            ckpt = ckpts.get(record.run_id)
            if ckpt is None or record.seq <= applied.get(record.run_id, 0):
                return
            applied[record.run_id] = record.seq
            state = ckpt.state
            state.status, state.started_at, state.finished_at, state.error = (
                record.status, record.started_at, record.finished_at, record.error)
            state.steps.update(record.steps)
            state.tasks.update(record.tasks)
            for task in record.removed_tasks:
                state.tasks.pop(task, None)
            ckpt.memory.update(record.memory)
            ckpt.history.extend(record.history)
            last_log = ckpt.logs[-1].seq if ckpt.logs else 0
            ckpt.logs.extend(line for line in record.logs if line.seq > last_log)
            ckpt.event_seq = max(ckpt.event_seq, record.event_seq)

    @staticmethod
    def _rebuild(ckpt: RunCheckpoint) -> Run:
        machine = RunMachine(ckpt.plan, ckpt.state, rng=random.Random())
        run = Run(ckpt.source, ckpt.plan, machine)
        run.memory = dict(ckpt.memory)
        run.history = list(ckpt.history)
        run.restore_counters(ckpt.event_seq, ckpt.logs)
        run.announced_finish = ckpt.state.status.finished
        return run
