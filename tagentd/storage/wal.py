"""`SegmentLog`: a write-ahead log as a directory of numbered `<NNNNNNNN>.wal` segments of framed records.

The segment mechanics shared by the run store (checkpoint.py) and the broker store
(broker_store.py); what the records mean, when to snapshot and how problems are
worded stay with each store.

Guarantees:
- `append()` writes a whole batch to the current segment (opened on demand, the
  directory fsynced when it is created) and, with `fsync=True`, fsyncs it (fdatasync) in the
  log's own thread; when it returns the batch is in the segment (and on disk if fsynced);
  its `written` callback runs once the batch is in the file (the OS has it: a kill -9 of
  this process no longer loses it) and before the fsync ends (it is handed to the thread
  first, so the thread wakes while the callback works);
  when it raises, the segment is cut back to its last whole record and closed,
  and the next append starts a new segment, so a failed batch is never half-kept
  in front of a later one; a segment left holding no record is deleted, so
  appends that keep failing (a full disk) leave no empty segments behind;
- `write()` and `sync()` are its two halves, for a caller that writes a batch while the
  fsync of the one before still runs (pipelined commits, docs/checkpoints.md): fsyncs run
  one at a time in the log's thread, in the order they were asked for, each covering
  every byte written before it started (a later one finds its bytes covered and returns
  at once); once an fsync of a segment failed, every later one of it fails the same way
  without trying (Linux reports a writeback error once); `drop_partial(offset)` then cuts
  the segment back to the first byte not known to be on disk, once no fsync is queued;
- `retire()` deletes every segment (the caller has snapshotted what they hold)
  and fsyncs the directory; `close()` waits for the fsyncs queued before it, then fsyncs and closes the
  current segment;
- the open segment is zero-filled ahead of its writes (`RESERVE`, in the log's thread, between fsyncs), so a
  commit overwrites blocks the file already has and its fdatasync writes the data alone, without a journal
  commit for the file's new size and blocks (about a quarter less time per fsync on ext4); closing
  a segment (rotation, `close()`, `drop_partial`) cuts it back to its records, so only the segment open at a
  crash can end in unwritten reserve;
- `replay()` hands every good record of every segment, oldest first, to a
  handler (and deletes empty segments); the newest segment's unwritten reserve (zeros from the end of its
  last record to the end of the file) is cut off without a report; damage that reaches the end of the newest
  segment (a crash mid-append: a bad frame followed by nothing but zeros) is a torn tail, any other bad frame
  or undecodable record makes the whole segment bad: the store decides (callbacks) how each is cut, moved
  aside and reported (`cut_tail`, `move_aside`), and the rest still loads.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tagentd.storage.failpoints import check_disk_space, fsync_delay, fsync_fault
from tagentd.storage.records import HEADER, MAGIC, CorruptRecord, fsync_dir, is_unwritten, read_frames

#: How far ahead of its writes the open segment is zero-filled: the log's thread tops the reserve up to this much
#: whenever less than half of it is left (a write that outruns it extends the file as an append would). The next
#: fsync after a top-up commits the file's new size and blocks, as an append's does; the ones after it overwrite.
#: Small, so a full disk still fails the commits after it soon (a write into the reserve needs no space).
RESERVE = 16 * 1024


def is_torn_tail(data: bytes, exc: CorruptRecord) -> bool:
    """True if the bad frame is the last thing in `data` but zeros: what a crash in the middle of an append leaves
    (the rest of a segment is unwritten reserve, or the file grew and the bytes never reached the disk)."""
    if exc.reason.startswith("truncated"):
        return True
    written = data[exc.offset:].rstrip(b"\0")  # the frame's own trailing zero bytes go too: it must cover the rest
    if len(written) < HEADER.size:
        return True  # nothing, or part of a header, then zeros
    magic, length, _ = HEADER.unpack_from(data, exc.offset)
    return magic == MAGIC and HEADER.size + length >= len(written)


def move_aside(path: Path, corrupt_dir: Path, what: str, reason: str, prefix: str = "") -> str:
    """Move a corrupt file to `corrupt_dir/<prefix><name>.<unix time>`; return the problem message to report."""
    corrupt_dir.mkdir(mode=0o700, exist_ok=True)
    target = corrupt_dir / f"{prefix}{path.name}.{int(time.time())}"
    os.replace(path, target)
    return f"{what} {path} is corrupt ({reason}); moved it to {target}"


def cut_tail(path: Path, data: bytes, offset: int, keep_dir: Path | None = None) -> Path | None:
    """Truncate `path` (whose contents are `data`) to `offset` and fsync it.

    With `keep_dir`, the cut bytes are first written and fsynced to `keep_dir/<name>.tail.<unix time>`
    (returned), so nothing is destroyed before it is kept.
    """
    target = None
    if keep_dir is not None:
        keep_dir.mkdir(mode=0o700, exist_ok=True)
        target = keep_dir / f"{path.name}.tail.{int(time.time())}"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data[offset:].rstrip(b"\0"))  # the bytes that were written, without the reserve's zeros
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def timed_fsync(fd: int) -> float:
    """fdatasync `fd` (its data, and its size if that changed: all a replay needs; not its times); the seconds it
    took."""
    fsync_delay()
    fsync_fault()
    started = time.perf_counter()
    os.fdatasync(fd)
    return time.perf_counter() - started


class _Segment:
    """The open segment: its fd, bytes written, bytes an fsync has covered, the error of a failed fsync, and its
    reserve: the file's length, zeros from `size` on.

    The loop writes `size` (after each whole write); the fsync thread reads it and writes `synced` and `error`.
    `reserved` grows while the segment is open (only a failed write cuts it back) and is written under `lock`: by
    the fsync thread topping it up, by the loop when a write outruns it. The loop writes below `reserved` without
    the lock (the thread only writes zeros above it), and closes the fd under the lock, so the thread never writes
    to a closed (or reused) fd.
    """

    __slots__ = ("fd", "size", "synced", "error", "reserved", "lock", "closed")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.synced = size
        self.error: BaseException | None = None
        self.reserved = size
        self.lock = threading.Lock()
        self.closed = False

    def write(self, data: bytes, start: int) -> None:
        """In the loop: write `data` whole at `start` (the end of the records)."""
        if start + len(data) <= self.reserved:
            _pwrite_all(self.fd, data, start)
            return
        with self.lock:  # past the reserve: the file grows here, so no zeros may land on top of it
            _pwrite_all(self.fd, data, start)
            self.reserved = max(self.reserved, start + len(data))

    def cut(self, end: int) -> None:
        """Cut the file back to `end` (a failed write's partial bytes, and the reserve after them); may raise OSError."""
        with self.lock:
            self.reserved = end
            os.ftruncate(self.fd, end)

    def top_up(self) -> None:
        """In the fsync thread, after an fsync: zero-fill the file up to RESERVE past its records if less than half
        of that is left (the next fsync makes it the file's), so the commits after that overwrite blocks the file
        has. An optimization: a failure (a full disk) leaves the reserve as it is, and the writes extend the file as
        appends (or fail, as on a full disk)."""
        if self.error is not None or self.reserved - self.size >= RESERVE // 2:
            return
        with self.lock:
            if self.closed:
                return
            start, end = self.reserved, self.size + RESERVE  # the loop writes below `reserved` meanwhile, never above
            if end <= start:
                return
            try:
                _pwrite_all(self.fd, bytes(end - start), start)
                self.reserved = end
            except OSError:
                pass  # what was written of the zeros is reserve all the same: harmless

    def close(self, keep: int | None) -> None:
        """Cut the reserve off (to `keep` bytes, if given) and fsync, then close; the fsync thread writes no more."""
        with self.lock:
            self.closed = True
            try:
                if keep is not None:
                    os.ftruncate(self.fd, keep)
                os.fsync(self.fd)
            finally:
                os.close(self.fd)

    def sync(self, end: int) -> float | None:
        """In the fsync thread: make the first `end` bytes durable; the fsync's seconds, or None if an fsync that
        started after they were written already covered them. Once an fsync failed, every later one fails with
        its error without trying: after a failed fsync Linux may report the next one clean with the data lost."""
        if self.error is not None:
            raise self.error
        if self.synced >= end:
            return None
        target = self.size  # everything written so far: one fsync serves every write queued behind it
        try:
            seconds = timed_fsync(self.fd)
        except BaseException as exc:
            self.error = exc
            raise
        self.synced = max(self.synced, target)
        return seconds


class _Syncer:
    """The log's fsync thread: jobs run one at a time, in the order asked; each result reaches the loop through
    `call_soon_threadsafe`. Lighter than a one-thread ThreadPoolExecutor: asking is a queue put (no work item, no
    concurrent Future chained to an asyncio one, no idle-semaphore dance), and the thread touches nothing of the
    loop's but its self-pipe when it is done (the pool's took the GIL for its Future's condition and semaphore
    just as the loop wanted to resume)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[_Segment, int, asyncio.Future[float | None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wal-fsync", daemon=True)
        self._thread.start()

    def ask(self, segment: _Segment, end: int) -> asyncio.Future[float | None]:
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((segment, end, future))
        return future

    def stop(self) -> None:
        """End the thread once the jobs asked before have run, and return then (their results reach the loop as
        usual, in its next turns)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            segment, end, future = job
            try:
                outcome: tuple[float | None, BaseException | None] = (segment.sync(end), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting flush
                outcome = (None, exc)
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more
            if self._jobs.empty():
                segment.top_up()  # while nothing waits for this thread


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _settle(future: asyncio.Future[float | None], seconds: float | None, error: BaseException | None) -> None:
    if future.done():
        return  # cancelled meanwhile
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(seconds)


class SegmentLog:
    """The numbered `*.wal` segments of one directory; appends go to the newest one this process opened."""

    def __init__(self, directory: Path, on_fsync: Callable[[float], None] | None = None) -> None:
        self.dir = directory
        #: Told the seconds each append's fsync took (measured in the thread that ran it): the metrics' hook.
        self.on_fsync = on_fsync
        self.segment: Path | None = None
        #: Bytes written to the current segment (kept after close, so a caller's "is the segment full" check sees
        #: the last segment's size until the next one is opened).
        self.size = 0
        self._open_segment: _Segment | None = None
        # The fsyncs run in a thread of their own, not in the loop's default pool: a fsync hands its thread to
        # the loop and back once (two takes of the GIL), where the pool's idle threads all wake for each job
        # and each takes the GIL from the loop, mid-step, to find the queue empty again. One thread: fsyncs run
        # in the order they were asked for.
        self._syncer: _Syncer | None = None

    def _open(self) -> _Segment:
        if self._open_segment is None:
            number = 1 + max((int(p.stem) for p in self.dir.glob("*.wal") if p.stem.isdigit()), default=0)
            self.segment = self.dir / f"{number:08d}.wal"
            fd = os.open(self.segment, os.O_WRONLY | os.O_CREAT, 0o600)
            self.size = os.fstat(fd).st_size
            self._open_segment = _Segment(fd, self.size)
            fsync_dir(self.dir)
        return self._open_segment

    def write(self, data: bytes) -> int:
        """Write `data` whole at the end of the current segment (opened on demand); the offset where it begins.

        Not durable yet: `sync()` makes it so. On a failure the segment is cut back to that offset (where it
        still is open: an fsync of it may be running) and the error propagates; `drop_partial` closes it.
        """
        segment = self._open()
        start = segment.size
        try:
            check_disk_space(self.segment)
            segment.write(data, start)
        except BaseException:
            try:
                segment.cut(start)
            except OSError:
                pass  # `drop_partial` tries again; replay cuts a partial record or sets the segment aside
            raise
        segment.size = self.size = start + len(data)
        return start

    def sync(self) -> asyncio.Future[float | None]:
        """Queue an fsync of everything written to the current segment so far, in the log's thread, behind the fsyncs
        queued before it (so it starts the moment they end, without a turn of the loop in between); the future
        ends once it is on disk, or raises what the fsync raised (and so does every sync of this segment after a
        failed one). An fsync that starts after this one was asked for and covers its bytes serves it."""
        segment = self._open()
        if self._syncer is None:
            self._syncer = _Syncer()
        return self._syncer.ask(segment, segment.size)

    def synced(self, seconds: float | None) -> None:
        """Tell the metrics about an fsync that `sync()` ran (None: it was served by an earlier one)."""
        if seconds is not None and self.on_fsync is not None:
            self.on_fsync(seconds)

    async def append(self, data: bytes, fsync: bool = True, written: Callable[[], None] | None = None) -> None:
        """Write `data` whole to the current segment and (if `fsync`) fsync it in a thread; `written()` (if given) is
        called once the data is written, while the fsync runs. `written` must not raise.

        On any failure (or cancellation) the segment is cut back to its last whole record and closed before
        the error propagates.
        """
        start = self.size if self._open_segment is not None else None
        try:
            start = self.write(data)
            if fsync:
                syncing = self.sync()
                if written is not None:
                    written()  # after the fsync is handed over: its thread wakes while `written` works
                self.synced(await syncing)
            elif written is not None:
                written()
        except BaseException:
            self.drop_partial(start)
            raise

    def drop_partial(self, offset: int | None = None) -> None:
        """After a failed append: cut the segment back to `offset` (where the first record not known to be on disk
        begins; default: its end) and start a new one next time. Call it only once no fsync of it is queued.

        A segment that holds no record (the append that failed was its first) is deleted.
        """
        segment, self._open_segment = self._open_segment, None
        if segment is None:
            return
        if offset is not None:
            self.size = offset
        try:
            segment.close(keep=self.size)
        except OSError:
            pass  # the segment may keep a partial record or reserve; replay cuts it or sets the segment aside
        if self.size == 0 and self.segment is not None:
            try:
                self.segment.unlink()  # not fsynced: an empty segment that comes back after a crash replays as nothing
            except OSError:
                pass  # replaying an empty segment is harmless

    def retire(self) -> None:
        """Everything the segments hold is snapshotted: delete them all (the next append starts a new one)."""
        old = sorted(self.dir.glob("*.wal"))
        self._close_segment(cut=False)
        for path in old:
            path.unlink(missing_ok=True)
        fsync_dir(self.dir)
        self.size = 0  # the next segment starts empty: no second rotation right after this one

    def close(self) -> None:
        """End the fsync thread once the fsyncs queued before have run (on the segment, still open: none fails for
        want of it), then fsync and close the current segment, if one is open (a later append makes another)."""
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        self._close_segment()

    def _close_segment(self, cut: bool = True) -> None:
        """Close the open segment, cut back to its records (`cut`; not for a segment about to be deleted)."""
        segment, self._open_segment = self._open_segment, None
        if segment is not None:
            segment.close(keep=segment.size if cut else None)

    def replay(
        self,
        handle: Callable[[Path, bytes], None],
        on_torn_tail: Callable[[Path, bytes, CorruptRecord], None],
        on_bad: Callable[[Path, str], None],
        numbered_only: bool = False,
    ) -> bool:
        """Call `handle(segment, payload)` for every good record, segments in name order; True if any was bad.

        A CorruptRecord that `is_torn_tail` of the newest segment goes to `on_torn_tail(segment, data, exc)`
        (the records before it are kept); any other CorruptRecord, or a msgspec decode/validation error
        raised by `handle`, goes to `on_bad(segment, reason)`, which must move the segment aside. Any other
        exception of `handle` (e.g. a newer format refused) propagates.
        """
        segments = sorted(p for p in self.dir.glob("*.wal") if not numbered_only or p.stem.isdigit())
        lost = False
        for index, path in enumerate(segments):
            data = path.read_bytes()
            if not data:  # what failed appends of older versions left behind: nothing to keep
                path.unlink()
                continue
            newest = index == len(segments) - 1
            try:
                for _, payload in read_frames(data, path):
                    handle(path, payload)
            except CorruptRecord as exc:
                if newest and is_unwritten(data, exc.offset):
                    cut_tail(path, data, exc.offset)  # the reserve of the segment open at a crash: nothing lost
                    if exc.offset == 0:
                        path.unlink()
                elif newest and is_torn_tail(data, exc):
                    on_torn_tail(path, data, exc)
                else:
                    on_bad(path, str(exc))
                    lost = True
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                on_bad(path, f"undecodable record: {exc}")
                lost = True
        return lost
