"""Daemon-wide LLM request limits: who may send a model request to an endpoint now.

Pure (no I/O, no clock of its own: every call takes `now`), so it is tested
without processes. Per endpoint a `Gate` enforces, for all workers together:

- `max_concurrent` permits held at once (a semaphore);
- `requests_per_minute` and `tokens_per_minute` (token buckets holding at most a
  minute's worth; a request is charged its estimated tokens when granted and
  settled to the real count when released, so the bucket may go into debt);
- a pause: a 429's Retry-After stops grants to that endpoint for everyone until it ends.

Waiting requests are granted first come, first served per endpoint. A permit is
identified by `(worker identity, request number)`; asking again for a permit
already granted grants it again (the grant may have been lost), and a worker
that is gone, or no longer lists a permit as outstanding, gives it back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

PermitKey = tuple[bytes, int]  # (worker identity, request number)
MAX_PAUSE = 300.0


@dataclass(frozen=True)
class EndpointLimits:
    """0 means no limit of that kind."""

    max_concurrent: int = 0
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0


class TokenBucket:
    """`per_minute` units a minute, refilled continuously, holding at most one minute's worth; may go into debt."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (a request bigger than the whole bucket waits for a full bucket)."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        """Put back `amount` (negative: charge more), never above capacity."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Gate:
    """One endpoint's limits and state."""

    limits: EndpointLimits
    now: float
    held: dict[PermitKey, int] = field(default_factory=dict)  # key -> tokens charged
    queue: deque[tuple[PermitKey, int]] = field(default_factory=deque)
    paused_until: float = 0.0
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None

    def __post_init__(self) -> None:
        if self.limits.requests_per_minute:
            self.requests = TokenBucket(self.limits.requests_per_minute, self.now)
        if self.limits.tokens_per_minute:
            self.tokens = TokenBucket(self.limits.tokens_per_minute, self.now)

    def blocked_for(self, tokens: int, now: float) -> float | None:
        """0 if the head of the queue could go now; seconds to wait for time alone; None if it waits for a release."""
        if self.limits.max_concurrent and len(self.held) >= self.limits.max_concurrent:
            return None
        wait = max(0.0, self.paused_until - now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait(1, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait(tokens, now))
        return wait

    def pump(self, now: float) -> list[PermitKey]:
        granted = []
        while self.queue:
            key, tokens = self.queue[0]
            if self.blocked_for(tokens, now) != 0.0:
                break
            self.queue.popleft()
            if self.requests is not None:
                self.requests.take(1, now)
            if self.tokens is not None:
                self.tokens.take(tokens, now)
            self.held[key] = tokens
            granted.append(key)
        return granted


class Limits:
    """Every limited endpoint's gate; requests to an endpoint not listed are granted at once and not tracked."""

    def __init__(self, endpoints: Mapping[str, EndpointLimits], now: float = 0.0) -> None:
        self.gates = {name: Gate(limits, now) for name, limits in endpoints.items()}
        self._where: dict[PermitKey, str] = {}

    def request(self, key: PermitKey, endpoint: str, tokens: int, now: float) -> list[PermitKey]:
        """Ask for a permit; returns the keys granted by this call (`key` itself if it may go now)."""
        gate = self.gates.get(endpoint)
        if gate is None:
            return [key]
        if key in gate.held:
            return [key]  # asked again: the grant was lost or is on its way; grant it again
        if key in self._where:
            return []  # already waiting
        self._where[key] = endpoint
        gate.queue.append((key, max(0, int(tokens))))
        return gate.pump(now)

    def release(self, key: PermitKey, now: float, used_tokens: int = 0, retry_after: float | None = None) -> list[PermitKey]:
        """Give a permit back (or stop waiting for one); returns the keys this frees up.

        `used_tokens` (if > 0) settles the tokens bucket to the real count; `retry_after` pauses the endpoint.
        """
        endpoint = self._where.pop(key, None)
        gate = self.gates.get(endpoint) if endpoint is not None else None
        if gate is None:
            return []
        charged = gate.held.pop(key, None)
        if charged is None:
            gate.queue = deque(entry for entry in gate.queue if entry[0] != key)
        elif gate.tokens is not None and used_tokens > 0:
            gate.tokens.give(charged - used_tokens, now)
        if retry_after is not None and retry_after > 0:
            gate.paused_until = max(gate.paused_until, now + min(retry_after, MAX_PAUSE))
        return gate.pump(now)

    def keep_only(self, worker: bytes, outstanding: Collection[int], now: float) -> list[PermitKey]:
        """Release every permit of `worker` whose number it no longer lists; returns the keys this frees up."""
        stale = [k for k in self._where if k[0] == worker and k[1] not in outstanding]
        return self._release_all(stale, now)

    def drop_workers(self, alive: Collection[bytes], now: float) -> list[PermitKey]:
        """Release every permit held or awaited by a worker not in `alive`."""
        return self._release_all([k for k in self._where if k[0] not in alive], now)

    def _release_all(self, keys: list[PermitKey], now: float) -> list[PermitKey]:
        granted: list[PermitKey] = []
        for key in keys:
            granted += self.release(key, now)
        return [k for k in granted if k in self._where]  # not one released later in the same sweep

    def poll(self, now: float) -> list[PermitKey]:
        """Grant what time alone has made possible (a bucket refilled, a pause ended)."""
        granted: list[PermitKey] = []
        for gate in self.gates.values():
            granted += gate.pump(now)
        return granted

    def wake_at(self, now: float) -> float | None:
        """When `poll` could next grant something (None: only a release can)."""
        times = []
        for gate in self.gates.values():
            if gate.queue:
                wait = gate.blocked_for(gate.queue[0][1], now)
                if wait is not None:
                    times.append(now + wait)
        return min(times) if times else None

    def stats(self, now: float) -> dict[str, dict[str, float]]:
        """Per endpoint: permits held, requests waiting, seconds of pause left."""
        return {name: {"in_flight": len(g.held), "waiting": len(g.queue), "paused_s": max(0.0, g.paused_until - now)}
                for name, g in self.gates.items()}
