"""The open WAL segment's reserve (tagentd/storage/wal.py): zeros written ahead of the records, so a commit's fdatasync
overwrites blocks the file already has instead of growing it (a journal commit for the size and blocks on ext4).

What must hold whatever the reserve does: every record written comes back in order, the zeros are never read as
damage, a crash leaves nothing a replay reports, and a closed segment is cut back to its records.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagentd.storage.records import HEADER, CorruptRecord, frame, read_frames, written_frames
from tagentd.storage.wal import RESERVE, SegmentLog, is_torn_tail

pytestmark = pytest.mark.timeout(60)


def replayed(directory: Path) -> tuple[list[bytes], list[str]]:
    """What a store would load from `directory`'s segments, and every problem it would report."""
    records: list[bytes] = []
    problems: list[str] = []
    SegmentLog(directory).replay(
        lambda _path, payload: records.append(payload),
        lambda path, _data, exc: problems.append(f"torn tail of {path.name} at {exc.offset}"),
        lambda path, reason: problems.append(f"bad {path.name}: {reason}"),
    )
    return records, problems


async def commit_all(log: SegmentLog, payloads: list[bytes]) -> None:
    for payload in payloads:
        await log.append(frame(payload))


def test_a_crash_leaves_a_reserve_that_replays_as_nothing_and_is_cut_off(tmp_path: Path) -> None:
    # Given a log that committed enough records for its thread to reserve space after them
    log = SegmentLog(tmp_path)
    payloads = [b"record %d" % i for i in range(50)]
    asyncio.run(commit_all(log, payloads))
    (segment,) = tmp_path.glob("*.wal")
    records_end = sum(HEADER.size + len(p) for p in payloads)
    assert segment.stat().st_size > records_end, "no reserve was written"
    assert not segment.read_bytes()[records_end:].strip(b"\0")
    # When the process dies without closing the log, and a store replays the directory
    records, problems = replayed(tmp_path)
    # Then every record comes back in order, nothing is reported, and the reserve is cut off the segment
    assert records == payloads
    assert problems == []
    assert segment.stat().st_size == records_end


def test_close_cuts_the_segment_back_to_its_records(tmp_path: Path) -> None:
    # Given a log with a reserve after its records
    log = SegmentLog(tmp_path)
    asyncio.run(commit_all(log, [b"one", b"two", b"three"]))
    (segment,) = tmp_path.glob("*.wal")
    # When it is closed
    log.close()
    # Then the segment holds its records and nothing else (an older segment never ends in zeros)
    assert segment.read_bytes() == frame(b"one") + frame(b"two") + frame(b"three")


def test_writes_larger_than_the_reserve_and_writes_into_it_interleave_without_loss(tmp_path: Path) -> None:
    # Given batches that alternate between small ones (inside the reserve) and ones several reserves long,
    # committed one after the other while the log's thread tops the reserve up between them
    payloads = []
    for i in range(40):
        payloads.append(b"small %d" % i)
        if i % 7 == 0:
            payloads.append(bytes([i + 1]) * (3 * RESERVE + i))
    log = SegmentLog(tmp_path)
    asyncio.run(commit_all(log, payloads))
    # When the directory is replayed (the log never closed: a crash)
    records, problems = replayed(tmp_path)
    # Then every byte of every batch is there, in order
    assert problems == []
    assert records == payloads


def test_a_torn_write_into_the_reserve_is_a_torn_tail_and_what_was_before_it_loads(tmp_path: Path) -> None:
    # Given a crash in the middle of writing a record into the reserve: half of it on disk, zeros after it
    log = SegmentLog(tmp_path)
    asyncio.run(commit_all(log, [b"kept 1", b"kept 2"]))
    (segment,) = tmp_path.glob("*.wal")
    data = bytearray(segment.read_bytes())
    end = 2 * HEADER.size + len(b"kept 1") + len(b"kept 2")
    torn = frame(b"the record a crash cut in two")[:20]
    data[end:end + len(torn)] = torn
    segment.write_bytes(bytes(data))
    # When the directory is replayed
    records, problems = replayed(tmp_path)
    # Then the records before it load and the torn one is reported as the torn tail it is (not a bad segment)
    assert records == [b"kept 1", b"kept 2"]
    assert problems == [f"torn tail of {segment.name} at {end}"]


@pytest.mark.parametrize(("tail", "torn"), [
    (lambda f: f[:-3] + b"\0" * 100, True),                  # a short payload, then reserve
    (lambda f: f[:7] + b"\0" * 100, True),                   # part of a header, then reserve
    (lambda f: f[:1] + b"\0" * 100, True),                   # one byte of a header, then reserve
    (lambda f: f[:-3] + b"\0" * 100 + frame(b"later"), False),  # damage with a good frame after it
])
def test_damage_followed_only_by_reserve_counts_as_a_torn_tail(tail: object, torn: bool, tmp_path: Path) -> None:
    data = frame(b"good") + tail(frame(b"last record"))  # type: ignore[operator]
    with pytest.raises(CorruptRecord) as caught:
        list(read_frames(data, tmp_path))
    assert is_torn_tail(data, caught.value) is torn


def test_written_frames_end_at_the_reserve_and_still_raise_at_damage(tmp_path: Path) -> None:
    good = frame(b"a") + frame(b"b")
    assert [p for _, p in written_frames(good + b"\0" * RESERVE, tmp_path)] == [b"a", b"b"]
    with pytest.raises(CorruptRecord):
        list(written_frames(good + b"XX" + b"\0" * 10, tmp_path))


def test_a_segment_that_only_ever_held_reserve_is_deleted_at_replay(tmp_path: Path) -> None:
    # Given the newest segment holds zeros only (its first record never reached the disk)
    (tmp_path / "00000001.wal").write_bytes(frame(b"older"))
    (tmp_path / "00000002.wal").write_bytes(b"\0" * RESERVE)
    # When the directory is replayed
    records, problems = replayed(tmp_path)
    # Then the older segment's record loads, nothing is reported, and the empty segment is gone
    assert (records, problems) == ([b"older"], [])
    assert sorted(p.name for p in tmp_path.glob("*.wal")) == ["00000001.wal"]


CHAIN = """
from tagent_client import Pipeline

pipeline = Pipeline("reserve_chain")


async def first(ctx):
    return 1


async def second(ctx, first):
    return first + 1


pipeline.task(first)
pipeline.task(second, depends_on=["first"])
"""


def test_a_daemon_killed_with_its_segment_open_starts_again_without_a_problem(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a durable daemon that completed three runs, so its WAL segment ends in reserve, killed with SIGKILL
    daemon = make_daemon(workers=1).start()
    path = write_pipeline(tmp_path, "chain.py", CHAIN)
    with daemon.client() as client:
        run_ids = [client.submit(path).id for _ in range(3)]
        for run_id in run_ids:
            assert client.wait(run_id, timeout=30).status == "completed"
    (segment,) = (daemon.state_dir / "wal").glob("*.wal")
    data = segment.read_bytes()
    records_end = max(offset + HEADER.size + len(payload) for offset, payload in written_frames(data, segment))
    assert len(data) > records_end and not data[records_end:].strip(b"\0"), "the segment has no reserve"
    daemon.kill9()
    # When it starts again
    daemon.start()
    # Then it reports no problem with its state and set nothing aside, and the three runs are there, completed
    done = daemon.admin("status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["checkpoint_problems"] == []
    assert not list((daemon.state_dir / "corrupt").glob("*"))
    with daemon.client() as client:
        assert [client.result(run_id).step_outputs["second"] for run_id in run_ids] == [2, 2, 2]
