"""A step's `ctx.dependency(name)` (`wire.DependencyWait` on workers.sock): parked until the dependency ends.

The worker asks "tell me when dependency `name` of my run has ended, or after `wait` seconds"
(tagent_client/run/dependency.py has the rules a step sees). The daemon answers at once when the
dependency has ended, else parks the request — a task that sleeps on the run's news
(`Run.wait_for_news`, woken by every commit that changes the run) — and answers when the
dependency has ended or the wait is over; the step asks again for a longer wait. Guarantees:

- the daemon's loop never blocks: a parked request is a task on it, not a loop;
- the reply leaves after the next commit, so the status and output it reports are on disk; every
  request gets one (an unexpected error becomes a logged internal error, as the router's do);
- a re-send of a parked request is ignored, one of an answered request answered again from a small
  cache (workers re-send every second until answered);
- nothing is left parked: a request ends when its wait is over (at most `CHUNK` seconds), and at the
  first news after its attempt stops running (it succeeded, failed, timed out, was cancelled, or its
  worker died: each of these changes the run), answered then with an error the step raises if it
  still listens; a daemon restart ends them all (the workers go with it; recovery re-runs the attempt);
- while a request is parked its attempt's slot is lent (`RunOps.lend_slot`): it does not count against
  the run's `max_concurrent_steps`, so the dependency it waits for can start; a wait that can never
  end (`dependency.cannot_start`) is answered at once with its InvalidRequest.
"""

from __future__ import annotations

import asyncio
import collections
import time

from tagent_client.core.rules import completed_output
from tagent_client.errors import NotFound, TagentError
from tagent_client.run.dependency import CHUNK, attempt_over, cannot_start
from tagentd.control.router import internal_error
from tagentd.plumbing.channel import Channel
from tagentd.plumbing.longpoll import wait_limit
from tagentd.plumbing.ports import ReplyAfterCommit, Spawn
from tagentd.runs.ports import RunOps
from tagentd.worker import wire

ANSWERED_KEEP = 1024  # answered waits whose reply is kept to answer a re-send again
WaitKey = tuple[bytes, int]  # (worker identity, the worker's request number)


class DependencyWaits:
    """The steps' dependency waits: parked on their run's news, answered once after the commit."""

    def __init__(self, *, ops: RunOps, channel: Channel, reply_after_commit: ReplyAfterCommit, spawn: Spawn) -> None:
        self.ops = ops
        self.channel = channel
        self.reply_after_commit = reply_after_commit
        self.spawn = spawn
        self.parked: dict[WaitKey, asyncio.Task[None]] = {}
        self._answered: collections.OrderedDict[WaitKey, bytes] = collections.OrderedDict()
        self.counters = collections.Counter[str]()

    def on_wait(self, identity: bytes, msg: wire.DependencyWait) -> None:
        key = (identity, msg.req)
        cached = self._answered.get(key)
        if cached is not None:
            self.channel.send([identity, cached])  # a re-send: answer it again
            return
        if key in self.parked:
            return
        self.parked[key] = self.spawn(self._serve(key, msg))

    async def _serve(self, key: WaitKey, msg: wire.DependencyWait) -> None:
        try:
            reply = await self._wait(msg)
        except TagentError as exc:
            reply = wire.DependencyReply(req=msg.req, code=exc.code, message=exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the step without an answer
            error = internal_error(type(msg).__name__, exc)
            reply = wire.DependencyReply(req=msg.req, code=error.code, message=error.message)
        finally:
            self.parked.pop(key, None)
        payload = wire.encode(reply)
        self._answered[key] = payload
        while len(self._answered) > ANSWERED_KEEP:
            self._answered.popitem(last=False)
        self.reply_after_commit(self.channel, [key[0], payload])

    async def _wait(self, msg: wire.DependencyWait) -> wire.DependencyReply:
        """The dependency's state once it has ended or the wait is over; InvalidRequest once the attempt is over."""
        caller = msg.caller
        run = self.ops.runs.live(caller.run_id)
        if run is None:
            raise NotFound(f"run {caller.run_id} is not running: step {caller.step!r} waits for nothing")
        spec = run.machine.specs.get(caller.step)
        if spec is None or msg.name not in spec.deps:
            deps = ", ".join(sorted(spec.deps)) if spec is not None else "none"
            raise NotFound(f"step {caller.step!r} of run {run.id} has no dependency {msg.name!r} (its dependencies: "
                           f"{deps or 'none'})")
        deadline = time.monotonic() + wait_limit(msg.wait, CHUNK)
        lent = False
        try:
            while True:
                dep = run.state.steps[msg.name]
                if dep.status.terminal:
                    self.counters["dependency_waits_answered"] += 1
                    return wire.DependencyReply(req=msg.req, status=dep.status.value, output=completed_output(dep))
                over = attempt_over(run.machine, caller, msg.name)
                if over is not None:
                    self.counters["dependency_waits_released"] += 1
                    raise over
                never = cannot_start(run.machine, caller.step, msg.name)
                if never is not None:
                    raise never
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.counters["dependency_waits_answered"] += 1
                    return wire.DependencyReply(req=msg.req, status=dep.status.value)
                if not lent:
                    self.ops.lend_slot(run, caller.task, caller.attempt, True)
                    lent = True
                await run.wait_for_news(remaining)
        finally:
            if lent:
                self.ops.lend_slot(run, caller.task, caller.attempt, False)

    def stats(self) -> dict[str, int]:
        """What `tagentd status` shows under `stats.dependency_waits`: parked now, answered, released."""
        return {"parked": len(self.parked), "answered": self.counters["dependency_waits_answered"],
                "released": self.counters["dependency_waits_released"]}
