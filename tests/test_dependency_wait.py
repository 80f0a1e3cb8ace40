"""`await ctx.dependency(name, timeout=...)` (docs/semantics.md "Waiting for a dependency inside a step"): a step
waits for a dependency it started without — its output once it completes, None once it ends otherwise,
TimeoutError after `timeout` — in-process and through a real daemon, with equal results; a parked wait is
released when its attempt ends, and a daemon restart does not wedge a waiting step."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client import DependencyType, Pipeline, run_pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, StepSucceeded
from tagent_client.run import dependency
from tagent_client.run.services import LocalServices

PIPELINE = """
    import asyncio

    from pydantic import BaseModel

    from tagent_client import DependencyType, ExecutionMode, Pipeline
    from tagent_client.errors import InvalidRequest, NotFound

    SOFT, CONCURRENT = DependencyType.SOFT, ExecutionMode.CONCURRENT

    class Report(BaseModel):
        pages: int

    async def waiter(ctx):
        at_start = ctx.inputs["slow"]
        report = await ctx.dependency("slow", timeout=30)
        return {"at_start": at_start, "typed": isinstance(report, Report), "pages": report.pages}

    def sync_waiter(ctx):
        report = asyncio.run(ctx.dependency("slow", timeout=30))
        return {"typed": isinstance(report, Report), "pages": report.pages}

    async def slow(ctx):
        await asyncio.sleep(0.3)  # ok-sleep: the step's own work, slower than its waiters' start
        return Report(pages=3)

    def broken(ctx):
        raise ValueError("broken on purpose")

    async def after_broken(ctx):
        return {"broken": await ctx.dependency("broken", timeout=30)}

    async def held(ctx):
        message = await ctx.receive(timeout=30)  # sent by `impatient` once it has timed out (the only sender)
        return "released" if message is not None else "never released"

    async def impatient(ctx):
        try:
            await ctx.dependency("held", timeout=0.2)
            outcome = "no timeout"
        except TimeoutError as exc:
            outcome = str(exc)
        await ctx.send("dep_wait", "release")
        return outcome

    async def unknown(ctx):
        try:
            await ctx.dependency("nope")
            return "no error"
        except NotFound as exc:
            return str(exc)

    async def serial_waiter(ctx):
        try:
            await ctx.dependency("serial_dep", timeout=30)
            return "no error"
        except InvalidRequest as exc:
            return str(exc)

    pipeline = Pipeline("dep_wait")
    pipeline.step("serial_waiter", fn=serial_waiter, depends_on={"serial_dep": SOFT})  # SERIAL, the default
    pipeline.step("serial_dep", fn=lambda ctx: "serial done")
    pipeline.step("waiter", fn=waiter, depends_on={"slow": SOFT}, execution_mode=CONCURRENT)
    pipeline.step("sync_waiter", fn=sync_waiter, depends_on={"slow": SOFT}, execution_mode=CONCURRENT)
    pipeline.step("slow", fn=slow, output_schema=Report, execution_mode=CONCURRENT)
    pipeline.step("broken", fn=broken, required=False, max_retries=0, execution_mode=CONCURRENT)
    pipeline.step("after_broken", fn=after_broken, depends_on={"broken": SOFT}, execution_mode=CONCURRENT)
    pipeline.step("held", fn=held, execution_mode=CONCURRENT)
    pipeline.step("impatient", fn=impatient, depends_on={"held": SOFT}, execution_mode=CONCURRENT)
    pipeline.step("unknown", fn=unknown, depends_on={"held": SOFT, "slow": SOFT}, execution_mode=CONCURRENT)
"""

EXPECTED = {
    "waiter": {"at_start": None, "typed": True, "pages": 3},
    "sync_waiter": {"typed": True, "pages": 3},
    "slow": {"pages": 3},
    "after_broken": {"broken": None},
    "held": "released",
    "impatient": "step 'impatient' waited 0.2s for its dependency 'held', which is still running",
    "serial_waiter": "step 'serial_waiter' waits for its dependency 'serial_dep', which cannot start while "
                     "'serial_waiter' runs: both are SERIAL and SERIAL steps never overlap; make one of them CONCURRENT",
    "serial_dep": "serial done",
    "unknown": "step 'unknown' has no dependency 'nope' (its dependencies: held, slow); ctx.dependency() waits "
               "only for a step named in its depends_on",
}

ONE_SLOT = """
    from tagent_client import DependencyType, ExecutionMode, Pipeline

    async def first(ctx):
        return {"second": await ctx.dependency("second", timeout=10)}

    def second(ctx):
        return "second done"

    pipeline = Pipeline("dep_wait_one_slot", max_concurrent_steps=1)
    pipeline.step("first", fn=first, depends_on={"second": DependencyType.SOFT},
                  execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("second", fn=second, execution_mode=ExecutionMode.CONCURRENT)
"""

HELD = """
    from tagent_client import DependencyType, ExecutionMode, Pipeline

    async def held(ctx):
        message = await ctx.receive(timeout=60)  # the test sends it
        return message.payload if message is not None else None

    async def waiter(ctx):
        return {"held": await ctx.dependency("held"), "attempt": ctx.attempt}

    async def short(ctx):
        return await ctx.dependency("held")  # outlives its step's timeout

    pipeline = Pipeline("dep_wait_held")
    pipeline.step("held", fn=held, execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("waiter", fn=waiter, depends_on={"held": DependencyType.SOFT},
                  execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("short", fn=short, depends_on={"held": DependencyType.SOFT}, timeout=5, max_retries=0,
                  required=False, execution_mode=ExecutionMode.CONCURRENT)
"""


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _local(path: Path) -> Any:
    return asyncio.run(asyncio.wait_for(run_pipeline(_load(path).pipeline), timeout=40))


def _plain(outputs: dict[str, Any]) -> dict[str, Any]:
    return {name: value.model_dump() if hasattr(value, "model_dump") else value for name, value in outputs.items()}


def _waits(daemon: DaemonProcess) -> dict[str, int]:
    with daemon.client() as client:
        return client.daemon_status().stats["dependency_waits"]


@pytest.mark.timeout(120)
def test_a_step_waits_inside_its_body_for_its_dependencies_alike_in_process_and_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a pipeline whose SOFT dependents start with their dependencies and then await them: a slower one that
    # completes (async and sync waiters), one that fails, one that outlasts the waiter's timeout, a SERIAL one that
    # cannot start while its SERIAL waiter runs, and a name that is no dependency; and a pipeline of one slot whose
    # first step awaits the second
    path = write_pipeline(tmp_path, "dep_wait.py", PIPELINE)
    one_slot = write_pipeline(tmp_path, "dep_wait_one_slot.py", ONE_SLOT)
    daemon = make_daemon(workers=2).start()

    # When both run through the daemon and in this process
    with daemon.client() as client:
        remote = client.wait(client.submit(path).id, timeout=60)
        remote_one = client.wait(client.submit(one_slot).id, timeout=30)
    local, local_one = _local(path), _local(one_slot)

    # Then each waiter got the completed output typed by its schema (having started without it), None for the
    # failed dependency, a clear TimeoutError, at once a clear error for the SERIAL wait that could never end, a clear
    # unknown-name error; the one-slot run completed because
    # the waiting step lent its slot; and both ways agree
    for result in (remote, local):
        assert result.status == "completed", result.summary()
        outputs = _plain(result.step_outputs)
        assert outputs == EXPECTED, result.summary()
        assert result.step_metadata["broken"]["status"] == "failed"
    for result in (remote_one, local_one):
        assert result.status == "completed", result.summary()
        assert result.step_outputs == {"first": {"second": "second done"}, "second": "second done"}
        assert result.step_metadata["first"]["attempts"] == 1  # not a retry after a TimeoutError


@pytest.mark.timeout(120)
def test_a_parked_wait_ends_with_its_attempt_and_a_daemon_restart_does_not_wedge_the_step(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon running a pipeline whose `held` step waits for a message, `waiter` awaits it without a
    # timeout and `short` awaits it past its own step timeout of 5 s
    path = write_pipeline(tmp_path, "dep_wait_held.py", HELD)
    daemon = make_daemon(workers=2).start()
    with daemon.client() as client:
        first = client.submit(path).id
        cancelled = client.submit(path).id
    wait_until(lambda: _waits(daemon)["parked"] == 4, 20, what="both runs' waiters parked")

    # When the second run is cancelled
    with daemon.client() as client:
        client.cancel(cancelled)
    # Then its waits end (their dependency was cancelled: None for them) and only the first run's stay parked
    wait_until(lambda: _waits(daemon)["parked"] == 2, 20, what="the cancelled run's waits to end")

    # When `short` outlives its step timeout
    with daemon.client() as client:
        wait_until(lambda: client.status(first).steps["short"].status == "failed", 20, what="short to time out")
    # Then its parked wait is released, and only `waiter` still waits
    wait_until(lambda: _waits(daemon) == {"parked": 1, "answered": 2, "released": 1}, 20,
               what="short's wait released")

    # When the daemon is killed (-9) while `waiter` waits, and started again
    daemon.kill9()
    daemon.start()
    # Then recovery runs `waiter` again, it waits again, and gets `held`'s output once `held` completes
    wait_until(lambda: _waits(daemon)["parked"] == 1, 30, what="the re-run waiter parked again")
    with daemon.client() as client:
        client.send("dep_wait_held", "go")
        result = client.wait(first, timeout=30)
    assert result.step_outputs["held"] == "go"
    assert result.step_outputs["waiter"] == {"held": "go", "attempt": 2}
    assert result.step_metadata["short"]["status"] == "failed"
    assert "timed out" in (result.step_metadata["short"].get("error") or "")


@pytest.mark.timeout(120)
def test_a_parked_wait_ends_when_its_worker_dies_and_the_rerun_waits_again(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon with one worker, running a pipeline whose `waiter` awaits `held`, which waits for a message
    path = write_pipeline(tmp_path, "dep_wait_held.py", HELD)
    daemon = make_daemon(workers=1).start()
    with daemon.client() as client:
        run_id = client.submit(path).id
    wait_until(lambda: _waits(daemon)["parked"] >= 1, 20, what="the waiter parked")
    (worker,) = daemon.worker_pids()

    # When the worker is killed (-9)
    os.kill(worker, signal.SIGKILL)

    # Then the parked waits of its attempts are released, the waiting steps run again on a new worker and wait again,
    # and `waiter` gets `held`'s output once it completes
    wait_until(lambda: _waits(daemon)["released"] >= 1, 30, what="the dead worker's waits released")
    wait_until(lambda: _waits(daemon)["parked"] >= 1 and worker not in daemon.worker_pids(), 30,
               what="the re-run waiter parked again")
    with daemon.client() as client:
        client.send("dep_wait_held", "go")
        result = client.wait(run_id, timeout=30)
    assert result.step_outputs["held"] == "go"
    assert result.step_outputs["waiter"] == {"held": "go", "attempt": 2}


def test_the_engine_lends_a_waiting_attempts_slot_only_while_it_waits_and_only_for_the_current_attempt() -> None:
    # Given a run of one slot whose `first` (dispatched) will wait for `second` and `third` (queued)
    pipeline = Pipeline("lend", max_concurrent_steps=1)
    pipeline.step("first", fn=lambda ctx: 1, depends_on={"second": DependencyType.SOFT}, execution_mode="concurrent")
    pipeline.step("second", fn=lambda ctx: 2, execution_mode="concurrent")
    pipeline.step("third", fn=lambda ctx: 3, execution_mode="concurrent")
    machine = RunMachine.new(pipeline.plan(), "r1")
    assert [a.task for a in machine.start(0.0) if isinstance(a, Dispatch)] == ["first"]

    # When a stale attempt of `first` lends its slot, nothing starts
    assert machine.lend_slot("first", 7, True, 1.0) == []
    # When the current attempt of `first` waits, its slot goes to `second` (one slot: not also to `third`)
    assert [a.task for a in machine.lend_slot("first", 1, True, 1.0) if isinstance(a, Dispatch)] == ["second"]
    # When `first` stops waiting, it counts again: `second` finishing frees the only slot, so nothing new starts
    assert machine.lend_slot("first", 1, False, 2.0) == []
    after = machine.handle(StepSucceeded(task="second", attempt=1, output=2), 3.0)
    assert not [a for a in after if isinstance(a, Dispatch)]
    # When `first` ends, `third` gets the slot
    after = machine.handle(StepSucceeded(task="first", attempt=1, output=1), 4.0)
    assert [a.task for a in after if isinstance(a, Dispatch)] == ["third"]


def test_a_wait_longer_than_one_chunk_asks_again_until_the_dependency_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given waits parked at most 20 ms at a time, and a step awaiting (without a timeout) one that takes longer
    monkeypatch.setattr(dependency, "CHUNK", 0.02)
    asks: list[float] = []
    wait_once = LocalServices.dependency

    async def counted(self: LocalServices, caller: Any, name: str, wait: float) -> Any:
        asks.append(wait)
        return await wait_once(self, caller, name, wait)

    monkeypatch.setattr(LocalServices, "dependency", counted)
    pipeline = Pipeline("chunks")

    @pipeline.task(depends_on={"slow": DependencyType.SOFT}, execution_mode="concurrent")
    async def waiter(ctx):  # noqa: ANN001, ANN202
        return await ctx.dependency("slow")

    @pipeline.task(execution_mode="concurrent")
    async def slow(ctx):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.2)  # ok-sleep: the step's own work, ten chunks long
        return "slow done"

    # When it runs
    result = asyncio.run(run_pipeline(pipeline))

    # Then the waiter asked again chunk after chunk, and got the output once `slow` completed
    assert result.step_outputs["waiter"] == "slow done", result.summary()
    assert len(asks) > 2 and set(asks) == {0.02}
