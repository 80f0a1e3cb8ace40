"""What the daemon does with each message a worker sends (workers.sock): a table, one function per type.

`WorkerMessages.on_batch` is the workers channel's handler. Each message is decoded and offered to
the executor first: a worker's own business (hello, heartbeats, load answers, results, model-request
permits) and anything from a worker the executor did not start is the executor's
(tagentd/executor/interface.py), and a step's result reaches its run through the executor's
`on_result`. What is left is a step's request for the daemon, handed to the function for its type in
`TABLE`, with the `WorkerPorts` it needs — never the daemon.

Guarantees:
- no worker message can raise out of the loop: a malformed or failing one is dropped, counted
  (`bad_worker_messages`) and logged, and the next one is handled — also within one frame, whose
  messages (a worker's `Batch`: what it sent in one loop turn) are decoded and handled one by one;
- a step's memory write (`MemorySave`), broker call and dependency wait are answered only after the
  commit that makes them durable; a memory read is answered at once;
- the steps' results of one batch reach each run together, in order, after the batch (`results_together`: one
  look at what is ready per run, not one per result);
- after every batch the executor sends what it can (a finished step freed a slot).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from tagentd.broker.service import BrokerShell
from tagentd.control.broker_calls import BrokerCalls
from tagentd.control.dependency_waits import DependencyWaits
from tagentd.executor.interface import Executor
from tagentd.plumbing.channel import Channel
from tagentd.plumbing.ports import ReplyAfterCommit
from tagentd.runs.ports import RunOps
from tagentd.worker import wire

log = logging.getLogger("tagentd")


@dataclass
class WorkerPorts:
    """What the worker-message handlers are given (tagentd/app/daemon.py wires them)."""

    executor: Executor
    ops: RunOps
    broker: BrokerShell
    broker_calls: BrokerCalls
    dependency_waits: DependencyWaits
    #: workers.sock: `send_now` for an answer that needs no commit.
    channel: Channel
    reply_after_commit: ReplyAfterCommit
    #: Within it, steps' results wait and each run takes those of one batch together (RunDriver.results_together);
    #: it gives the function that hands them over at once (None: they were never held).
    results_together: Callable[[], AbstractContextManager[Callable[[], None] | None]] = nullcontext


def log_line(ports: WorkerPorts, identity: bytes, msg: wire.LogLine) -> None:
    """A step's log line: kept with its run (written by the next commit); `--follow` readers wake."""
    run = ports.ops.runs.live(msg.run_id)
    if run is not None:
        run.add_log(msg.step, msg.level, msg.message, msg.ts)
        ports.ops.changed(run)
        run.notify()


def memory_get(ports: WorkerPorts, identity: bytes, msg: wire.MemoryGet) -> None:
    """A step reads its run's memory: answered at once (it changes nothing)."""
    run = ports.ops.runs.live(msg.run_id)
    value = run.memory.get(msg.key) if run is not None else None
    ports.channel.send_now([identity, wire.encode(wire.MemoryReply(req=msg.req, value=value))])


def memory_save(ports: WorkerPorts, identity: bytes, msg: wire.MemorySave) -> None:
    """A step's memory write: the reply waits for the commit that writes it."""
    run = ports.ops.runs.live(msg.run_id)
    if run is not None:
        run.remember(msg.key, msg.value)
        ports.ops.changed(run)
    ports.reply_after_commit(ports.channel, [identity, wire.encode(wire.MemoryReply(req=msg.req))])


def progress_note(ports: WorkerPorts, identity: bytes, msg: wire.ProgressNote) -> None:
    """Best effort, at once, no commit: `step.progress` on the event bus."""
    data = {"run_id": msg.run_id, "step": msg.step, "fraction": msg.fraction, "message": msg.message}
    ports.broker.publish_now("step.progress", data)


def broker_call(ports: WorkerPorts, identity: bytes, msg: wire.BrokerCall) -> None:
    """A step's broker request: see tagentd/control/broker_calls.py."""
    ports.broker_calls.on_call(identity, msg)


def dependency_wait(ports: WorkerPorts, identity: bytes, msg: wire.DependencyWait) -> None:
    """A step's `ctx.dependency`: see tagentd/control/dependency_waits.py."""
    ports.dependency_waits.on_wait(identity, msg)


Handler = Callable[[WorkerPorts, bytes, Any], None]

TABLE: dict[type, Handler] = {
    wire.LogLine: log_line,
    wire.MemoryGet: memory_get,
    wire.MemorySave: memory_save,
    wire.ProgressNote: progress_note,
    wire.BrokerCall: broker_call,
    wire.DependencyWait: dependency_wait,
}


class WorkerMessages:
    """workers.sock's incoming side: the executor's messages to it, the steps' requests to `TABLE`."""

    def __init__(self, ports: WorkerPorts, stats: dict[str, Any]) -> None:
        self.ports = ports
        self.stats = stats
        stats.setdefault("bad_worker_messages", 0)

    def on_batch(self, batch: list[list[bytes]]) -> None:
        with self.ports.results_together() as feed_results:  # a run takes the results of the batch together
            self._on_frames(batch, feed_results or _nothing)
        self.ports.executor.pump()

    def _on_frames(self, batch: list[list[bytes]], feed_results: Callable[[], None]) -> None:
        for frames in batch:
            if len(frames) != 2:
                self.stats["bad_worker_messages"] += 1
                continue
            identity, payload = frames
            try:
                messages, errors = wire.unpack(payload, wire.from_worker_decoder)
            except Exception as exc:  # noqa: BLE001 - the frame itself is not a message
                messages, errors = [], [exc]
            for exc in errors:
                self.stats["bad_worker_messages"] += 1
                log.warning("dropped a message from worker %r that does not decode: %s", identity, exc)
            for msg in messages:
                try:
                    self.handle(identity, msg, feed_results)
                except Exception:  # noqa: BLE001 - one bad message must not stop the loop
                    self.stats["bad_worker_messages"] += 1
                    log.exception("bad message from worker %r", identity)

    def handle(self, identity: bytes, msg: Any, feed_results: Callable[[], None] | None = None) -> None:
        if self.ports.executor.on_worker_message(identity, msg):  # a worker's own business, or a stranger's
            return
        handler = TABLE.get(type(msg))
        if handler is not None:
            if feed_results is not None:
                feed_results()  # the results before it reach their runs first (an ended attempt stays ended)
            handler(self.ports, identity, msg)


def _nothing() -> None:
    return None
