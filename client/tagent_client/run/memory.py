"""`PipelineMemory`: what `ctx.memory` is — the run's memory, as the design documents name it.

Guarantees (docs/semantics.md, "Pipeline memory"):

- One memory per run, shared by its steps. Through the daemon every write is durable when
  the call returns (it is in the run's checkpoint) and survives a restart or kill -9; a step
  re-run after a crash reads what the earlier attempts saved. In-process it lives as long as
  the run. Values follow the result's encoding rules (pydantic models become plain data), the
  same in-process as through the daemon.
- `save_step_result(step, data)` keeps `{"data", "timestamp", "step_id"}` under the key
  `step_result/<step>`; `get_step_result(step)` returns its `data` (None if never saved).
- `share_with_pipeline(target, key, data)` writes `key` into the shared space
  `pipeline:<target>` (durable, versioned: docs/broker.md); the target pipeline's steps read
  it with `get_shared(key)`, and clients with `client.space("pipeline:<target>").get(key)`.
- What `save_step_result` saved is the run's `PipelineResult.learned_facts` (step → data); every
  other key saved is its `saved_memories`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.result import STEP_RESULT_PREFIX, to_builtins

if TYPE_CHECKING:
    from .services import RunServices
    from .space import SharedMemorySpace


def shared_space(pipeline: str) -> str:
    """The shared space that holds what other pipelines shared with `pipeline`."""
    return f"pipeline:{pipeline}"


class PipelineMemory:
    """The run's memory: `await ctx.memory.save(k, v)`, `get(k)`, `save_step_result(step, data)`, ..."""

    def __init__(self, services: RunServices, run_id: str, pipeline: str, space: Callable[[str], SharedMemorySpace]) -> None:
        self._services = services
        self._run_id = run_id
        self.pipeline_id = pipeline
        self._space = space

    async def save(self, key: str, value: Any) -> None:
        """Keep `value` under `key` for the rest of the run (durable when this returns, through the daemon)."""
        await self._services.memory_save(self._run_id, key, to_builtins(value))

    async def get(self, key: str, default: Any = None) -> Any:
        """The value saved under `key`, or `default`."""
        value = await self._services.memory_get(self._run_id, key)
        return default if value is None else value

    async def save_step_result(self, step_name: str, data: Any) -> None:
        """Save a result for step `step_name`, with the time it was saved."""
        entry = {"data": data, "timestamp": time.time(), "step_id": step_name}
        await self.save(STEP_RESULT_PREFIX + step_name, entry)

    async def get_step_result(self, step_name: str) -> Any:
        """The data `save_step_result` saved for `step_name` in this run, or None."""
        entry = await self.get(STEP_RESULT_PREFIX + step_name)
        return entry.get("data") if isinstance(entry, dict) else None

    async def share_with_pipeline(self, target_pipeline: str, key: str, data: Any) -> None:
        """Share `data` under `key` with pipeline `target_pipeline` (durable when this returns)."""
        await self._space(shared_space(target_pipeline)).put(key, data)

    async def get_shared(self, key: str, default: Any = None) -> Any:
        """What another pipeline last shared with this one under `key`, or `default`."""
        entry = await self._space(shared_space(self.pipeline_id)).get(key)
        return default if entry is None else entry.value

    def __repr__(self) -> str:
        return f"PipelineMemory(run_id={self._run_id!r}, pipeline={self.pipeline_id!r})"
