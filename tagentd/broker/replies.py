"""`StepReplies`: when a step's broker reply may leave, and which messages the broker log holds yet.

A message is *unwritten* from its send until a write of the broker log holds it: the write of the
commit's flush, or a write ahead of the commit while the commit before it is being fsynced
(`BrokerStore.write_ahead`). A reply leaves:

- at once for a non-durable send, and for a receive of a message that is written already or was
  sent non-durably (the lease is never written; what the receiver makes of the message is written
  by a later write, behind the message in the same log or after its fsync: docs/checkpoints.md,
  "Writing: group commit" and "Pipelined commits");
- for a receive of a durable message not written yet, the moment a write holds it (`written`), while
  that write's fsync may still run;
- for anything else, once the next commit is on disk (the commit's `committed`).

When a flush of the broker log fails, everything written since the last flush that succeeded is cut
off the log and written again later: those messages are unwritten again (`undone`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tagent_client.core.broker_records import Message
from tagent_client.wire import protocol_broker as b

log = logging.getLogger("tagentd.broker")

Key = tuple[str, str]  # (mailbox, message id)
Send = Callable[[], None]


class StepReplies:
    """Which messages are written, and the steps' replies that wait for a write or for a commit. Loop only."""

    def __init__(self) -> None:
        self.unwritten: set[Key] = set()   # sent, not yet in the broker log
        self.volatile: set[Key] = set()    # the non-durable ones among them
        self.unsynced: set[Key] = set()    # written since the last flush began its own write (that flush awaits them)
        self.when_written: list[tuple[Key, Send]] = []  # receives' replies, each waiting for its message's write
        self.after_commit: list[Send] = []  # replies that wait for the next commit

    def sent(self, key: Key, durable: bool) -> None:
        self.unwritten.add(key)
        if not durable:
            self.volatile.add(key)

    def reply(self, request: Any, result: Any, send: Send) -> bool:
        """Call `send` now, or park it until the write or the commit it waits for; True if it waits for a commit."""
        if self.answered_at_once(request, result):
            send()
        elif isinstance(request, b.ReceiveMessage) and isinstance(result, Message):
            self.when_written.append(((result.mailbox, result.id), send))
        else:
            self.after_commit.append(send)
            return True
        return False

    def answered_at_once(self, request: Any, result: Any) -> bool:
        """Whether this reply need not wait: a non-durable send; a receive that leased a message already written (on
        disk, or in the log with its fsync still to come) or sent non-durably."""
        if isinstance(request, b.SendMessage):
            return not request.durable
        if isinstance(request, b.ReceiveMessage) and isinstance(result, Message):
            key = (result.mailbox, result.id)
            return key not in self.unwritten or key in self.volatile
        return False

    def written(self) -> None:
        """A write of the broker log holds every message sent so far: the receives waiting for one are answered."""
        keys, self.unwritten = self.unwritten, set()
        self.unsynced |= keys
        self.volatile -= keys
        if not self.when_written:
            return
        ready = [send for key, send in self.when_written if key in keys]
        self.when_written = [(key, send) for key, send in self.when_written if key not in keys]
        for send in ready:
            try:
                send()
            except Exception:  # noqa: BLE001 - a reply that cannot go must not fail the write it follows
                log.exception("broker: a receive's reply could not be sent")

    def flush_wrote(self) -> set[Key]:
        """A flush has written: it awaits the fsyncs of every write so far. The messages it covers."""
        self.written()
        covered, self.unsynced = self.unsynced, set()
        return covered

    def undone(self, covered: set[Key]) -> None:
        """A flush failed: what it covered and what was written ahead since is off the log, to be written again."""
        self.unwritten |= covered | self.unsynced
        self.unsynced = set()
