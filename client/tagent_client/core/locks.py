"""Per-key locks of the shared spaces, as leases with fencing tokens: the pure rules.

Mixed into `BrokerCore` (broker.py), so the daemon and in-process runs share them.
No clock (callers pass `now`), no asyncio: waiting, ttl timers and hand-over are
`lock_queue.py`. Guarantees (docs/broker.md, "Locks"):

- at most one lease per (space, key) at a time; a lease is held by an attempt
  `(run, task, attempt)` — its `holder` — and ends when released, when its ttl
  passes, or when that attempt ends (the callers say when);
- every lease granted on a key gets the next fencing token of that key: 1, 2, 3,
  ... forever. The grant is journalled (`LockGranted`, fsynced before the holder
  hears of it) and the counter is in snapshots, so a token is never handed out
  twice, also across a crash;
- a write fenced with a token (`fence=(key, token)`) is refused with `LockLost`
  unless that token's lease is the key's current one: an older token means a
  newer lease was granted since, the same token with no lease means it ended;
- grants and ends of leases, renewals, refused and timed-out lock requests and
  refused fenced writes are lines of the space's access log (ops `lock`,
  `unlock`, `renew`; the `version` column holds the fencing token; for `unlock`
  the `reason` says why the lease ended).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..bounds import check_name
from ..errors import InvalidRequest, LockLost
from .broker_records import AccessEntry, AccessLogged, Lease, LockGranted, LockReleased, Record
from .events import StepFailed, StepInterrupted, StepSucceeded, StepTimedOut, WorkerLost

if TYPE_CHECKING:
    from .space import Space

Holder = tuple[str, str, int]
Fence = tuple[str, int]  # (the locked key, the token of the lease that fences the write)


def ended_why(outcome: Any) -> str:
    """Why an attempt's leases end, from its outcome event (None: the attempt was cancelled)."""
    if isinstance(outcome, StepSucceeded):
        return "attempt succeeded"
    if isinstance(outcome, StepFailed):
        return "attempt failed"
    if isinstance(outcome, StepTimedOut):
        return "attempt timed out"
    if isinstance(outcome, (WorkerLost, StepInterrupted)):  # its worker process ended
        return "worker lost"
    return "attempt cancelled"


class LockRules:
    """The lease table of every space; needs `space()`, `spaces`, `_log()` and `_record()` (BrokerCore)."""

    spaces: dict[str, Space]
    space: Callable[[str], Space]
    _log: Callable[..., AccessEntry]
    _record: Callable[[Record], None]

    def note(self, space_name: str, who: str, op: str, key: str, token: int, ok: bool, reason: str, now: float) -> None:
        """A log line of its own (a refused or timed-out lock request, a renewal), without an fsync of its own."""
        space = self.space(space_name)
        self._record(AccessLogged(space=space_name, log=self._log(space, who, op, key, token, ok, now, reason)))

    def lease_of(self, space_name: str, key: str) -> Lease | None:
        space = self.spaces.get(space_name)
        return space.leases.get(key) if space is not None else None

    def lock(self, space_name: str, key: str, holder: Holder | None, who: str, ttl: float, now: float) -> Lease | None:
        """Grant a lease on `key` with the key's next fencing token; None if another lease holds it."""
        space = self.space(space_name)
        if check_name("a key", key) in space.leases:
            return None
        token = space.fences.get(key, 0) + 1
        lease = Lease(space=space_name, key=key, token=token, who=who, holder=holder, ttl=ttl, granted_at=now,
                      expires_at=now + ttl)
        space.fences[key] = token
        space.leases[key] = lease
        self._record(LockGranted(lease=lease, log=self._log(space, who, "lock", key, token, True, now)))
        return lease

    def unlock(self, space_name: str, key: str, token: int, why: str, now: float) -> Lease | None:
        """End the lease `token` on `key` (`why`: released, expired, ...); None if it is not the current one."""
        space = self.spaces.get(space_name)
        lease = space.leases.get(key) if space is not None else None
        if space is None or lease is None or lease.token != token:
            return None
        del space.leases[key]
        log = self._log(space, lease.who, "unlock", key, token, True, now, why)
        self._record(LockReleased(space=space_name, key=key, token=token, log=log))
        return lease

    def renew(self, space_name: str, key: str, token: int, ttl: float, who: str, now: float) -> Lease:
        """Extend the lease `token` on `key` to `ttl` seconds from now; LockLost if it is not held any more."""
        lease = self.lease_of(space_name, key)
        if lease is None or lease.token != token:
            self.note(space_name, who, "renew", key, token, False, "lost", now)
            raise LockLost(self._lost(space_name, key, token, "renew it"), space=space_name, key=key, token=token)
        lease.ttl, lease.expires_at = ttl, now + ttl
        self.note(space_name, who, "renew", key, token, True, "", now)
        return lease

    def check_fence(self, space_name: str, fence: Fence, who: str, op: str, key: str, now: float) -> None:
        """Refuse (LockLost, logged) a write to `key` fenced by a lease that is not the current one of `fence`'s key."""
        fence_key, token = fence
        space = self.space(space_name)
        latest = space.fences.get(check_name("a key", fence_key), 0)
        if token > latest or token < 1:
            raise InvalidRequest(f"fencing token {token} was never granted on key {fence_key!r} of space "
                                 f"{space_name!r} (its latest is {latest}); pass the lease the lock gave you")
        lease = space.leases.get(fence_key)
        if lease is not None and lease.token == token:
            return
        reason = "stale" if token < latest else "lost"
        self._record(AccessLogged(space=space_name, log=self._log(space, who, op, key, space.version_of(key), False,
                                                                   now, reason)))
        raise LockLost(self._lost(space_name, fence_key, token, f"{op} {key!r} under it"), space=space_name,
                       key=fence_key, token=token)

    def _lost(self, space_name: str, key: str, token: int, what: str) -> str:
        latest = self.space(space_name).fences.get(key, 0)
        why = (f"a newer lease (token {latest}) was granted since" if token < latest
               else "it ended (released, expired, or its attempt ended)")
        return (f"the lease with token {token} on key {key!r} of space {space_name!r} is lost: {why}; cannot {what}. "
                f"Take the lock again and re-read what you are about to write")

    def leases_held(self, holder: Holder | None = None, run_id: str | None = None) -> list[Lease]:
        """The leases held now: all of them, those of one attempt (`holder`), or those of one run (`run_id`)."""
        found = [lease for space in self.spaces.values() for lease in space.leases.values()]
        if holder is not None:
            return [lease for lease in found if lease.holder == holder]
        if run_id is not None:
            return [lease for lease in found if lease.holder is not None and lease.holder[0] == run_id]
        return found

    def apply_lock(self, record: LockGranted | LockReleased) -> None:
        """Replay a lock record (at load)."""
        if isinstance(record, LockGranted):
            lease = record.lease
            space = self.space(lease.space)
            space.fences[lease.key] = max(space.fences.get(lease.key, 0), lease.token)
            space.leases[lease.key] = lease
            if record.log is not None:
                space.log.append(record.log)
            return
        space = self.space(record.space)
        held = space.leases.get(record.key)
        if held is not None and held.token == record.token:
            del space.leases[record.key]
        if record.log is not None:
            space.log.append(record.log)
