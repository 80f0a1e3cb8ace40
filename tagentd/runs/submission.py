"""Turning a pipeline file into a new run: load it in a worker, check it can run, build the `Run`.

Shared by `tagent submit` (control.submit) and the folder watcher through `Daemon.submit_source`.
The daemon never imports the file: the executor's workers do (`Executor.load`), and hand back the Plan.
`SubmitKeys` makes a submit idempotent: a repeat of its key returns the run it started.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tagent_client.core.engine import RunMachine
from tagent_client.core.state import new_run_id
from tagent_client.define.binding import missing_params, with_defaults
from tagent_client.define.plan import Plan
from tagent_client.errors import ConfigError, InvalidRequest, NotFound, PipelineValidationError
from tagent_client.wire.protocol import SubmitResult
from tagentd.executor.interface import Executor, PipelineCode
from tagentd.runs.ports import Register, RunOps
from tagentd.runs.run import Run, RunEntry, RunSource
from tagentd.runs.table import RunTable
from tagentd.worker.wire import source_hash

WATCHER = "watcher"  # `who` in the audit trail of the runs of files dropped into a watched folder


class SharedPlans:
    """The plan last loaded for each file (its source hash and target), so that the runs of one file share one Plan.

    A worker hands back a new Plan for every submit; when it equals the one kept for that file, the kept one is used:
    the run store encodes a Plan once for all the records that hold it (records.encoded_plan), instead of at every
    run's start, on the loop, while the run's first step is already running. Comparing costs a fraction of encoding,
    and happens before the run starts. The KEPT most recently loaded files are remembered."""

    KEPT = 16

    def __init__(self) -> None:
        self._plans: collections.OrderedDict[tuple[str, str | None], Plan] = collections.OrderedDict()

    def same(self, plan: Plan, source: str, target: str | None) -> Plan:
        """`plan`, or the equal Plan kept for the same file."""
        key = (source_hash(source), target)
        kept = self._plans.get(key)
        if kept is not None and kept == plan:
            self._plans.move_to_end(key)
            return kept
        self._plans[key] = plan
        self._plans.move_to_end(key)
        if len(self._plans) > self.KEPT:
            self._plans.popitem(last=False)
        return plan


async def load_plan(executor: Executor, path: str, source: str, target: str | None = None) -> Plan:
    """Import and validate the file in a worker (never here) and return its Plan.

    Raises PipelineLoadError (one line, `path:line: reason`) or PipelineValidationError (one-line message).
    """
    return await executor.load(PipelineCode(path=path, source=source, source_hash=source_hash(source), target=target))


def new_run(plan: Plan, *, path: str, source: str, target: str | None, params: dict[str, Any] | None,
            model: str | None, who: str, idempotency_key: str | None = None) -> Run:
    """A new, not yet started Run of `plan`.

    ConfigError if an agent step would have no model; PipelineValidationError if a function
    step has a parameter the submit params do not fill (it would fail only when it runs).
    """
    unmodelled = [s.name for s in plan.steps if s.uses_model and not (s.model or plan.model or model)]
    if unmodelled and who == WATCHER:  # a dropped file: there is no command line to add --model to
        raise ConfigError(
            f"{path}: agent step(s) {', '.join(unmodelled)} have no model; name one in the file (model = \"test\" "
            f"runs offline) or give the daemon a default (model in tagentd.toml or TAGENT_MODEL, then restart it)"
        )
    if unmodelled:
        raise ConfigError(
            f"{path}: agent step(s) {', '.join(unmodelled)} have no model; pass --model (e.g. --model test "
            f"offline), set model= in the pipeline, or set TAGENT_MODEL / model in tagentd.toml"
        )
    params = with_defaults(plan, params)
    unfilled = missing_params(plan, params)
    if unfilled:
        invalid = PipelineValidationError(plan.name, unfilled)
        invalid.message = f"{path}: pipeline {plan.name!r} is invalid: {'; '.join(unfilled)}"
        invalid.details["path"] = path
        raise invalid
    now = time.time()
    machine = RunMachine.new(plan, new_run_id(now), params=params, now=now)
    run = Run(RunSource(path=path, source=source, source_hash=source_hash(source), target=target, model=model,
                        idempotency_key=idempotency_key), plan, machine)
    run.audit(who, "submit", path=path, target=target)
    return run


async def start_or_register(ops: RunOps, register: Register, plan: Plan, *, path: str, source: str, who: str,
                            target: str | None = None, params: dict[str, Any] | None = None, model: str | None = None,
                            idempotency_key: str | None = None, run_now: bool = False) -> Run | None:
    """The one decision for a loaded pipeline file, for `tagent submit` and the watched folder alike.

    A pipeline that declares triggers is registered with the broker (each matching event starts a run) and
    None is returned; otherwise (or with `run_now`, `tagent submit --run`) a run starts and is returned.
    Raises what `register` and `RunOps.submit_source` raise (InvalidRequest while stopping, ConfigError).
    """
    if plan.triggers and not run_now:
        register(path=path, source=source, target=target, model=model, plan=plan, who=who)
        return None
    return await ops.submit_source(path, source, target, params, model, who, plan=plan,
                                   idempotency_key=idempotency_key)


def accepted(run: Run, *, duplicate: bool = False) -> SubmitResult:
    """The answer to a submit that started (or, `duplicate`, had already started) `run`."""
    return SubmitResult(run_id=run.id, pipeline=run.plan.name, steps=[s.name for s in run.plan.steps],
                        duplicate=duplicate)


class SubmitKeys:
    """Which run each submit's idempotency key started, so that a repeat of the key starts nothing.

    A key is stored with its run (RunSource.idempotency_key), so it outlives a restart, and is
    remembered exactly as long as the run is kept: `forget` drops it with its run (every client
    submit carries a key, so keys kept after their runs would grow with history). A repeat that
    arrives while the first submit is still loading its file waits for it. Only the daemon's loop
    uses this.
    """

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._key_of: dict[str, str] = {}  # run id -> its key
        self._loading: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        """How many keys are remembered (one per kept run that was submitted with one)."""
        return len(self._runs)

    def add(self, entry: RunEntry) -> None:
        """Remember a recovered run under its key, if its submit had one (`once` remembers the runs it starts)."""
        if entry.idempotency_key:
            self._remember(entry.idempotency_key, entry.run_id)

    def forget(self, run_id: str) -> None:
        """The run is gone (retention, gc): its key is free again and no longer held."""
        key = self._key_of.pop(run_id, None)
        if key is not None:
            self._runs.pop(key, None)

    def _remember(self, key: str, run_id: str) -> None:
        self._runs[key] = run_id
        self._key_of[run_id] = key

    async def once(self, key: str, runs: RunTable, path: str, start: Callable[[], Awaitable[SubmitResult]]
                   ) -> SubmitResult:
        """The run `key` started (`duplicate`), or what `start()` does now if the key is new.

        InvalidRequest if the key started a run of another file: a key names one submit, not a pipeline.
        """
        while True:
            run = self._run_of(key, runs)
            if run is not None:
                if run.source.path != path:
                    raise InvalidRequest(f"idempotency key {key!r} was used for run {run.id} of {run.source.path}, "
                                         f"not {path}; use a new key for each submit")
                return accepted(run, duplicate=True)
            loading = self._loading.get(key)
            if loading is None:
                break
            await loading.wait()  # then look again: the first one started a run, or failed (and we try)
        self._loading[key] = done = asyncio.Event()
        try:
            result = await start()
            if result.run_id:
                self._remember(key, result.run_id)
            return result
        finally:
            del self._loading[key]
            done.set()

    def _run_of(self, key: str, runs: RunTable) -> Run | None:
        run_id = self._runs.get(key)
        if run_id is None:
            return None
        try:
            run = runs.get(run_id)
        except NotFound:  # its snapshot is lost (reported in checkpoint_problems)
            run = None
        if run is None:  # removed meanwhile: the key is free again
            self.forget(run_id)
        return run
