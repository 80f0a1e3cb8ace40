"""Per-key locks of shared spaces (leases with fencing tokens), on real daemons and workers.

Each test starts its own daemon (conftest `make_daemon`). Nothing sleeps to wait: tests wait
on runs (`Client.wait`), on files the steps write, or poll with a deadline (`wait_until`);
the steps wait on each other through the space itself (`wait_for_event` as the poll's tick).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until, write_pipeline

pytestmark = pytest.mark.timeout(120)

PIPES = """
    import asyncio
    import os
    from pathlib import Path
    from tagent_client import Pipeline
    from tagent_client.errors import LockLost, RetryableError

    async def until(ctx, space, key):
        # the step's own wait for another step's write; wait_for_event is only the poll's tick
        while (await space.read(key)) is None:
            await ctx.wait_for_event(f"space.{space.name}.{key}", timeout=0.5)

    counter = Pipeline("counter", max_concurrent_steps=20)

    @counter.task(execution_mode="parallel_merge", over=list(range(20)), final=True)
    async def bump(ctx, item):
        space = ctx.space("locked")
        pids = set()
        for _ in range(5):
            async with space.lock("n", ttl=60) as lease:
                value = await space.read("n") or 0   # no CAS: only the lock keeps the steps apart
                await asyncio.sleep(0.001)  # ok-sleep: widens the read-modify-write window on purpose
                await space.write("n", value + 1)
            pids.add(os.getpid())
        return sorted(pids)

    crash = Pipeline("crash", max_concurrent_steps=2)

    @crash.task(execution_mode="concurrent", max_retries=1, retry_delay=0.01)
    async def hold(ctx):
        space = ctx.space("c")
        if ctx.attempt > 1:
            return {"retry_token": (await space.acquire("k", ttl=60, timeout=60)).token}
        lease = await space.acquire("k", ttl=600)
        Path(ctx.params["dir"], "holder.pid").write_text(str(os.getpid()))
        await space.write("held", lease.token)
        await ctx.wait_for_event("never.", timeout=600)   # the step's work: hold the lock until its worker dies

    @crash.task(execution_mode="concurrent")
    async def wait(ctx):
        space = ctx.space("c")
        await until(ctx, space, "held")
        assert await space.acquire("k", ttl=60, timeout=0) is None   # it is held: this one parks behind it
        Path(ctx.params["dir"], "waiter.pid").write_text(str(os.getpid()))
        lease = await space.acquire("k", ttl=60, timeout=90)
        await space.write("k", "waiter", fence=lease)
        await space.release(lease)
        return {"token": lease.token, "pid": os.getpid()}

    expiry = Pipeline("expiry", max_concurrent_steps=2)

    @expiry.task(execution_mode="concurrent", max_retries=0)
    async def slow(ctx):
        space = ctx.space("e")
        lease = await space.acquire("k", ttl=0.5)
        await space.write("k", "slow", fence=lease)              # accepted: the lease holds
        await space.write("held", lease.token)
        await until(ctx, space, "taken")                         # meanwhile its ttl passes; the waiter gets it
        try:
            await space.write("k", "slow again", fence=lease)
        except LockLost as exc:
            return {"rejected": str(exc), "released": await space.release(lease)}
        return {"rejected": None}

    @expiry.task(execution_mode="concurrent", max_retries=0)
    async def patient(ctx):
        space = ctx.space("e")
        await until(ctx, space, "held")
        lease = await space.acquire("k", ttl=60, timeout=60)
        await space.write("k", "patient", fence=lease)
        await space.write("taken", lease.token)
        return lease.token

    restart = Pipeline("restart")

    @restart.task(final=True)
    async def keep(ctx):
        lease = await ctx.space("r").acquire("k", ttl=600, timeout=30)
        marker = Path(ctx.params["dir"], "held-once")
        if not marker.exists():
            marker.write_text(str(lease.token))
            await ctx.wait_for_event("never.", timeout=600)  # the step's work: hold it until the daemon dies
        return lease.token

    cancelled = Pipeline("cancelled")

    @cancelled.task()
    async def sit(ctx):
        space = ctx.space("x")
        lease = await space.acquire("k", ttl=600)
        await space.write("held", lease.token)
        await ctx.wait_for_event("never.", timeout=600)   # the step's work: hold the lock until cancelled

    ends = Pipeline("ends")

    @ends.task(max_retries=1, retry_delay=0.01)
    async def first(ctx):
        lease = await ctx.space("a").acquire("k", ttl=600, timeout=0)
        if ctx.attempt == 1:
            raise RetryableError("fails holding the lock")
        return lease.token                                       # succeeds holding it: not released by hand

    @ends.task(depends_on=["first"], final=True)
    async def second(ctx):
        lease = await ctx.space("a").acquire("k", ttl=600, timeout=0)
        return {"first": ctx.inputs["first"], "second": lease.token}
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "locks.py", PIPES)


def out(result: Any) -> Any:
    assert result.status == "completed", result.error
    return result.final_output


def log_lines(client: Any, space: str) -> list[tuple[str, str, int, bool, str]]:
    return [(e.op, e.key, e.version, e.ok, e.reason) for e in client.space(space).log(1000)]


@pytest.mark.timeout(180)
def test_twenty_steps_on_two_workers_count_exactly_under_the_lock_without_cas(make_daemon: Any, pipes: Path) -> None:
    # Given 20 parallel steps that each read, yield and write one counter 5 times, holding the key's lock
    daemon = make_daemon(workers=2).start()
    with daemon.client(timeout=30) as client:
        # When they run on two workers
        result = client.wait(client.submit(f"{pipes}:counter").id, timeout=150)
        # Then no increment was lost: the counter is exactly 100, and both workers took part
        pids = {pid for step in out(result) for pid in step}
        assert client.space("locked").get("n").value == 100 and len(pids) == 2
        # And every grant and release is in the access log, tokens 1..100 in order
        grants = [version for op, _, version, ok, _ in log_lines(client, "locked") if op == "lock" and ok]
        assert grants == list(range(1, 101))
        counters = client.broker_stats().counters
        assert counters["locks_granted"] == counters["locks_released"] == 100 and counters["locks_waited"] > 0


def test_a_holder_whose_worker_is_killed_hands_the_lock_to_the_next_waiter(make_daemon: Any, pipes: Path,
                                                                          tmp_path: Path) -> None:
    # Given a step holding a lock (ttl 10 minutes) and another parked behind it, on the other worker
    daemon = make_daemon(workers=2).start()
    with daemon.client(timeout=30) as client:
        run = client.submit(f"{pipes}:crash", params={"dir": str(tmp_path)})
        holder, waiter = tmp_path / "holder.pid", tmp_path / "waiter.pid"
        wait_until(lambda: holder.exists() and waiter.exists(), 60, what="the holder and the parked waiter")
        assert holder.read_text() != waiter.read_text(), "the two steps should run on different workers"
        # When the holder's worker is killed (kill -9)
        os.kill(int(holder.read_text()), signal.SIGKILL)
        # Then the waiter gets the lock (the next token), and the holder's retry queues behind it
        result = client.wait(run.id, timeout=90)
        assert result.status == "completed", result.error
        assert result.step_outputs["wait"]["token"] == 2
        assert result.step_outputs["hold"] == {"retry_token": 3}
        assert ("unlock", "k", 1, True, "worker lost") in log_lines(client, "c")


def test_an_expired_lease_goes_to_the_next_waiter_and_its_fenced_write_is_refused(make_daemon: Any,
                                                                                  pipes: Path) -> None:
    # Given a step holding a lock with a 0.5 s ttl that it does not renew, and another step waiting for it
    daemon = make_daemon(workers=2).start()
    with daemon.client(timeout=30) as client:
        run = client.submit(f"{pipes}:expiry")
        result = client.wait(run.id, timeout=90)
        assert result.status == "completed", result.error
        # Then the ttl passed, the waiter got the next token and wrote; the old holder's fenced write was refused
        outputs = result.step_outputs
        assert outputs["patient"] == 2
        assert "token 1" in outputs["slow"]["rejected"] and "newer lease (token 2)" in outputs["slow"]["rejected"]
        assert outputs["slow"]["released"] is False
        entry = client.space("e").get("k")
        assert (entry.value, entry.version) == ("patient", 2)
        lines = log_lines(client, "e")
        assert ("unlock", "k", 1, True, "expired") in lines
        assert ("put", "k", 2, False, "stale") in lines


def test_fencing_tokens_grow_across_a_kill9_and_a_lease_held_then_is_released(make_daemon: Any, pipes: Path,
                                                                           tmp_path: Path) -> None:
    # Given a step holding a lock (token 1) with a 10-minute ttl
    daemon = make_daemon(workers=1).start()
    with daemon.client(timeout=30) as client:
        run = client.submit(f"{pipes}:restart", params={"dir": str(tmp_path)})
    wait_until((tmp_path / "held-once").exists, 60, what="the step to hold the lock")
    assert (tmp_path / "held-once").read_text() == "1"
    # When the daemon and its workers are killed (kill -9) and the daemon restarts
    daemon.kill9()
    daemon.start()
    with daemon.client(timeout=30) as client:
        # Then recovery re-runs the step, which gets the lock at once (the lease died with its attempt)
        # with a newer token: tokens never go back
        assert out(client.wait(run.id, timeout=60)) == 2
        assert ("unlock", "k", 1, True, "daemon restarted") in log_lines(client, "r")


def test_an_attempt_that_ends_releases_its_locks(make_daemon: Any, pipes: Path) -> None:
    # Given a step that takes a lock and fails, then on its retry takes it again and succeeds, holding it,
    # and a dependent step that asks for the same lock without waiting
    daemon = make_daemon(workers=1).start()
    with daemon.client(timeout=30) as client:
        run = client.submit(f"{pipes}:ends")
        # Then the failed attempt's lease ended, and so did the succeeded one's
        assert out(client.wait(run.id, timeout=60)) == {"first": 2, "second": 3}
        lines = log_lines(client, "a")
        assert ("unlock", "k", 1, True, "attempt failed") in lines
        assert ("unlock", "k", 2, True, "attempt succeeded") in lines


def test_cancelling_the_run_releases_the_lock_its_step_held(make_daemon: Any, pipes: Path) -> None:
    # Given a step holding a lock with a 10-minute ttl
    daemon = make_daemon(workers=1).start()
    with daemon.client(timeout=30) as client:
        run = client.submit(f"{pipes}:cancelled")
        wait_until(lambda: client.space("x").get("held"), 60, what="the step to hold the lock")
        # When the run is cancelled
        client.cancel(run.id)
        assert client.wait(run.id, timeout=60).status == "cancelled"
        # Then its lease ended with it
        assert ("unlock", "k", 1, True, "attempt cancelled") in log_lines(client, "x")
