"""The broker's pure core: mailboxes with leases and shared spaces with versions.

Used by the daemon (`tagentd/broker/state.py` builds on it) and by in-process runs
(`run/broker_local.py`), so both behave the same. No I/O, no clock (callers pass
`now`), no asyncio. Every change is appended to `journal` as a record Struct
(`broker_records.py`) when journalling is on; `apply(record)` replays one, `snapshot()` / `restore()`
dump and load the whole state — that is all the daemon's broker store needs.

Guarantees (docs/broker.md):
- a mailbox is one FIFO in arrival order; `lease` hands out the oldest message
  nobody holds; a released message is offered again at its original position;
- a message whose delivery failed `max_deliveries` times becomes a dead letter
  (mailbox.py), so one poison message cannot block its mailbox;
- a message id is accepted once: a repeat of an id still in the mailbox, or of
  one of the last `seen_max` ids accepted, is dropped (the send still succeeds);
- a key's version starts at 1 and grows by 1 on every write, also across a
  delete (the tombstone keeps the last version), so a compare-and-set never
  mistakes a re-created key for the one it read;
- leases are not journalled: after a restart every unacknowledged message is
  available again (at-least-once); failed deliveries are journalled (without an
  fsync of their own), dead letters and what is done with them are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from ..bounds import check_name
from ..errors import MailboxFull, NotFound
from .broker_records import (
    AccessEntry,
    AccessLogged,
    DeadDropped,
    DeadLetter,
    DeadRequeued,
    DeliveryFailed,
    Entry,
    EntryDeleted,
    EntryWritten,
    LockGranted,
    LockReleased,
    Message,
    MessageDead,
    MessagesAcked,
    MessageSent,
    Record,
)
from .events import StepFailed, StepTimedOut, WorkerLost
from .locks import Fence, LockRules
from .mailbox import Holder, Mailbox, MailboxState
from .space import Space, SpaceState

MAILBOX_MAX = 100_000
SEEN_MAX = 100_000
LOG_MAX = 1_000
MAX_DELIVERIES = 5


class Settled(NamedTuple):
    """What settling an attempt's leases did: how many messages it settled, and which of them died."""

    count: int
    dead: list[DeadLetter]


class CoreSnapshot(msgspec.Struct, kw_only=True):
    mailboxes: list[MailboxState] = []
    spaces: list[SpaceState] = []


def attempt_error(event: Any) -> str | None:
    """Why an attempt failed (its error, its timeout, its lost worker), for a dead letter; None if it did not fail."""
    if isinstance(event, StepFailed):
        return str(event.error)
    if isinstance(event, StepTimedOut):
        return f"timed out after {event.timeout:g}s" if event.timeout else "timed out"
    if isinstance(event, WorkerLost):
        return f"worker lost: {event.reason}"
    return None


# -- the core ----------------------------------------------------------------------------------------


class BrokerCore(LockRules):
    """Mailboxes and spaces (with their locks, locks.py), with a journal of every durable change when `journal`."""

    def __init__(self, *, mailbox_max: int = MAILBOX_MAX, seen_max: int = SEEN_MAX, log_max: int = LOG_MAX,
                 max_deliveries: int = MAX_DELIVERIES, max_deliveries_of: dict[str, int] | None = None,
                 journal: bool = False) -> None:
        self.mailbox_max = mailbox_max
        self.max_deliveries = max_deliveries
        self.max_deliveries_of = dict(max_deliveries_of or {})  # per mailbox, over the default
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
            limit = self.max_deliveries_of.get(name, self.max_deliveries)
            box = self.mailboxes[check_name("a mailbox (pipeline) name", name)] = Mailbox(name, limit)
        return box

    def send(self, to: str, message_id: str, sender: str, payload: Any, now: float, *, message_type: str = "data",
             from_pipeline: str = "") -> Message | None:
        """Append a message to `to`'s mailbox; None if its id was seen before (a duplicate, dropped).

        Raises MailboxFull when the mailbox holds `mailbox_max` messages (dead letters included).
        """
        box = self.mailbox(to)
        check_name("a message id", message_id)
        if box.knows(message_id):
            return None
        if box.size >= self.mailbox_max:
            why = (f", {len(box.dead)} of them dead letters); look at them with 'tagent mailbox dead {to}' and requeue "
                   f"or drop them" if box.dead else f"); no run of pipeline {to!r} is taking them: start one")
            raise MailboxFull(f"mailbox {to!r} is full ({box.size} messages{why}, or raise mailbox_max in tagentd.toml",
                              mailbox=to, messages=box.size)
        message = Message(id=message_id, sender=sender, payload=payload, ts=now, seq=box.next_seq, mailbox=to,
                          message_type=message_type, from_pipeline=from_pipeline)
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

    def settle(self, holder: Holder, succeeded: bool, error: str | None = None, now: float = 0.0) -> Settled:
        """The holder's attempt ended: acknowledge its leases if it succeeded; else give them back.

        With an `error` the attempt failed: each held message's failures grow, and one that reached its
        mailbox's `max_deliveries` becomes a dead letter (with `error`). Without one (cancelled, or the
        attempt ended for a reason that is not the message's) the messages are only released.
        """
        held = self.holders.pop(holder, set())
        by_box: dict[str, list[str]] = {}
        for mailbox, message_id in held:
            by_box.setdefault(mailbox, []).append(message_id)
        if succeeded:
            return Settled(sum(len(self.ack(mailbox, ids)) for mailbox, ids in by_box.items()), [])
        dead: list[DeadLetter] = []
        for mailbox, ids in by_box.items():
            box = self.mailboxes.get(mailbox)
            if box is None:
                continue
            if error is not None:
                counted = [m for m in map(box.failed, sorted(ids)) if m is not None]
                if counted:
                    self._record(DeliveryFailed(mailbox=mailbox, ids=[m.id for m in counted]))
                for message in counted:
                    if message.failures >= box.max_deliveries:
                        letter = DeadLetter(message=message, error=error, dead_at=now)
                        box.bury(letter)
                        copy = msgspec.structs.replace(letter, message=msgspec.structs.replace(message))
                        self._record(MessageDead(mailbox=mailbox, letter=copy))  # unchanged by a later requeue
                        dead.append(letter)
            for message_id in ids:
                box.release(message_id)
        return Settled(len(held), dead)

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

    # -- dead letters -------------------------------------------------------------------------------

    def dead_letters(self, mailbox: str) -> list[DeadLetter]:
        box = self.mailboxes.get(mailbox)
        return sorted(box.dead.values(), key=lambda d: d.message.seq) if box is not None else []

    def _dead_ids(self, mailbox: str, ids: list[str], every: bool) -> tuple[Mailbox | None, list[str]]:
        """The dead letters named (all of them with `every`); NotFound, changing nothing, if one is not there."""
        box = self.mailboxes.get(mailbox)
        dead = box.dead if box is not None else {}
        if every:
            return box, list(dead)
        missing = [i for i in ids if i not in dead]
        if missing:
            have = ", ".join(list(dead)[:5]) + (" ..." if len(dead) > 5 else "") if dead else "none"
            raise NotFound(f"mailbox {mailbox!r} has no dead letter {missing[0]!r} (dead letters: {have}); "
                           f"list them with 'tagent mailbox dead {mailbox}'", mailbox=mailbox, id=missing[0])
        return box, list(dict.fromkeys(ids))

    def requeue(self, mailbox: str, ids: list[str], every: bool = False) -> list[str]:
        """Put dead letters back at their original positions with fresh counts; returns their ids."""
        box, found = self._dead_ids(mailbox, ids, every)
        if box is not None and found:
            box.requeue(found)
            self._record(DeadRequeued(mailbox=mailbox, ids=found))
        return found

    def drop_dead(self, mailbox: str, ids: list[str], every: bool = False) -> list[str]:
        """Delete dead letters for good (their ids stay known, so a re-send is a duplicate); returns their ids."""
        box, found = self._dead_ids(mailbox, ids, every)
        if box is not None and found:
            for message_id in found:
                del box.dead[message_id]
            self._record(DeadDropped(mailbox=mailbox, ids=found))
        return found

    # -- spaces ----------------------------------------------------------------------------------------

    def space(self, name: str) -> Space:
        space = self.spaces.get(name)
        if space is None:
            space = self.spaces[check_name("a space name", name)] = Space(name, self.log_max)
        return space

    def _log(self, space: Space, who: str, op: str, key: str, version: int, ok: bool, now: float,
             reason: str = "") -> AccessEntry:
        entry = AccessEntry(ts=now, who=who, op=op, key=key, version=version, ok=ok, reason=reason)
        space.log.append(entry)
        return entry

    def refused(self, space_name: str, who: str, op: str, key: str, now: float) -> None:
        """Log an access the caller was not allowed (the space need not exist yet)."""
        space = self.space(space_name)
        log = self._log(space, who, op, key, space.version_of(key), False, now, "denied")
        self._record(AccessLogged(space=space_name, log=log))

    def get(self, space_name: str, key: str, who: str, now: float) -> Entry | None:
        space = self.space(space_name)
        entry = space.entries.get(check_name("a key", key))
        log = self._log(space, who, "get", key, entry.version if entry else 0, entry is not None, now,
                        "" if entry else "missing")
        self._record(AccessLogged(space=space_name, log=log))
        return entry

    def put(self, space_name: str, key: str, value: Any, who: str, now: float, fence: Fence | None = None) -> Entry:
        """Write `value`; with a `fence`, only while that lease is the key's current one (else LockLost)."""
        space = self.space(space_name)
        if fence is not None:
            self.check_fence(space_name, fence, who, "put", key, now)
        version = max(space.version_of(check_name("a key", key)), space.tombstones.get(key, 0)) + 1
        return self._write(space, Entry(key=key, value=value, version=version), "put", who, now)

    def cas(self, space_name: str, key: str, value: Any, expected: int, who: str, now: float,
            fence: Fence | None = None) -> tuple[bool, Entry | None]:
        """Write if the key's version is `expected` (0: absent). Returns (written, the key's entry now)."""
        space = self.space(space_name)
        if fence is not None:
            self.check_fence(space_name, fence, who, "cas", key, now)
        current = space.entries.get(check_name("a key", key))
        if (current.version if current else 0) != expected:
            log = self._log(space, who, "cas", key, current.version if current else 0, False, now, "conflict")
            self._record(AccessLogged(space=space_name, log=log))
            return False, current
        version = max(expected, space.tombstones.get(key, 0)) + 1
        return True, self._write(space, Entry(key=key, value=value, version=version), "cas", who, now)

    def _write(self, space: Space, entry: Entry, op: str, who: str, now: float) -> Entry:
        space.write(entry)
        log = self._log(space, who, op, entry.key, entry.version, True, now)
        self._record(EntryWritten(space=space.name, entry=entry, log=log))
        return entry

    def delete(self, space_name: str, key: str, who: str, now: float, expected: int | None = None,
               fence: Fence | None = None) -> Entry | None:
        """Delete `key` (only at version `expected`, if given); returns the deleted entry, None if nothing was."""
        space = self.space(space_name)
        if fence is not None:
            self.check_fence(space_name, fence, who, "delete", key, now)
        current = space.entries.get(check_name("a key", key))
        if current is None or (expected is not None and current.version != expected):
            log = self._log(space, who, "delete", key, current.version if current else 0, False, now,
                            "missing" if current is None else "conflict")
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
                record.message.deliveries = record.message.failures = 0  # as sent (the record may alias the live one)
                box.add(record.message, self.seen_max)
        elif isinstance(record, MessagesAcked):
            box = self.mailbox(record.mailbox)
            for message_id in record.ids:
                box.remove(message_id)
        elif isinstance(record, DeliveryFailed):
            for message_id in record.ids:
                self.mailbox(record.mailbox).failed(message_id)
        elif isinstance(record, MessageDead):
            self.mailbox(record.mailbox).bury(record.letter)
        elif isinstance(record, DeadRequeued):
            box = self.mailbox(record.mailbox)
            box.requeue([i for i in record.ids if i in box.dead])
        elif isinstance(record, DeadDropped):
            box = self.mailbox(record.mailbox)
            for message_id in record.ids:
                box.dead.pop(message_id, None)
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
        elif isinstance(record, (LockGranted, LockReleased)):
            self.apply_lock(record)

    def snapshot(self) -> CoreSnapshot:
        return CoreSnapshot(
            mailboxes=[box.state() for box in self.mailboxes.values()],
            spaces=[SpaceState(name=s.name, entries=list(s.entries.values()), tombstones=dict(s.tombstones),
                               log=list(s.log), fences=dict(s.fences), leases=list(s.leases.values()))
                    for s in self.spaces.values()],
        )

    def restore(self, snapshot: CoreSnapshot) -> None:
        for state in snapshot.mailboxes:
            self.mailbox(state.name).restore(state, self.seen_max)
        for state in snapshot.spaces:
            space = self.space(state.name)
            for entry in state.entries:
                space.write(entry)
            space.tombstones.update(state.tombstones)
            space.log.extend(state.log)
            space.fences.update(state.fences)
            space.leases.update((lease.key, lease) for lease in state.leases)

    def iter_messages(self, mailbox: str) -> Iterator[Message]:
        box = self.mailboxes.get(mailbox)
        return iter(sorted(box.messages.values(), key=lambda m: m.seq)) if box else iter(())
