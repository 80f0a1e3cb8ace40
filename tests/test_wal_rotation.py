"""The run store's WAL rotation stays off the daemon's loop.

A segment fills every few runs of a wide fan-out (16 MB); retiring it deletes the file and fsyncs around it, which
took 10-60 ms on the loop before, while every result and dispatch of the running fan-out waited.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tagent_client import Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, Emit, StepSucceeded
from tagent_client.core.state import RunStatus, new_run_id
from tagentd.runs.durable import DurableStore
from tagentd.runs.run import Run, RunSource
from tagentd.storage.wal import SegmentLog


async def _noop() -> None:
    return None


def _plan(steps: int) -> object:
    pipeline = Pipeline("rotating")
    for i in range(steps):
        pipeline.step(f"s{i}", fn=_noop, depends_on=[f"s{i - 1}"] if i else [])
    return pipeline.plan()


def test_a_full_segment_is_retired_in_a_thread_and_nothing_is_lost(tmp_path: Path, monkeypatch) -> None:
    # Given a store whose segments rotate after 2 KB, and a note of the thread each retirement runs in
    threads: list[threading.Thread] = []
    real_retire = SegmentLog.retire

    def noted_retire(self: SegmentLog) -> None:
        threads.append(threading.current_thread())
        real_retire(self)

    monkeypatch.setattr(SegmentLog, "retire", noted_retire)
    plan = _plan(8)

    async def drive() -> tuple[Run, threading.Thread]:
        store = DurableStore(tmp_path, segment_bytes=2048)
        machine = RunMachine.new(plan, new_run_id(), now=1.0)
        run = Run(RunSource(path="/p/r.py", source="# r", source_hash="0" * 64), plan, machine)
        store.created(run)
        pending: list[Dispatch] = []

        def apply(actions: list) -> None:
            for action in actions:
                if isinstance(action, Emit):
                    run.add_event(action.topic, action.data, 2.0)
                elif isinstance(action, Dispatch):
                    pending.append(action)
            store.changed(run)

        apply(machine.start(1.0))
        # When the run goes on over many flushes, past several segments' size
        while pending:
            task = pending.pop(0)
            apply(machine.handle(StepSucceeded(task=task.task, attempt=task.attempt, output="x" * 300), 2.0))
            await store.flush()
        store.close()
        return run, threading.current_thread()

    run, loop_thread = asyncio.run(drive())
    # Then segments were retired, never on the loop's thread
    assert threads, "no segment was retired"
    assert all(thread is not loop_thread for thread in threads), threads
    # And the run reads back whole
    assert run.state.status is RunStatus.COMPLETED
    recovered = DurableStore(tmp_path)
    entries = {entry.run_id: entry for entry in recovered.load().entries}
    assert entries[run.id].status == "completed" and entries[run.id].steps_done == 8
    assert recovered.read(run.id).state.steps["s7"].output == "x" * 300
