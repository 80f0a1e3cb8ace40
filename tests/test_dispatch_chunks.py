"""A worker handed many tasks in one turn starts the first of them while the daemon still encodes the others: they
leave in frames of growing size, the first as soon as it is full (LocalExecutor.pump), not all in one frame at the
end of the turn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_process_left_behind")]

PER_WORKER = 128  # worker_concurrency's default: each worker takes this many at once
WIDTH = 2 * PER_WORKER

WIDE = f'''
import asyncio

from tagent_client import ExecutionMode, Pipeline


async def seen():
    tasks = len(asyncio.all_tasks())  # the attempts this worker has been handed so far (and its own few tasks)
    await asyncio.sleep(0.2)  # ok-sleep: every attempt stays alive until all have started
    return tasks


pipeline = Pipeline("wide", max_concurrent_steps={WIDTH})
for i in range({WIDTH}):
    pipeline.step(f"w{{i:03d}}", fn=seen, execution_mode=ExecutionMode.CONCURRENT)
'''


def test_the_first_attempts_of_a_wide_dispatch_start_before_the_worker_has_all_of_them(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon whose 2 workers each take 128 steps at once, and 256 concurrent steps that each count the
    # asyncio tasks of their worker when they start (an attempt is a task from the moment its frame is read)
    daemon = make_daemon(workers=2).start()
    path = write_pipeline(tmp_path, "wide.py", WIDE)
    fewest = []
    with daemon.client(timeout=30) as client:
        for _ in range(4):  # the first run waits for its file to be imported; a worker kept asleep by load sees all
            # When the run starts and the daemon hands each worker its 128 tasks in one turn
            result = client.wait(client.submit(path).id, timeout=60)
            assert result.success, result.error
            fewest.append(min(result.step_outputs.values()))
            # Then the first attempt to start saw only the first frames' tasks of its worker, not all 128 of them
            if fewest[-1] < PER_WORKER // 2:
                break
    assert min(fewest) < PER_WORKER // 2, f"the first attempts saw {fewest} tasks in their worker"
