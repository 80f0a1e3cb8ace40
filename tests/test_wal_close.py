"""`SegmentLog.close()` (tagentd/storage/wal.py) ends the log's fsync thread only once the fsyncs queued before it
have run on the segment, still open: a store closed while a commit's fsync waits in the queue loses nothing and
reports no spurious failure."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tagentd.storage import wal
from tagentd.storage.wal import SegmentLog


@pytest.mark.timeout(30)
def test_close_waits_for_the_fsyncs_queued_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = wal.timed_fsync
    held = threading.Event()  # the first fsync waits on it in the fsync thread, as on a slow disk
    synced_fds: list[int] = []

    def slow_fsync(fd: int) -> float:
        assert held.wait(20), "the held fsync was never released"
        synced_fds.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(wal, "timed_fsync", slow_fsync)

    async def scenario() -> list[float | None | BaseException]:
        # Given a log whose first fsync is held in its thread, and a second write and fsync queued behind it
        log = SegmentLog(tmp_path)
        log.write(b"first batch")
        first = log.sync()
        log.write(b"second batch")
        second = log.sync()
        syncer = log._syncer
        assert syncer is not None
        stop = syncer.stop

        def stop_then_release() -> None:  # the held fsync goes on once close() has begun ending the thread
            held.set()
            stop()

        syncer.stop = stop_then_release  # type: ignore[method-assign]
        # When the log is closed
        log.close()
        return await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)

    outcomes = asyncio.run(scenario())
    # Then both queued fsyncs ran on the open segment and succeeded, and both batches are in it
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert synced_fds, "no queued fsync ran"
    assert (tmp_path / "00000001.wal").read_bytes() == b"first batchsecond batch"
