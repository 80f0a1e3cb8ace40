"""The WAL's fsyncs (tagentd/storage/wal.py) run in the log's own thread, and wake no other.

Every commit of a durable daemon fsyncs its WAL segment in a thread while the loop goes on. Run in the loop's
default pool, each fsync woke every idle thread of the pool (they all wait on the pool's one queue, and each
one woken takes the GIL from the loop to find the queue empty again): GIL hand-offs in the middle of a chain
step's hand-off (issue 17). Measured here by the context switches of the pool's idle threads, read from /proc.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tagentd.storage.wal import SegmentLog

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread switches from /proc")


def switches(native_id: int) -> int:
    """How often the thread has been switched out, waiting or preempted (a wake-up costs at least one)."""
    counts = {}
    for line in Path(f"/proc/self/task/{native_id}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            counts[key] = int(value)
    return sum(counts.values())


def test_appends_with_fsync_leave_the_loops_idle_pool_threads_asleep(tmp_path: Path) -> None:
    async def scenario() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        # Given a loop whose default pool has four idle threads (each started by a job, then left waiting)
        pool = ThreadPoolExecutor(4, thread_name_prefix="idle-pool")
        loop.set_default_executor(pool)
        all_started = threading.Barrier(4)
        await asyncio.gather(*(loop.run_in_executor(None, all_started.wait, 10) for _ in range(4)))
        idle = [t for t in threading.enumerate() if t.name.startswith("idle-pool")]
        assert len(idle) == 4
        log = SegmentLog(tmp_path)
        await log.append(b"first", fsync=True)  # the log's own thread, if it has one, starts now
        before = {t.name: switches(t.native_id) for t in idle}
        # When the log appends and fsyncs 30 batches, one after the other, as commits do
        for i in range(30):
            await log.append(b"record %d" % i, fsync=True)
        after = {t.name: switches(t.native_id) for t in idle}
        log.close()
        pool.shutdown()
        return {name: after[name] - before[name] for name in before}

    # Then none of the pool's threads was woken
    assert asyncio.run(scenario()) == {f"idle-pool_{i}": 0 for i in range(4)}
