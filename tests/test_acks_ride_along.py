"""Acknowledgements of results do not make frames of their own (docs/protocol.md, Workers): they ride with the next
frame to their worker, or leave at the pool's next supervision tick, so results ending one after another cost the
daemon no send each and their worker no wake-up each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_process_left_behind")]

STEPS = 100

STAGGERED = f'''
import asyncio

from tagent_client import ExecutionMode, Pipeline


async def wait(ctx):
    await asyncio.sleep(int(ctx.step_name[1:]) / 1000)  # ok-sleep: step i ends i ms after the first
    return ctx.step_name


pipeline = Pipeline("staggered", max_concurrent_steps={STEPS})
for i in range({STEPS}):
    pipeline.step(f"s{{i:03d}}", fn=wait, execution_mode=ExecutionMode.CONCURRENT)
'''


def frames_sent(daemon: DaemonProcess) -> int:
    with daemon.client() as client:
        return int(client.daemon_status().stats.get("worker_frames_sent", 0))


def test_results_ending_one_by_one_get_their_acknowledgements_in_a_few_frames(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon with one worker, and 100 concurrent steps that end one by one, 1 ms apart
    daemon = make_daemon(workers=1).start()
    path = write_pipeline(tmp_path, "staggered.py", STAGGERED)
    with daemon.client(timeout=30) as client:
        assert client.wait(client.submit(path).id, timeout=60).success  # the file is loaded: only the run counts
        before = frames_sent(daemon)

        # When they run: ~100 ms of results arriving one (or a few) at a time
        result = client.wait(client.submit(path).id, timeout=60)
        assert result.success, result.error
        assert sorted(result.step_outputs.values()) == [f"s{i:03d}" for i in range(STEPS)]
    sent = frames_sent(daemon) - before

    # Then the worker got its 100 tasks in a few frames (8, 16, 32, the rest) and the acknowledgements with the
    # supervision ticks (every 0.1 s), not one frame per batch of results
    assert sent <= 10, f"{sent} frames were sent to the worker for one run of {STEPS} staggered steps"
