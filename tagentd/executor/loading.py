"""Loading a pipeline file for a submit, in one of the local executor's workers (never in the daemon).

`PipelineLoads` keeps the loads under way: which worker each was sent to, and the future its answer
resolves. `plan_of` turns a worker's answer into the Plan, or into the one-line error the submitter sees.

Guarantees: every load ends — with the worker's answer, with an error when its worker ends first
(`worker_ended`), or when the caller gives up on it (`abandon`); an answer nobody waits for is dropped.
"""

from __future__ import annotations

import asyncio

from tagent_client.define.plan import Plan
from tagent_client.errors import PipelineLoadError, PipelineValidationError
from tagentd.worker import wire

Answer = wire.Loaded | wire.LoadFailed


class PipelineLoads:
    """The loads sent to workers and not yet answered, by request number."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[asyncio.Future[Answer], int]] = {}
        self._next_req = 1

    def begin(self, worker_id: int) -> tuple[int, asyncio.Future[Answer]]:
        """A new load on worker `worker_id`: its request number, and the future its answer resolves."""
        req = self._next_req
        self._next_req += 1
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[req] = (future, worker_id)
        return req, future

    def answered(self, msg: Answer) -> None:
        entry = self._pending.pop(msg.req, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def abandon(self, req: int) -> None:
        self._pending.pop(req, None)

    def worker_ended(self, worker_id: int, why: str) -> None:
        """Fail the loads that worker had not answered."""
        for req, (future, wid) in list(self._pending.items()):
            if wid == worker_id and not future.done():
                future.set_exception(RuntimeError(f"worker {worker_id} ended while loading the pipeline: {why}"))
                del self._pending[req]


def plan_of(answer: Answer, path: str) -> Plan:
    """The Plan a worker loaded, or its failure as PipelineLoadError / PipelineValidationError (one line)."""
    if isinstance(answer, wire.Loaded):
        return answer.plan
    if answer.code == PipelineValidationError.code:
        invalid = PipelineValidationError(answer.pipeline or "?", answer.problems)
        invalid.message = answer.message  # one line on the wire: "path: pipeline 'x' is invalid: ..."
        invalid.details["path"] = path
        raise invalid
    raise PipelineLoadError(answer.message)
