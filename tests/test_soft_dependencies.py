"""SOFT dependencies (docs/semantics.md "Dependencies"): a step does not wait for them, sees their output
once they have completed (`None` until then), and is never skipped or failed by them — through a real
daemon and in-process, with equal results."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import DaemonProcess, write_pipeline

from tagent_client import run_pipeline

PIPELINE = """
    from tagent_client import DependencyType, ExecutionMode, Pipeline

    CONCURRENT = ExecutionMode.CONCURRENT

    async def slow(ctx):
        # finishes only once `reader` has told it so: if `reader` waited for `slow`, neither would end
        message = await ctx.receive(timeout=20)
        return "slow done" if message is not None else "reader never started"

    async def reader(ctx):
        seen = ctx.inputs["slow"]
        await ctx.send("soft_deps", "go")
        return {"slow_seen": seen}

    def broken(ctx):
        raise ValueError("broken on purpose")

    def after(ctx):
        return {"broken_seen": ctx.inputs["broken"]}

    pipeline = Pipeline("soft_deps")
    pipeline.step("slow", fn=slow, execution_mode=CONCURRENT)
    pipeline.step("reader", fn=reader, depends_on={"slow": DependencyType.SOFT}, execution_mode=CONCURRENT)
    pipeline.step("broken", fn=broken, required=False)
    pipeline.step("after", fn=after, depends_on={"broken": DependencyType.SOFT})
"""

EXPECTED_OUTPUTS = {"slow": "slow done", "reader": {"slow_seen": None}, "after": {"broken_seen": None}}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("soft_deps_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outcome(outputs: dict[str, Any], metadata: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    return outputs, {name: meta["status"] for name, meta in metadata.items()}


def test_soft_dependencies_neither_hold_back_nor_fail_their_dependents(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a pipeline where CONCURRENT `reader` SOFT-depends on CONCURRENT `slow`, which ends only after `reader` has run,
    # and `after` SOFT-depends on `broken`, which fails
    path = write_pipeline(tmp_path, "soft_deps.py", PIPELINE)
    daemon = make_daemon(workers=3).start()

    # When it runs through the daemon and in this process
    with daemon.client() as client:
        remote = client.wait(client.submit(path).id, timeout=40)
    local = asyncio.run(asyncio.wait_for(run_pipeline(_load(path).pipeline), timeout=30))

    # Then `reader` ran without waiting and saw None for `slow`, `after` ran and saw None for `broken`,
    # only `broken` failed (it is not required, so the run completes), and both runs agree
    expected = (EXPECTED_OUTPUTS, {"slow": "completed", "reader": "completed", "broken": "failed", "after": "completed"})
    for result in (remote, local):
        assert result.status == "completed", result.summary()
        assert _outcome(result.step_outputs, result.step_metadata) == expected
