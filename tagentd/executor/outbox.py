"""`Outbox`: what the local executor sends its workers in one loop turn, one frame per worker.

The executor puts each message for a worker here (a task to run, a cancel) and each result to acknowledge,
and `flush`es at the end of the turn (`LocalExecutor.pump`): each worker gets everything put for it as one
frame (`wire.pack`: one send, one wake-up of the worker), the acknowledgements first, as one `TaskAcks`. A
turn that hands a worker many tasks flushes that worker's part early too, a few times (`LocalExecutor.pump`),
so it starts the first tasks while the rest are encoded.

Guarantees:
- a worker receives its messages in the order they were put, after the acknowledgements of the same frame
  (an acknowledgement only stops the re-sending of a result, whatever comes with it);
- acknowledgements are not urgent: they leave with the next frame to their worker, or at the next
  `flush(everything=True)` (the executor's supervision tick, every 0.1 s: well within the worker's re-send
  period of 1 s), so a burst of results costs the daemon no send and the worker no wake-up of their own;
- `flush` reports each worker that could not take its frame together with the attempts that frame held, in
  the order they were put, so the executor can queue each of them again exactly once (nothing of a frame
  that was refused reached the worker); a refused frame that held no attempt (acknowledgements only) is
  dropped: the worker re-sends its results until acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable

from tagentd.executor.interface import AttemptKey, StepAttempt
from tagentd.executor.workers import Worker
from tagentd.worker import wire

Undelivered = list[tuple[Worker, list[StepAttempt]]]


class Outbox:
    """Messages waiting for the end of the loop turn, by worker, with the attempts among them."""

    def __init__(self, send: Callable[[bytes, bytes], bool]) -> None:
        self.send = send
        self._waiting: dict[int, tuple[Worker, list[bytes], list[StepAttempt], list[AttemptKey]]] = {}

    def put(self, worker: Worker, frame: bytes, attempt: StepAttempt | None = None) -> None:
        """Queue an encoded message for `worker`; `attempt`: the task it sends (given back if it cannot leave)."""
        entry = self._entry(worker)
        entry[1].append(frame)
        if attempt is not None:
            entry[2].append(attempt)

    def ack(self, worker: Worker, key: AttemptKey) -> None:
        """Acknowledge the result of attempt `key` to `worker` (with the others of this turn, in one message)."""
        self._entry(worker)[3].append(key)

    def _entry(self, worker: Worker) -> tuple[Worker, list[bytes], list[StepAttempt], list[AttemptKey]]:
        entry = self._waiting.get(worker.id)
        if entry is None or entry[0] is not worker:
            entry = self._waiting[worker.id] = (worker, [], [], [])
        return entry

    def attempts(self, worker: Worker) -> int:
        """How many tasks wait for `worker`."""
        entry = self._waiting.get(worker.id)
        return len(entry[2]) if entry is not None and entry[0] is worker else 0

    def __len__(self) -> int:
        return len(self._waiting)

    def flush(self, worker: Worker | None = None, *, everything: bool = False) -> tuple[int, int, Undelivered]:
        """Send what waits (only `worker`'s, if given; without `everything`, only to workers that have more than
        acknowledgements waiting): how many frames and attempts left, and what could not be delivered."""
        if worker is not None:
            entry = self._waiting.pop(worker.id, None)
            entries = [entry] if entry is not None else []
        elif everything:
            entries, self._waiting = list(self._waiting.values()), {}
        else:
            entries = [entry for entry in self._waiting.values() if entry[1]]  # a message, not only acknowledgements
            for entry in entries:
                del self._waiting[entry[0].id]
        sent = frames_sent = 0
        undelivered: Undelivered = []
        for target, frames, attempts, acks in entries:
            if acks:
                frames.insert(0, wire.encode(wire.TaskAcks(keys=acks)))
            if self.send(target.identity, wire.pack(frames)):
                frames_sent += 1
                sent += len(attempts)
            elif attempts:
                undelivered.append((target, attempts))
        return frames_sent, sent, undelivered
