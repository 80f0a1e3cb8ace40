"""The broker's pure core: mailboxes with leases and shared spaces with versions.

Used by the daemon (`tagentd/broker.py` builds on it) and by in-process runs
(`broker_local.py`), so both behave the same. No I/O, no clock (callers pass
`now`), no asyncio. Every change is appended to `journal` as a record Struct
when journalling is on; `apply(record)` replays one, `snapshot()` / `restore()`
dump and load the whole state — that is all the daemon's broker store needs.

Guarantees (docs/broker.md):
- a mailbox is one FIFO in arrival order; `lease` hands out the oldest message
  nobody holds; a released message is offered again at its original position;
- a message id is accepted once: a repeat of an id still in the mailbox, or of
  one of the last `seen_max` ids accepted, is dropped (the send still succeeds);
- a key's version starts at 1 and grows by 1 on every write, also across a
  delete (the tombstone keeps the last version), so a compare-and-set never
  mistakes a re-created key for the one it read;
- leases are not journalled: after a restart every unacknowledged message is
  available again (at-least-once).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator
from typing import Any

import msgspec

from .bounds import check_name
from .errors import MailboxFull
from .protocol_broker import AccessEntry, Entry, Message

MAILBOX_MAX = 100_000
SEEN_MAX = 100_000
LOG_MAX = 1_000

Holder = Hashable  # who holds a lease: the daemon uses (run_id, task, attempt)

# -- journal records ---------------------------------------------------------------------------


class Record(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of the core's change records (the broker store frames and fsyncs them)."""


class MessageSent(Record, tag="sent"):
    message: Message


class MessagesAcked(Record, tag="acked"):
    mailbox: str
    ids: list[str]


class EntryWritten(Record, tag="written"):
    space: str
    entry: Entry
    log: AccessEntry | None = None


class EntryDeleted(Record, tag="deleted"):
    space: str
    key: str
    version: int
    log: AccessEntry | None = None


class AccessLogged(Record, tag="logged"):
    """A read (or a refused write) in a space's access log; written without its own fsync."""

    space: str
    log: AccessEntry


CoreRecord = MessageSent | MessagesAcked | EntryWritten | EntryDeleted | AccessLogged


class MailboxState(msgspec.Struct, kw_only=True):
    name: str
    messages: list[Message] = []
    seen: list[str] = []
    next_seq: int = 1


class SpaceState(msgspec.Struct, kw_only=True):
    name: str
    entries: list[Entry] = []
    tombstones: dict[str, int] = {}
    log: list[AccessEntry] = []


class CoreSnapshot(msgspec.Struct, kw_only=True):
    mailboxes: list[MailboxState] = []
    spaces: list[SpaceState] = []


def value_size(value: Any) -> int:
    try:
        return len(msgspec.msgpack.encode(value))
    except (TypeError, ValueError, OverflowError):
        return 0


# -- mailboxes -------------------------------------------------------------------------------------


class Mailbox:
    """The messages addressed to one pipeline, in arrival order, with leases."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: dict[str, Message] = {}
        self.leases: dict[str, Holder] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.next_seq = 1
        self._available: list[tuple[int, str]] = []  # heap of (seq, id); stale entries are skipped

    def __len__(self) -> int:
        return len(self.messages)

    def knows(self, message_id: str) -> bool:
        return message_id in self.messages or message_id in self.seen

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

    @property
    def unleased(self) -> int:
        return len(self.messages) - len(self.leases)

    def oldest(self) -> Message | None:
        return next(iter(self.messages.values()), None)


# -- spaces ------------------------------------------------------------------------------------------


class Space:
    """A named key-value space with per-key versions and a bounded access log."""

    def __init__(self, name: str, log_max: int = LOG_MAX) -> None:
        self.name = name
        self.entries: dict[str, Entry] = {}
        self.sizes: dict[str, int] = {}
        self.tombstones: dict[str, int] = {}
        self.log: deque[AccessEntry] = deque(maxlen=log_max)

    def version_of(self, key: str) -> int:
        entry = self.entries.get(key)
        return entry.version if entry is not None else 0

    def write(self, entry: Entry) -> None:
        self.entries[entry.key] = entry
        self.sizes[entry.key] = value_size(entry.value)
        self.tombstones.pop(entry.key, None)

    def delete(self, key: str, version: int) -> None:
        self.entries.pop(key, None)
        self.sizes.pop(key, None)
        self.tombstones[key] = version

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.entries if k.startswith(prefix))


# -- the core ----------------------------------------------------------------------------------------


class BrokerCore:
    """Mailboxes and spaces, with a journal of every durable change when `journal` is True."""

    def __init__(self, *, mailbox_max: int = MAILBOX_MAX, seen_max: int = SEEN_MAX, log_max: int = LOG_MAX,
                 journal: bool = False) -> None:
        self.mailbox_max = mailbox_max
        self.seen_max = seen_max
        self.log_max = log_max
        self.journalling = journal
        self.journal: list[Record] = []
        self.mailboxes: dict[str, Mailbox] = {}
        self.spaces: dict[str, Space] = {}
        self.holders: dict[Holder, set[tuple[str, str]]] = {}  # holder -> {(mailbox, message id)}

    def _record(self, record: Record) -> None:
        if self.journalling:
            self.journal.append(record)

    def take_journal(self) -> list[Record]:
        records, self.journal = self.journal, []
        return records

    # -- mailboxes ----------------------------------------------------------------------------------

    def mailbox(self, name: str) -> Mailbox:
        box = self.mailboxes.get(name)
        if box is None:
            box = self.mailboxes[check_name("a mailbox (pipeline) name", name)] = Mailbox(name)
        return box

    def send(self, to: str, message_id: str, sender: str, payload: Any, now: float) -> Message | None:
        """Append a message to `to`'s mailbox; None if its id was seen before (a duplicate, dropped).

        Raises MailboxFull when the mailbox holds `mailbox_max` messages.
        """
        box = self.mailbox(to)
        check_name("a message id", message_id)
        if box.knows(message_id):
            return None
        if len(box) >= self.mailbox_max:
            raise MailboxFull(
                f"mailbox {to!r} is full ({len(box)} messages); no run of pipeline {to!r} is taking them: start one, "
                f"or raise mailbox_max in tagentd.toml", mailbox=to, messages=len(box))
        message = Message(id=message_id, sender=sender, payload=payload, ts=now, seq=box.next_seq, mailbox=to)
        box.add(message, self.seen_max)
        self._record(MessageSent(message=message))
        return message

    def lease(self, mailbox: str, holder: Holder) -> Message | None:
        """The oldest message of `mailbox` nobody holds, now held by `holder`; None if there is none."""
        box = self.mailboxes.get(mailbox)
        message = box.lease(holder) if box is not None else None
        if message is not None:
            self.holders.setdefault(holder, set()).add((mailbox, message.id))
        return message

    def release(self, holder: Holder) -> int:
        """Give back every message `holder` leased (its attempt failed); returns how many."""
        held = self.holders.pop(holder, set())
        for mailbox, message_id in held:
            box = self.mailboxes.get(mailbox)
            if box is not None:
                box.release(message_id)
        return len(held)

    def settle(self, holder: Holder, succeeded: bool) -> int:
        """The holder's attempt ended: acknowledge its leases if it succeeded, else release them."""
        if not succeeded:
            return self.release(holder)
        held = self.holders.pop(holder, set())
        by_box: dict[str, list[str]] = {}
        for mailbox, message_id in held:
            by_box.setdefault(mailbox, []).append(message_id)
        return sum(len(self.ack(mailbox, ids)) for mailbox, ids in by_box.items())

    def ack(self, mailbox: str, ids: list[str]) -> list[str]:
        """Remove messages for good; returns the ids that were there."""
        box = self.mailboxes.get(mailbox)
        if box is None:
            return []
        done = []
        for message_id in ids:
            holder = box.leases.get(message_id)
            if box.remove(message_id) is not None:
                done.append(message_id)
                if holder is not None:
                    self.holders.get(holder, set()).discard((mailbox, message_id))
        if done:
            self._record(MessagesAcked(mailbox=mailbox, ids=done))
        return done

    # -- spaces ----------------------------------------------------------------------------------------

    def space(self, name: str) -> Space:
        space = self.spaces.get(name)
        if space is None:
            space = self.spaces[check_name("a space name", name)] = Space(name, self.log_max)
        return space

    def _log(self, space: Space, who: str, op: str, key: str, version: int, ok: bool, now: float) -> AccessEntry:
        entry = AccessEntry(ts=now, who=who, op=op, key=key, version=version, ok=ok)
        space.log.append(entry)
        return entry

    def refused(self, space_name: str, who: str, op: str, key: str, now: float) -> None:
        """Log an access the caller was not allowed (the space need not exist yet)."""
        space = self.space(space_name)
        self._record(AccessLogged(space=space_name, log=self._log(space, who, op, key, space.version_of(key), False, now)))

    def get(self, space_name: str, key: str, who: str, now: float) -> Entry | None:
        space = self.space(space_name)
        entry = space.entries.get(check_name("a key", key))
        log = self._log(space, who, "get", key, entry.version if entry else 0, entry is not None, now)
        self._record(AccessLogged(space=space_name, log=log))
        return entry

    def put(self, space_name: str, key: str, value: Any, who: str, now: float) -> Entry:
        space = self.space(space_name)
        version = max(space.version_of(check_name("a key", key)), space.tombstones.get(key, 0)) + 1
        return self._write(space, Entry(key=key, value=value, version=version), "put", who, now)

    def cas(self, space_name: str, key: str, value: Any, expected: int, who: str, now: float) -> tuple[bool, Entry | None]:
        """Write if the key's version is `expected` (0: absent). Returns (written, the key's entry now)."""
        space = self.space(space_name)
        current = space.entries.get(check_name("a key", key))
        if (current.version if current else 0) != expected:
            log = self._log(space, who, "cas", key, current.version if current else 0, False, now)
            self._record(AccessLogged(space=space_name, log=log))
            return False, current
        version = max(expected, space.tombstones.get(key, 0)) + 1
        return True, self._write(space, Entry(key=key, value=value, version=version), "cas", who, now)

    def _write(self, space: Space, entry: Entry, op: str, who: str, now: float) -> Entry:
        space.write(entry)
        log = self._log(space, who, op, entry.key, entry.version, True, now)
        self._record(EntryWritten(space=space.name, entry=entry, log=log))
        return entry

    def delete(self, space_name: str, key: str, who: str, now: float, expected: int | None = None) -> Entry | None:
        """Delete `key` (only at version `expected`, if given); returns the deleted entry, None if nothing was."""
        space = self.space(space_name)
        current = space.entries.get(check_name("a key", key))
        if current is None or (expected is not None and current.version != expected):
            log = self._log(space, who, "delete", key, current.version if current else 0, False, now)
            self._record(AccessLogged(space=space_name, log=log))
            return None
        space.delete(key, current.version)
        log = self._log(space, who, "delete", key, current.version, True, now)
        self._record(EntryDeleted(space=space_name, key=key, version=current.version, log=log))
        return current

    # -- durability --------------------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Replay one journal record (at load; the journal is not written while replaying)."""
        if isinstance(record, MessageSent):
            box = self.mailbox(record.message.mailbox)
            if not box.knows(record.message.id):
                record.message.deliveries = 0
                box.add(record.message, self.seen_max)
        elif isinstance(record, MessagesAcked):
            box = self.mailbox(record.mailbox)
            for message_id in record.ids:
                box.remove(message_id)
        elif isinstance(record, EntryWritten):
            space = self.space(record.space)
            space.write(record.entry)
            if record.log is not None:
                space.log.append(record.log)
        elif isinstance(record, EntryDeleted):
            space = self.space(record.space)
            space.delete(record.key, record.version)
            if record.log is not None:
                space.log.append(record.log)
        elif isinstance(record, AccessLogged):
            self.space(record.space).log.append(record.log)

    def snapshot(self) -> CoreSnapshot:
        return CoreSnapshot(
            mailboxes=[MailboxState(name=b.name, messages=sorted(b.messages.values(), key=lambda m: m.seq),
                                    seen=list(b.seen), next_seq=b.next_seq) for b in self.mailboxes.values()],
            spaces=[SpaceState(name=s.name, entries=list(s.entries.values()), tombstones=dict(s.tombstones),
                               log=list(s.log)) for s in self.spaces.values()],
        )

    def restore(self, snapshot: CoreSnapshot) -> None:
        for state in snapshot.mailboxes:
            box = self.mailbox(state.name)
            for message_id in state.seen:
                box.remember(message_id, self.seen_max)
            for message in state.messages:
                message.deliveries = 0
                box.add(message, self.seen_max)
            box.next_seq = max(box.next_seq, state.next_seq)
        for state in snapshot.spaces:
            space = self.space(state.name)
            for entry in state.entries:
                space.write(entry)
            space.tombstones.update(state.tombstones)
            space.log.extend(state.log)

    def iter_messages(self, mailbox: str) -> Iterator[Message]:
        box = self.mailboxes.get(mailbox)
        return iter(sorted(box.messages.values(), key=lambda m: m.seq)) if box else iter(())
