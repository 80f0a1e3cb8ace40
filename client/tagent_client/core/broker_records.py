"""What the broker keeps, as msgspec data: the messages, dead letters, space entries and access-log lines it
hands to steps and clients as they are, and the records of every change it journals.

The broker's core (`broker.py`, `mailbox.py`, `space.py`) holds these; the control protocol
(`wire/protocol_broker.py`) carries them; the daemon's broker store frames and fsyncs the
journal records (`CoreRecord`), and replays them with `BrokerCore.apply`.
"""

# Annotations stay real objects (no `from __future__ import annotations`): msgspec would otherwise
# eval each one as a string when the decoders are built, ~2 ms of every command's start.

from typing import Any

import msgspec

# -- what a step or a client sees -----------------------------------------------------------


class Message(msgspec.Struct, kw_only=True):
    """A direct message in a pipeline's mailbox.

    `deliveries` counts leases, this one included; `failures` counts the attempts that held it and failed
    (durable: at `max_deliveries` failures the message becomes a dead letter). `message_type` is the
    sender's label for it ("data" unless it said otherwise) and `from_pipeline` the pipeline it came from
    ("" when a client sent it without naming one); messages stored before these existed read as "data", "".
    """

    id: str
    sender: str
    payload: Any = None
    ts: float = 0.0
    seq: int = 0
    mailbox: str = ""
    deliveries: int = 0
    failures: int = 0
    message_type: str = "data"
    from_pipeline: str = ""


class DeadLetter(msgspec.Struct, kw_only=True):
    """A message whose delivery failed `max_deliveries` times: kept aside, with the last error, until it is
    requeued or dropped."""

    message: Message
    error: str
    dead_at: float = 0.0


class Entry(msgspec.Struct, kw_only=True):
    """One key of a shared space: its value and version (1 on creation, +1 on every write)."""

    key: str
    value: Any = None
    version: int = 0


class AccessEntry(msgspec.Struct, kw_only=True, array_like=True):
    """One line of a space's access log; `reason` says why an access did not happen (empty when `ok`).

    Reasons: "missing" (no such key), "conflict" (the key was at another version than expected),
    "denied" (the space's allow-list). Entries written before reasons existed have none.
    """

    ts: float
    who: str
    op: str
    key: str = ""
    version: int = 0
    ok: bool = True
    reason: str = ""


class Lease(msgspec.Struct, kw_only=True):
    """A lock on one key of a space, granted to `holder` (run, task, attempt) until `expires_at` (wall clock).

    `token` is the key's fencing token: it grows by 1 with every lease granted on that key, forever (across
    restarts), so a write fenced with an older token than the key's latest lease can be told apart and refused.
    """

    space: str
    key: str
    token: int
    who: str = ""
    holder: tuple[str, str, int] | None = None
    ttl: float = 0.0
    granted_at: float = 0.0
    expires_at: float = 0.0


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


class DeliveryFailed(Record, tag="delivery_failed"):
    """The attempt holding these messages failed (their `failures` grow); written without its own fsync."""

    mailbox: str
    ids: list[str]


class MessageDead(Record, tag="dead"):
    """A message failed its last allowed delivery and became a dead letter."""

    mailbox: str
    letter: DeadLetter


class DeadRequeued(Record, tag="dead_requeued"):
    mailbox: str
    ids: list[str]


class DeadDropped(Record, tag="dead_dropped"):
    mailbox: str
    ids: list[str]


class LockGranted(Record, tag="lock_granted"):
    """A lease was granted: the key's fencing counter is now `lease.token` (fsynced before the holder hears of it)."""

    lease: Lease
    log: AccessEntry | None = None


class LockReleased(Record, tag="lock_released"):
    """A lease ended (released, expired, its attempt ended); written without an fsync of its own: every lease
    ends at a restart anyway."""

    space: str
    key: str
    token: int
    log: AccessEntry | None = None


CoreRecord = (MessageSent | MessagesAcked | EntryWritten | EntryDeleted | AccessLogged | DeliveryFailed | MessageDead
              | DeadRequeued | DeadDropped | LockGranted | LockReleased)
#: A crash may lose the newest of these: a log line, one failure count, the end of a lease (all end at a restart).
UNSYNCED = (AccessLogged, DeliveryFailed, LockReleased)
