"""`SharedMemorySpace`: one shared space as a step sees it — `ctx.space("research")`.

Each call is one broker request (protocol_broker) made through the step's context,
to the daemon or the in-process `LocalBroker`. Guarantees (docs/broker.md, "Shared
spaces" and "Locks"):

- writes (`write`/`put`, `cas`, `delete`) are durable when they return; every key
  has a version (1 on creation, +1 on each write);
- `lock(key, ttl)` is a lease on one key, held by this attempt: first come, first
  served; it ends when released, when `ttl` passes without a `renew`, or when the
  attempt ends (succeeds, fails, times out, is cancelled, or its worker dies);
- each lease carries the key's fencing token, which only grows (also across
  daemon restarts). A write passed `fence=lease` is refused with `LockLost` unless
  that lease is still the key's current one — so a holder whose lease ran out
  cannot overwrite the work of the next.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import msgspec

from ..core.broker_records import AccessEntry, Entry, Lease
from ..core.result import to_builtins
from ..errors import InvalidRequest, LockLost, LockTimeout
from ..wire import protocol_broker as b

#: The step's broker call: (request, how long it may be parked) -> the result as plain data.
Call = Callable[[b.BrokerRequest, float], Awaitable[Any]]
FenceArg = Lease | int | None


class SharedMemorySpace:
    """A named key-value space shared by pipelines: versioned keys, an access log, and per-key locks."""

    def __init__(self, call: Call, name: str) -> None:
        self._call = call
        self.name = name

    # -- values ------------------------------------------------------------------------------------------

    async def read(self, key: str) -> Any:
        """The key's value, or None if it does not exist (`get` also gives its version)."""
        entry = await self.get(key)
        return entry.value if entry is not None else None

    async def write(self, key: str, value: Any, *, fence: FenceArg = None) -> Entry:
        """Write `value` (durable when this returns); with `fence=lease`, only while that lease holds (else LockLost)."""
        return await self.put(key, value, fence=fence)

    async def get(self, key: str) -> Entry | None:
        """The key's entry (value and version), or None if it does not exist."""
        found = await self._call(b.SpaceGet(space=self.name, key=key), 0.0)
        return msgspec.convert(found, Entry) if found is not None else None

    async def put(self, key: str, value: Any, *, fence: FenceArg = None) -> Entry:
        """Write `value` (durable when this returns); returns the new entry with its version."""
        op = b.SpacePut(space=self.name, key=key, value=to_builtins(value), **self._fence(fence))
        return msgspec.convert(await self._call(op, 0.0), Entry)

    async def cas(self, key: str, value: Any, expected_version: int, *, fence: FenceArg = None) -> bool:
        """Write only if the key is still at `expected_version` (0: does not exist yet); True if written."""
        op = b.SpaceCas(space=self.name, key=key, value=to_builtins(value), expected_version=expected_version,
                        **self._fence(fence))
        return bool((await self._call(op, 0.0))["ok"])

    async def delete(self, key: str, expected_version: int | None = None, *, fence: FenceArg = None) -> bool:
        """Delete the key (only at `expected_version`, if given); True if it was deleted."""
        op = b.SpaceDelete(space=self.name, key=key, expected_version=expected_version, **self._fence(fence))
        return bool((await self._call(op, 0.0))["deleted"])

    async def keys(self, prefix: str = "") -> list[str]:
        """The space's keys that start with `prefix`, sorted."""
        return list(await self._call(b.SpaceKeys(space=self.name, prefix=prefix), 0.0))

    async def access_log(self, limit: int = 100) -> list[AccessEntry]:
        """The space's last `limit` accesses, oldest first: reads, writes, refusals, locks and unlocks."""
        return msgspec.convert(await self._call(b.SpaceLog(space=self.name, limit=limit), 0.0), list[AccessEntry])

    def _fence(self, fence: FenceArg) -> dict[str, Any]:
        if fence is None:
            return {}
        if isinstance(fence, Lease):
            if fence.space != self.name:
                raise InvalidRequest(f"a lease on space {fence.space!r} cannot fence a write to space {self.name!r}")
            return {"fence": fence.token, "fence_key": fence.key}
        return {"fence": int(fence)}

    # -- locks -------------------------------------------------------------------------------------------

    def lock(self, key: str, ttl: float = 30.0, timeout: float | None = None) -> LockRequest:
        """`async with space.lock(key, ttl=30) as lease:` — held for the block (LockTimeout after `timeout` s)."""
        return LockRequest(self, key, ttl, timeout)

    async def acquire(self, key: str, ttl: float = 30.0, timeout: float | None = None) -> Lease | None:
        """A lease on `key` for `ttl` s, after those who asked before; None after `timeout` s (None: wait on)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = b.MAX_WAIT if deadline is None else max(0.0, min(b.MAX_WAIT, deadline - time.monotonic()))
            found = await self._call(b.SpaceLock(space=self.name, key=key, ttl=ttl, wait=left), left)
            if found is not None:
                return msgspec.convert(found, Lease)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def release(self, lease: Lease) -> bool:
        """End `lease` (the next waiter gets the key); False if it had ended already (expired, or taken over)."""
        return bool((await self._call(b.SpaceUnlock(space=self.name, key=lease.key, token=lease.token), 0.0))["released"])

    async def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Hold `lease` `ttl` (default: its own ttl) more seconds from now; LockLost if it ended already."""
        op = b.SpaceRenew(space=self.name, key=lease.key, token=lease.token, ttl=lease.ttl if ttl is None else ttl)
        return msgspec.convert(await self._call(op, 0.0), Lease)

    def __repr__(self) -> str:
        return f"SharedMemorySpace({self.name!r})"


class LockRequest:
    """`async with space.lock("k", ttl=30) as lease:` — acquire on entry, release on exit.

    Entry raises LockTimeout when `timeout` passes first. Exit raises LockLost if the block ended normally but
    the lease had ended before it (expired): the block's unfenced writes may then have overlapped the next holder's.
    """

    def __init__(self, space: SharedMemorySpace, key: str, ttl: float, timeout: float | None) -> None:
        self.space, self.key, self.ttl, self.timeout = space, key, ttl, timeout
        self.lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self.lease = await self.space.acquire(self.key, self.ttl, self.timeout)
        if self.lease is None:
            raise LockTimeout(f"the lock on key {self.key!r} of space {self.space.name!r} was not granted within "
                              f"{self.timeout:g}s (another holder has it); wait longer or retry later",
                              space=self.space.name, key=self.key)
        return self.lease

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        released = await self.space.release(lease)
        if not released and kind is None:
            raise LockLost(f"the lease with token {lease.token} on key {lease.key!r} of space {self.space.name!r} "
                           f"ended before the block did (its ttl of {lease.ttl:g}s passed): what the block wrote "
                           f"without fence=lease may have overlapped the next holder; use a longer ttl or renew it",
                           space=self.space.name, key=lease.key, token=lease.token)
