"""A dependent step is dispatched before its dependency's completion is fsynced (docs/checkpoints.md, group
commit): after a kill -9 at any moment, the WAL never holds a step's completion without its dependency's."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.core.state import StepStatus
from tagentd.runs.durable import DurableStore

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

STEPS = 300
CHAIN = f'''
from tagent_client import Pipeline


async def step(ctx):
    return ctx.step_name


pipeline = Pipeline("overlap_chain")
for i in range({STEPS}):
    pipeline.step(f"s{{i:03d}}", fn=step, depends_on=[f"s{{i - 1:03d}}"] if i else None)
'''


def completed_on_disk(state_dir: Path, run_id: str) -> list[str]:
    """The steps of the run that its state dir says are COMPLETED, read as the next start reads it."""
    recovered = DurableStore(state_dir).load()
    for run in recovered.runs:
        if run.id == run_id:
            return [name for name, step in run.state.steps.items() if step.status is StepStatus.COMPLETED]
    entry = next(e for e in recovered.entries if e.run_id == run_id)  # finished: all of it is in its snapshot
    assert entry.status == "completed", entry
    return [f"s{i:03d}" for i in range(STEPS)]


def test_after_kill9_mid_chain_no_completion_is_on_disk_without_its_dependencys(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    rng = random.Random()
    # Given a durable daemon running a chain of no-op steps, each dispatched in the turn its dependency's result
    # arrived, while the commit writing that result is still being fsynced
    daemon = make_daemon(workers=1).start()
    path = write_pipeline(tmp_path, "chain.py", CHAIN)
    with daemon.client() as client:
        run_id = client.submit(path).id
    seen = 0
    for kill in range(4):
        if kill:
            daemon.start()
        # When the daemon and its worker are killed with SIGKILL at a random moment of the chain
        target = min(STEPS - 1, seen + rng.randint(5, 40))
        with daemon.client() as client:
            wait_until(lambda: sum(s.status == "completed" for s in client.status(run_id).steps.values()) >= target,
                       timeout=60, what=f"{target} steps to complete")
        daemon.kill9()
        # Then every step the state dir holds as completed has its dependency completed too: a prefix of the chain
        done = sorted(completed_on_disk(daemon.state_dir, run_id))
        assert done == [f"s{i:03d}" for i in range(len(done))], f"completed on disk, not a prefix: {done[-5:]}"
        assert len(done) >= target  # and nothing the daemon reported completed was lost
        seen = len(done)
        if seen >= STEPS:
            break
    daemon.start()
    with daemon.client(timeout=30) as client:
        assert client.wait(run_id, timeout=60).status == "completed"
