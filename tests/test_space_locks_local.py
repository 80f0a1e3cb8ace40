"""Per-key locks of shared spaces in in-process runs (`run_pipeline`, `LocalBroker`), and the core's lease rules.

The same behaviour as with the daemon (tests/test_space_locks.py), minus durability across processes.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

from tagent_client import Pipeline, SharedMemorySpace
from tagent_client.cli.broker import access_table
from tagent_client.core.broker import BrokerCore
from tagent_client.errors import InvalidRequest, LockLost, LockTimeout, RetryableError
from tagent_client.run.broker_local import LocalBroker
from tagent_client.run.local import run_pipeline

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fresh_broker() -> None:
    """Each test gets a new process-wide broker (LocalBroker.default())."""
    LocalBroker._default = None


def log_of(space: str) -> list[tuple[str, str, int, bool, str]]:
    return [(e.op, e.key, e.version, e.ok, e.reason) for e in LocalBroker.default().core.spaces[space].log]


def test_twenty_concurrent_steps_count_exactly_under_the_lock_without_cas() -> None:
    # Given 20 concurrent items that each read, yield and write a counter 10 times, holding the key's lock
    counter = Pipeline("counter", max_concurrent_steps=20)

    @counter.task(execution_mode="parallel_merge", over=list(range(20)))
    async def bump(ctx, item):  # noqa: ANN001, ANN202
        space = ctx.space("shared")
        for _ in range(10):
            async with space.lock("n", ttl=10) as lease:
                value = await space.read("n") or 0
                await asyncio.sleep(0)  # ok-sleep: a yield inside the read-modify-write, on purpose
                await space.write("n", value + 1, fence=lease)
        return item

    # When they run
    result = asyncio.run(run_pipeline(counter))
    # Then none of the 200 increments was lost, each lease had the next token, and all were released
    assert result.status == "completed", result.error
    core = LocalBroker.default().core
    assert core.spaces["shared"].entries["n"].value == 200
    assert [v for op, _, v, ok, _ in log_of("shared") if op == "lock" and ok][-5:] == [196, 197, 198, 199, 200]
    assert core.leases_held() == []


def test_waiters_are_served_first_come_first_served() -> None:
    # Given a held lock and three steps asking for it one after the other
    broker = LocalBroker.default()
    pipeline = Pipeline("fifo", max_concurrent_steps=4)

    @pipeline.task(execution_mode="concurrent")
    async def holder(ctx):  # noqa: ANN001, ANN202
        space = ctx.space("q")
        lease = await space.acquire("k", ttl=10)
        order = []
        for n in range(3):  # each waiter parks before the next one is started
            request = asyncio.ensure_future(space.acquire("k", ttl=10, timeout=5))
            order.append(request)
            while broker.locks.waiting("q", "k") <= n:
                await asyncio.sleep(0)  # ok-sleep: a yield until the request is parked (no time passes)
        await space.release(lease)
        tokens = []
        for task in order:
            granted = await task
            tokens.append(granted.token)
            await space.release(granted)
        return tokens

    result = asyncio.run(run_pipeline(pipeline))
    # Then they got the lock in the order they asked, with growing tokens
    assert result.status == "completed", result.error
    assert result.step_outputs["holder"] == [2, 3, 4]


def test_an_expired_lease_goes_to_the_waiter_and_the_old_holders_fenced_write_is_refused() -> None:
    # Given a step holding a lock with a short ttl, and another waiting for it
    pipeline = Pipeline("expiry", max_concurrent_steps=2)

    @pipeline.task(execution_mode="concurrent")
    async def slow(ctx):  # noqa: ANN001, ANN202
        space = ctx.space("e")
        async with space.lock("k", ttl=0.2) as lease:
            await space.write("k", "slow", fence=lease)
            await space.write("held", True)
            await ctx.wait_for_event("space.e.taken", timeout=10)  # the step's work: outlive its ttl
            with pytest.raises(LockLost, match="newer lease"):
                await space.write("k", "slow again", fence=lease)
            with pytest.raises(LockLost):
                await space.renew(lease)
        return "unreachable: leaving the block raises LockLost"

    @pipeline.task(execution_mode="concurrent")
    async def patient(ctx):  # noqa: ANN001, ANN202
        space = ctx.space("e")
        while not await space.read("held"):
            await ctx.wait_for_event("space.e.held", timeout=1)
        lease = await space.acquire("k", ttl=10, timeout=10)
        await space.write("k", "patient", fence=lease.token)
        await space.write("taken", lease.token)
        return lease.token

    result = asyncio.run(run_pipeline(pipeline))
    # Then the waiter got token 2 and its write stands; the old holder's write and its block's exit were refused
    assert result.step_outputs["patient"] == 2
    assert "slow" in result.failed_steps and "ended before the block did" in result.error_details["slow"]
    assert LocalBroker.default().core.spaces["e"].entries["k"].value == "patient"
    assert ("unlock", "k", 1, True, "expired") in log_of("e") and ("put", "k", 2, False, "stale") in log_of("e")
    # And `tagent space log` says so
    shown = access_table(list(LocalBroker.default().core.spaces["e"].log))
    assert "ok (expired)" in shown and "refused: a newer lease fences it" in shown


def test_an_attempt_that_ends_or_is_cancelled_releases_its_locks() -> None:
    # Given a step that fails holding a lock and succeeds on its retry holding it again, a dependent that takes it
    # without waiting, and a concurrent step that holds another lock until the run is cancelled by a failure
    pipeline = Pipeline("ends", max_concurrent_steps=3, fail_fast=True)

    @pipeline.task(max_retries=1, retry_delay=0.01)
    async def first(ctx):  # noqa: ANN001, ANN202
        lease = await ctx.space("a").acquire("k", ttl=600, timeout=0)
        if ctx.attempt == 1:
            raise RetryableError("fails holding the lock")
        return lease.token

    @pipeline.task(depends_on=["first"])
    async def second(ctx):  # noqa: ANN001, ANN202
        return (await ctx.space("a").acquire("k", ttl=600, timeout=0)).token

    @pipeline.task(execution_mode="concurrent")
    async def hog(ctx):  # noqa: ANN001, ANN202
        await ctx.space("a").acquire("other", ttl=600)
        await ctx.wait_for_event("never.", timeout=20)  # the step's work: hold it until cancelled

    @pipeline.task(depends_on=["second"], max_retries=0)
    async def boom(ctx):  # noqa: ANN001, ANN202
        raise ValueError("fail_fast cancels the hog")

    result = asyncio.run(run_pipeline(pipeline))
    # Then every lease ended with its attempt: failed, succeeded, cancelled
    assert (result.step_outputs["first"], result.step_outputs["second"]) == (2, 3)
    assert result.status == "failed"
    lines = log_of("a")
    assert ("unlock", "k", 1, True, "attempt failed") in lines
    assert ("unlock", "k", 2, True, "attempt succeeded") in lines
    assert ("unlock", "other", 1, True, "attempt cancelled") in lines
    assert LocalBroker.default().core.leases_held() == []


def test_a_lock_not_granted_in_time_raises_lock_timeout() -> None:
    pipeline = Pipeline("timeout")

    @pipeline.task()
    async def both(ctx):  # noqa: ANN001, ANN202
        space = ctx.space("t")
        await space.acquire("k", ttl=10)
        with pytest.raises(LockTimeout, match="was not granted within 0.05s"):
            async with space.lock("k", timeout=0.05):
                pass
        return [line[4] for line in log_of("t") if line[0] == "lock"]

    result = asyncio.run(run_pipeline(pipeline))
    assert result.step_outputs["both"] == ["", "timeout"]


def test_the_core_refuses_stale_lost_and_unknown_fences_and_keeps_tokens_in_its_snapshot() -> None:
    # Given a core where key k's first lease ended and a second was granted
    core = BrokerCore(journal=True)
    first = core.lock("s", "k", ("r", "t", 1), "a", 10, now=0.0)
    assert first is not None and core.lock("s", "k", ("r", "t", 2), "b", 10, now=0.0) is None
    core.unlock("s", "k", first.token, "released", 1.0)
    second = core.lock("s", "k", ("r", "t", 2), "b", 10, now=1.0)
    assert second is not None and second.token == 2
    # When writes are fenced by each: the stale one is refused and changes nothing, the current one is written
    with pytest.raises(LockLost, match="token 1 .* newer lease"):
        core.put("s", "k", "stale", "a", 2.0, fence=("k", 1))
    with pytest.raises(InvalidRequest, match="never granted"):
        core.put("s", "k", "forged", "a", 2.0, fence=("k", 9))
    assert "k" not in core.spaces["s"].entries
    assert core.put("s", "k", "current", "b", 2.0, fence=("k", 2)).version == 1
    core.unlock("s", "k", 2, "released", 3.0)
    with pytest.raises(LockLost, match="it ended"):
        core.delete("s", "k", "b", 3.0, fence=("k", 2))
    # Then a restored snapshot and a replayed journal both continue the tokens from 3
    restored = BrokerCore()
    restored.restore(core.snapshot())
    replayed = BrokerCore()
    for record in core.take_journal():
        replayed.apply(record)
    for other in (restored, replayed):
        assert other.leases_held() == [] and other.lock("s", "k", None, "c", 10, 4.0).token == 3


def test_space_ref_is_a_deprecated_name_of_shared_memory_space() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tagent_client.run.context_broker import SpaceRef
    assert SpaceRef is SharedMemorySpace
    assert any(issubclass(w.category, DeprecationWarning) and "SharedMemorySpace" in str(w.message) for w in caught)
