"""`Space`: a named key-value space with per-key versions, tombstones and a bounded access log.

Part of the broker's pure core (`broker.py` owns the spaces and journals
their changes); no I/O, no clock. A key's version starts at 1 and grows by 1 on
every write, also across a delete (the tombstone keeps the last version). A key's
fencing counter (the token of its latest lease, locks.py) only grows, also across
a delete.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from .broker_records import AccessEntry, Entry, Lease


class SpaceState(msgspec.Struct, kw_only=True):
    """A space in a snapshot."""

    name: str
    entries: list[Entry] = []
    tombstones: dict[str, int] = {}
    log: list[AccessEntry] = []
    fences: dict[str, int] = {}
    leases: list[Lease] = []


def value_size(value: Any) -> int:
    """Encoded size of a value in bytes (0 if it cannot be encoded)."""
    try:
        return len(msgspec.msgpack.encode(value))
    except (TypeError, ValueError, OverflowError):
        return 0


class Space:
    """A named key-value space with per-key versions and a bounded access log."""

    def __init__(self, name: str, log_max: int) -> None:
        self.name = name
        self.entries: dict[str, Entry] = {}
        self.sizes: dict[str, int] = {}
        self.tombstones: dict[str, int] = {}
        self.log: deque[AccessEntry] = deque(maxlen=log_max)
        self.fences: dict[str, int] = {}  # key -> the token of its latest lease (only grows)
        self.leases: dict[str, Lease] = {}  # key -> the lease held on it now

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
