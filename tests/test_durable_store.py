"""`DurableStore` in process (tagentd/runs/durable.py): runs driven by hand as the daemon drives them, flushed,
and read back by a fresh store.

What it guarantees: a run reads back equal (state, history, logs, memory) after any number of flushes; WAL segments
past their size are replaced by snapshots; a removed run stays removed; a failed write (fsync error, full disk)
loses nothing once the disk recovers and leaves no empty segment or temporary file; a finished run whose snapshot
a crash prevented gets it at the next load; a damaged record inside the newest segment sets the segment aside
whole; a record of a newer format is refused. What a real daemon keeps across kill -9 is tested in test_durability.py,
how it handles damaged files in test_checkpoints.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tagent_client import Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, Persist, StepFailed, StepSucceeded
from tagent_client.core.state import ErrorInfo, RunStatus, new_run_id
from tagent_client.errors import ConfigError
from tagentd.runs import durable as checkpoint
from tagentd.runs.durable import DurableStore
from tagentd.runs.run import Run, RunSource
from tagentd.storage import failpoints
from tagentd.storage.records import HEADER, frame, write_atomic

pytestmark = pytest.mark.timeout(180)


def _chain(ctx: Any) -> str:
    return ctx.step_name


def chain_plan(steps: int = 3) -> Any:
    pipeline = Pipeline("chain")
    for i in range(steps):
        pipeline.step(f"s{i}", fn=_chain, depends_on=[f"s{i - 1}"] if i else [])
    return pipeline.plan()


class Harness:
    """Runs driven by hand, as the daemon drives them: actions applied, changes reported to the store."""

    def __init__(self, store: DurableStore, plan: Any) -> None:
        self.store = store
        self.plan = plan
        self.pending: dict[str, list[Dispatch]] = {}
        self.runs: dict[str, Run] = {}
        self.clock = time.time()

    def now(self) -> float:
        self.clock += 0.001
        return self.clock

    def submit(self, **params: Any) -> Run:
        now = self.now()
        machine = RunMachine.new(self.plan, new_run_id(now), params=params, now=now)
        source = RunSource(path="/p/chain.py", source="# chain", source_hash="0" * 64)
        run = Run(source, self.plan, machine)
        run.audit("uid=0 pid=1", "submit", path=source.path)
        self.runs[run.id] = run
        self.store.created(run)
        self.pending[run.id] = []
        self.apply(run, machine.start(now))
        return run

    def apply(self, run: Run, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self.pending[run.id].append(action)
            elif isinstance(action, Persist):
                self.store.changed(run)
            elif isinstance(action, Emit):
                run.add_event(action.topic, action.data, self.clock)

    def step(self, run: Run, *, fail: bool = False) -> None:
        task = self.pending[run.id].pop(0)
        now = self.now()
        if fail:
            event: Any = StepFailed(task=task.task, attempt=task.attempt,
                                    error=ErrorInfo(type="ValueError", message="no", retryable=False))
        else:
            event = StepSucceeded(task=task.task, attempt=task.attempt, output={"step": task.step, "n": len(run.logs)})
        run.add_log(task.step, 20, f"{task.step} ran", now)
        self.apply(run, run.machine.handle(event, now))

    def flush(self) -> None:
        asyncio.run(self.store.flush())


def same(a: Run, b: Run) -> None:
    enc = msgspec.msgpack.encode
    assert enc(a.state) == enc(b.state)
    assert enc(a.history) == enc(b.history)
    assert enc(a.logs) == enc(b.logs)
    assert a.memory == b.memory and a.event_seq == b.event_seq and a.source == b.source


def load_all(store: DurableStore) -> dict[str, Run]:
    """Every stored run, whole: the unfinished ones as loaded, the finished ones read back from their snapshots."""
    recovered = store.load()
    runs = {run.id: run for run in recovered.runs}
    for entry in recovered.entries:
        if entry.run_id not in runs:
            runs[entry.run_id] = store.read(entry.run_id)
    return runs


def reopen(root: Path) -> dict[str, Run]:
    return load_all(DurableStore(root))


class TestDurableStore:
    def test_runs_read_back_equal_after_any_number_of_flushes(self, tmp_path: Path) -> None:
        # Given runs created, advanced, given memory and log lines over several flushes
        h = Harness(DurableStore(tmp_path), chain_plan())
        a, b, c = h.submit(n=1), h.submit(n=2), h.submit(n=3)
        h.flush()
        h.step(a)
        a.remember("k", {"v": 1})
        h.store.changed(a)
        h.step(b)
        h.flush()
        h.step(a)
        h.step(a)
        h.step(b, fail=True)
        h.flush()
        h.store.close()
        # When the store is opened again
        loaded = reopen(tmp_path)
        # Then every run is as it was: finished ones (with a snapshot) and unfinished ones (WAL only)
        assert set(loaded) == {a.id, b.id, c.id}
        for run in (a, b, c):
            same(loaded[run.id], run)
        assert loaded[a.id].state.status is RunStatus.COMPLETED and loaded[b.id].state.status is RunStatus.FAILED
        assert {p.stem for p in (tmp_path / "runs").glob("*.ckpt")} == {a.id, b.id}
        assert loaded[a.id].memory == {"k": {"v": 1}}

    def test_a_segment_past_its_size_is_replaced_by_snapshots(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # Given a store whose WAL segments rotate after 4 KB
        monkeypatch.setattr(checkpoint, "SEGMENT_BYTES", 4096)
        h = Harness(DurableStore(tmp_path), chain_plan(steps=6))
        runs = [h.submit(n=i) for i in range(8)]
        h.flush()
        # When runs advance over many flushes
        for round_ in range(6):
            for run in runs[: 8 - round_]:
                h.step(run)
            h.flush()
        h.store.close()
        # Then old segments are gone, every run with changes in them has a snapshot, and all read back equal
        segments = sorted((tmp_path / "wal").glob("*.wal"))
        kept = sum(p.stat().st_size for p in segments)
        # rotated, old ones deleted (numbering starts again at 1 once every segment is retired, so the name says nothing)
        assert len(segments) <= 1 and kept < h.store.stats["bytes"] - 4096, (segments, kept, h.store.stats["bytes"])
        assert len(list((tmp_path / "runs").glob("*.ckpt"))) == 8
        loaded = reopen(tmp_path)
        for run in runs:
            same(loaded[run.id], run)

    def test_a_removed_run_does_not_come_back(self, tmp_path: Path) -> None:
        h = Harness(DurableStore(tmp_path), chain_plan(steps=1))
        keep, drop = h.submit(), h.submit()
        h.flush()
        h.step(drop)
        h.flush()
        assert (tmp_path / "runs" / f"{drop.id}.ckpt").exists()
        h.store.remove(drop.id)
        h.flush()
        assert set(reopen(tmp_path)) == {keep.id}
        assert not (tmp_path / "runs" / f"{drop.id}.ckpt").exists()

    def test_a_failed_write_loses_nothing_once_the_disk_recovers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a run whose first flush fails in fsync (a full or failing disk)
        h = Harness(DurableStore(tmp_path), chain_plan())
        run = h.submit()
        h.step(run)
        real_fsync = os.fdatasync
        failures = iter([OSError(28, "No space left on device")])

        def flaky_fsync(fd: int) -> None:
            error = next(failures, None)
            if error is not None:
                raise error
            real_fsync(fd)

        monkeypatch.setattr(checkpoint.os, "fdatasync", flaky_fsync)  # what the WAL's commits call
        with pytest.raises(OSError, match="No space"):
            h.flush()
        # When the next flush succeeds (with more changes of its own)
        h.step(run)
        h.flush()
        h.store.close()
        # Then the changes of the failed flush are on disk too
        same(reopen(tmp_path)[run.id], run)

    def test_writes_that_fail_on_a_full_disk_leave_no_empty_segment_or_temporary_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a store, and a snapshot file, on a disk that is full (the failpoint: ENOSPC after each open)
        full = tmp_path / "full"
        full.touch()
        monkeypatch.setattr(failpoints, "_disk_full_flag", str(full))
        state = tmp_path / "state"
        state.mkdir()
        h = Harness(DurableStore(state), chain_plan())
        run = h.submit()
        # When flushes fail again and again, and a snapshot replacement fails
        for _ in range(3):
            with pytest.raises(OSError, match="No space"):
                h.flush()
        (state / "old.ckpt").write_bytes(b"old")
        with pytest.raises(OSError, match="No space"):
            write_atomic(state / "old.ckpt", b"new")
        # Then no WAL segment and no temporary snapshot file is left, and the old snapshot is untouched
        assert list((state / "wal").iterdir()) == []
        assert sorted(p.name for p in state.iterdir()) == ["old.ckpt", "runs", "wal"]
        assert (state / "old.ckpt").read_bytes() == b"old"
        # When space returns, Then the next flush writes everything into one segment
        full.unlink()
        h.flush()
        h.store.close()
        assert len(list((state / "wal").iterdir())) == 1
        same(reopen(state)[run.id], run)
        # And empty segments an older tagentd left behind are deleted when the store is loaded
        for number in (7, 8):
            (state / "wal" / f"{number:08d}.wal").touch()
        same(reopen(state)[run.id], run)
        assert len(list((state / "wal").iterdir())) == 1

    def test_a_finished_run_whose_snapshot_a_crash_prevented_gets_it_at_the_next_load(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Given a run that finished, with its WAL records written but its snapshot write crashed
        h = Harness(DurableStore(tmp_path), chain_plan(steps=1))
        run = h.submit()
        h.step(run)

        def crash(path: Path, payload: bytes) -> None:
            raise OSError(5, "crashed")

        monkeypatch.setattr(checkpoint, "write_atomic", crash)
        with pytest.raises(OSError):
            h.flush()
        monkeypatch.undo()
        assert not (tmp_path / "runs" / f"{run.id}.ckpt").exists()
        # When the store is loaded again
        store = DurableStore(tmp_path)
        loaded = load_all(store)
        # Then the run is finished and now has its snapshot, so dropping the WAL (rotation) cannot lose it
        same(loaded[run.id], run)
        for segment in (tmp_path / "wal").glob("*.wal"):
            segment.unlink()
        same(reopen(tmp_path)[run.id], run)

    def test_a_damaged_record_inside_the_newest_segment_is_set_aside_not_cut_off(self, tmp_path: Path) -> None:
        # Given a single WAL segment whose first record is damaged, with good records after it
        h = Harness(DurableStore(tmp_path), chain_plan())
        run = h.submit()
        h.flush()
        h.step(run)
        h.flush()
        h.store.close()
        (segment,) = (tmp_path / "wal").glob("*.wal")
        flip_middle_of_first_record(segment)
        # When it is loaded
        store = DurableStore(tmp_path)
        assert load_all(store) == {}
        # Then the segment is moved to corrupt/ whole and reported, not silently shortened
        assert not segment.exists()
        (kept,) = (tmp_path / "corrupt").glob(f"{segment.name}.*")
        assert kept.stat().st_size > 0 and any(str(segment) in p for p in store.problems)

    def test_a_newer_record_is_refused_even_if_its_layout_no_longer_decodes(self, tmp_path: Path) -> None:
        # Given a snapshot and, separately, a WAL record, each of a future format with a layout this code cannot read
        future = frame(msgspec.msgpack.encode({"type": "run-v2", "format": 2, "everything": ["different"]}))
        store = DurableStore(tmp_path)
        (tmp_path / "runs" / "future.ckpt").write_bytes(future)
        # When loaded, Then it is refused as newer (not moved aside as corrupt: a newer tagentd can still read it)
        with pytest.raises(ConfigError, match="newer tagentd"):
            store.load()
        assert (tmp_path / "runs" / "future.ckpt").exists() and not (tmp_path / "corrupt").exists()
        (tmp_path / "runs" / "future.ckpt").unlink()
        (tmp_path / "wal" / "00000001.wal").write_bytes(future)
        with pytest.raises(ConfigError, match="00000001.wal"):
            DurableStore(tmp_path).load()


def flip_middle_of_first_record(path: Path) -> None:
    data = bytearray(path.read_bytes())
    _, length, _ = HEADER.unpack_from(data, 0)
    data[HEADER.size + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))
