"""`Mailbox`: the messages addressed to one pipeline — a FIFO with leases, seen ids and dead letters.

Part of the broker's pure core (`broker.py` owns the mailboxes and journals
their changes); no I/O, no clock. Guarantees (docs/broker.md):
- one FIFO in arrival order: `lease` hands out the oldest message nobody holds;
  a released message is offered again at its original position;
- a message whose delivery failed `max_deliveries` times (the attempts that held
  it failed) leaves the FIFO for the dead letters, with the last error, so the
  messages behind it are delivered; a dead letter stays until it is requeued
  (back at its original position, with a fresh count) or dropped;
- ids are remembered (`seen`, at most `seen_max`) so a repeated id is a duplicate,
  also after the message was acknowledged or dropped.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable

import msgspec

from .broker_records import DeadLetter, Message

Holder = Hashable  # who holds a lease: the daemon uses (run_id, task, attempt)


class MailboxState(msgspec.Struct, kw_only=True):
    """A mailbox in a snapshot (leases are never written down)."""

    name: str
    messages: list[Message] = []
    seen: list[str] = []
    next_seq: int = 1
    dead: list[DeadLetter] = []


class Mailbox:
    """The messages addressed to one pipeline, in arrival order, with leases and dead letters."""

    def __init__(self, name: str, max_deliveries: int) -> None:
        self.name = name
        self.max_deliveries = max_deliveries
        self.messages: dict[str, Message] = {}
        self.leases: dict[str, Holder] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.dead: dict[str, DeadLetter] = {}
        self.next_seq = 1
        self._available: list[tuple[int, str]] = []  # heap of (seq, id); stale entries are skipped

    def __len__(self) -> int:
        """Messages waiting or leased (dead letters not included)."""
        return len(self.messages)

    @property
    def size(self) -> int:
        """What counts against `mailbox_max`: messages and dead letters."""
        return len(self.messages) + len(self.dead)

    def knows(self, message_id: str) -> bool:
        return message_id in self.messages or message_id in self.seen or message_id in self.dead

    def add(self, message: Message, seen_max: int) -> None:
        self.messages[message.id] = message
        self.next_seq = max(self.next_seq, message.seq + 1)
        heapq.heappush(self._available, (message.seq, message.id))
        self.remember(message.id, seen_max)

    def remember(self, message_id: str, seen_max: int) -> None:
        self.seen[message_id] = None
        while len(self.seen) > seen_max:
            self.seen.popitem(last=False)

    def lease(self, holder: Holder) -> Message | None:
        while self._available:
            seq, message_id = heapq.heappop(self._available)
            message = self.messages.get(message_id)
            if message is None or message.seq != seq or message_id in self.leases:
                continue
            self.leases[message_id] = holder
            message.deliveries += 1
            return message
        return None

    def release(self, message_id: str) -> None:
        if self.leases.pop(message_id, None) is not None and message_id in self.messages:
            heapq.heappush(self._available, (self.messages[message_id].seq, message_id))

    def remove(self, message_id: str) -> Message | None:
        self.leases.pop(message_id, None)
        return self.messages.pop(message_id, None)

    def failed(self, message_id: str) -> Message | None:
        """The attempt holding `message_id` failed: count it (the caller buries or releases the message)."""
        message = self.messages.get(message_id)
        if message is not None:
            message.failures += 1
            message.deliveries = max(message.deliveries, message.failures)
        return message

    def bury(self, letter: DeadLetter) -> None:
        """Move a message to the dead letters (it is delivered no more)."""
        self.remove(letter.message.id)
        self.dead[letter.message.id] = letter

    def requeue(self, ids: list[str]) -> None:
        """Dead letters go back to their original positions, with their counts reset."""
        for message_id in ids:
            message = self.dead.pop(message_id).message
            message.failures = message.deliveries = 0
            self.messages[message_id] = message
            heapq.heappush(self._available, (message.seq, message_id))
        if ids:
            self.messages = dict(sorted(self.messages.items(), key=lambda item: item[1].seq))  # arrival order again

    @property
    def unleased(self) -> int:
        return len(self.messages) - len(self.leases)

    def oldest(self) -> Message | None:
        return next(iter(self.messages.values()), None)

    def state(self) -> MailboxState:
        return MailboxState(name=self.name, messages=sorted(self.messages.values(), key=lambda m: m.seq),
                            seen=list(self.seen), next_seq=self.next_seq,
                            dead=sorted(self.dead.values(), key=lambda d: d.message.seq))

    def restore(self, state: MailboxState, seen_max: int) -> None:
        """Load a snapshot's mailbox: every message unleased, its deliveries counted from its failures."""
        for message_id in state.seen:
            self.remember(message_id, seen_max)
        for message in state.messages:
            message.deliveries = message.failures
            self.add(message, seen_max)
        for letter in state.dead:
            self.dead[letter.message.id] = letter
        self.next_seq = max(self.next_seq, state.next_seq)
