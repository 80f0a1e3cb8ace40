"""Turning a pipeline file into a new run: load it in a worker, check it can run, build the `Run`.

Shared by `tagent submit` (control.submit) and the folder watcher through `Daemon.submit_source`.
The daemon never imports the file: a worker does (`WorkerPool.load`), and hands back the Plan.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tagent_client.engine import RunMachine
from tagent_client.errors import ConfigError, PipelineLoadError, PipelineValidationError
from tagent_client.plan import Plan, StepKind
from tagent_client.state import new_run_id

from . import wire
from .pool import WorkerPool
from .runs import Run, RunSource


def source_hash(source: str) -> str:
    """The content hash a pipeline file is known by (as tagentd.loader.source_hash): sha256 of its UTF-8 text."""
    return hashlib.sha256(source.encode()).hexdigest()


async def load_plan(pool: WorkerPool, path: str, source: str, target: str | None = None) -> Plan:
    """Import and validate the file in a worker (never here) and return its Plan.

    Raises PipelineLoadError (one line, `path:line: reason`) or PipelineValidationError (one-line message).
    """
    try:
        loaded = await pool.load(path=path, source=source, source_hash=source_hash(source), target=target)
    except (TimeoutError, RuntimeError) as exc:
        raise PipelineLoadError(f"{path}: {exc}") from None
    if isinstance(loaded, wire.LoadFailed):
        if loaded.code == PipelineValidationError.code:
            invalid = PipelineValidationError(loaded.pipeline or "?", loaded.problems)
            invalid.message = loaded.message  # one line on the wire: "path: pipeline 'x' is invalid: ..."
            invalid.details["path"] = path
            raise invalid
        raise PipelineLoadError(loaded.message)
    return loaded.plan


def new_run(plan: Plan, *, path: str, source: str, target: str | None, params: dict[str, Any] | None,
            model: str | None, who: str) -> Run:
    """A new, not yet started Run of `plan`; ConfigError if an agent step would have no model."""
    unmodelled = [s.name for s in plan.steps if s.kind is not StepKind.FUNCTION and not (s.model or plan.model or model)]
    if unmodelled:
        raise ConfigError(
            f"{path}: agent step(s) {', '.join(unmodelled)} have no model; pass --model (e.g. --model test "
            f"offline), set model= in the pipeline, or set TAGENT_MODEL / model in tagentd.toml"
        )
    now = time.time()
    machine = RunMachine.new(plan, new_run_id(now), params=dict(params or {}), now=now)
    run = Run(RunSource(path=path, source=source, source_hash=source_hash(source), target=target, model=model),
              plan, machine)
    run.audit(who, "submit", path=path, target=target)
    return run
