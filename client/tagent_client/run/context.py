"""`StepContext`: what a running step sees of its run.

The same class serves in-process runs and daemon workers; only the `RunServices`
behind it differ (`services.LocalServices` in-process, a daemon-backed one in the worker).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .context_broker import BrokerAbilities

if TYPE_CHECKING:
    from .services import RunServices


class Memory:
    """Per-run key/value memory shared by the run's steps: `await ctx.memory.save(k, v)`, `await ctx.memory.get(k)`."""

    def __init__(self, services: RunServices, run_id: str) -> None:
        self._services = services
        self._run_id = run_id

    async def save(self, key: str, value: Any) -> None:
        await self._services.memory_save(self._run_id, key, value)

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self._services.memory_get(self._run_id, key)
        return default if value is None else value


class _StepLog(logging.LoggerAdapter):
    """A logger whose lines land in the run's log (and the process's own logging)."""

    def __init__(self, services: RunServices, run_id: str, step: str) -> None:
        super().__init__(logging.getLogger(f"tagent.step.{step}"), {"run_id": run_id, "step": step})
        self._services = services
        self._run_id = run_id
        self._step = step

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        self._services.log(self._run_id, self._step, level, text)
        super().log(level, text, **kwargs)


class StepContext(BrokerAbilities):
    """The first argument (`ctx`) of a function step; agent steps get the same abilities as tools.

    `attempt` is 1 on the first try and grows with every retry or crash-recovery re-run;
    `inputs` maps each dependency to its output; `item` / `item_index` are set for
    PARALLEL_MERGE items; `trigger` holds the event that started a triggered run.
    Messaging, events and shared spaces: see `context_broker.BrokerAbilities`.
    """

    def __init__(
        self,
        *,
        services: RunServices,
        run_id: str,
        pipeline: str,
        step_name: str,
        attempt: int,
        params: Mapping[str, Any],
        shared: Mapping[str, Any],
        inputs: Mapping[str, Any],
        item: Any = None,
        item_index: int | None = None,
        trigger: Any = None,
        task: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.step_name = step_name
        self.attempt = attempt
        self.params = dict(params)
        self.shared = dict(shared)
        self.inputs = dict(inputs)
        self.item = item
        self.item_index = item_index
        self.trigger = trigger
        self.task = task or (step_name if item_index is None else f"{step_name}[{item_index}]")
        self.memory = Memory(services, run_id)
        self.log = _StepLog(services, run_id, step_name)
        self._services = services

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress (best effort: shown by `--follow`, never stored)."""
        self._services.progress(self.run_id, self.step_name, fraction, message)

    def __repr__(self) -> str:
        return f"StepContext(run_id={self.run_id!r}, step={self.step_name!r}, attempt={self.attempt})"
