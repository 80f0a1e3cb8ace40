"""A worker's LLM side: `PermitClient` (its end of the daemon's request limits) and preloading the agent runtime.

`PermitClient` is the worker's side of the daemon's LLM request limits (see tagentd.executor.limits and permits.py).

Implements `tagent_client.run.llm.RequestLimiter`: `acquire` sends a `PermitRequest`
(re-sent until granted) and waits for the `PermitGrant`, for as long as the
daemon makes it wait (the step's timeout bounds it); `release` sends a
`PermitRelease` with the tokens the request used and any Retry-After. Every
heartbeat lists `outstanding` (asked for or held), so a release the daemon
never got is still given back. Used from the worker's event loop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import sys
from typing import Any

from tagent_client.core.state import Phase
from tagent_client.define.plan import StepKind
from tagent_client.define.step import PipelineStep
from tagentd.worker import wire
from tagentd.worker.link import WorkerLink


class PermitClient:
    """Asks the daemon for model-request permits over the worker's link."""

    def __init__(self, link: WorkerLink, loop: asyncio.AbstractEventLoop) -> None:
        self._link = link
        self._loop = loop
        self._reqs = itertools.count(1)
        self._outstanding: dict[int, asyncio.Future[None]] = {}

    @property
    def outstanding(self) -> list[int]:
        return list(self._outstanding)

    async def acquire(self, endpoint: str, tokens: int) -> Any:
        req = next(self._reqs)
        granted: asyncio.Future[None] = self._loop.create_future()
        self._outstanding[req] = granted
        self._link.send_until_acked(("permit", req), wire.PermitRequest(req=req, endpoint=endpoint, tokens=tokens))
        try:
            await granted
        except BaseException:
            self.release(req, tokens=0, retry_after=None)  # cancelled while waiting: stop waiting at the daemon too
            raise
        finally:
            self._link.acked(("permit", req))
        return req

    def release(self, permit: Any, *, tokens: int, retry_after: float | None) -> None:
        if self._outstanding.pop(permit, None) is not None:
            self._link.send(wire.PermitRelease(req=permit, tokens=tokens, retry_after=retry_after))

    def granted(self, message: wire.PermitGrant) -> None:
        """A grant arrived (late or repeated ones are ignored)."""
        waiter = self._outstanding.get(message.req)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def agent_runtime_loaded() -> bool:
    """True in a process that has imported the agent runtime already (a worker forked from the warm template)."""
    return "tagent_client.run.runners.agent" in sys.modules


def preload_agent_runtime(ready: concurrent.futures.Future[bool]) -> None:
    """Import pydantic-ai, its OpenAI client and the price table (seconds on a busy machine) off the loop, so the
    first agent step does not block the worker's loop (and its heartbeats) with them. Runs in a thread."""
    try:
        import pydantic_ai  # noqa: F401

        import tagent_client.run.runners.agent  # noqa: F401 - with models, tools, usage
        import tagent_client.run.transcript  # noqa: F401

        try:
            import pydantic_ai.models.openai  # noqa: F401
            import pydantic_ai.providers.openai  # noqa: F401
            from genai_prices.data_snapshot import get_snapshot

            get_snapshot()
        except ImportError:
            pass  # the agent runner says what is missing when a step needs it
        ready.set_result(True)
    except BaseException:  # noqa: BLE001 - the agent runner will raise the real ImportError
        ready.set_result(False)


def needs_agent(step: PipelineStep, phase: Phase) -> bool:
    """Whether the task runs an agent (the agent runtime must be loaded first)."""
    if phase is Phase.COMPENSATE:
        return isinstance(step.compensate, str)
    if phase is Phase.CONDITION:
        return step.condition_is_judged
    return phase is Phase.RUN and step.kind in (StepKind.AGENT, StepKind.TAGENT)
