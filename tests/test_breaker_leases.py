"""Breaker leases: a healthy breaker costs no daemon round trip per call, and an opening one still stops every
worker's calls within the stated bound (docs/agents.md, "Circuit breakers"; tagentd/executor/breakers.py).

The worker's end (`BreakerClient`) and the daemon's (`BreakerDesk`) on fake links and clocks; a real worker
process against a ROUTER socket the test plays the daemon on; and a real daemon with 2 workers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, write_pipeline
from test_worker import FakeDaemon, ack, run_task

from tagent_client.core.breaker import BreakerRule
from tagent_client.core.events import StepSucceeded
from tagent_client.errors import CircuitOpen
from tagentd.executor.breakers import LEASE_CALLS, LEASE_S, BreakerDesk
from tagentd.worker import wire
from tagentd.worker.breakers import BreakerClient
from tagentd.worker.wire import source_hash

pytestmark = pytest.mark.timeout(90)

CALLS = """\
from pathlib import Path
from tagent_client import Pipeline

pipeline = Pipeline("calls", max_concurrent_steps=20)


@pipeline.task(max_retries=0)
async def calls(ctx, n=1, folder=None, fail=False):
    for _ in range(n):
        async with ctx.breaker("svc"):
            if folder:
                with open(Path(folder) / "calls", "a") as seen:
                    seen.write("x")
            if fail:
                raise ConnectionError("the service is down")
    return n
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Link:
    """Stands for the worker's link: what the client sends, by kind."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def send_until_acked(self, key: Any, message: Any) -> None:
        self.sent.append(message)

    def acked(self, key: Any) -> bool:
        return True

    def asks(self) -> list[wire.BreakerAsk]:
        return [m for m in self.sent if isinstance(m, wire.BreakerAsk)]


async def admitted(client: BreakerClient, link: Link, answer: Callable[[int], wire.BreakerAnswer] | None = None) -> Any:
    """One `admit("svc")`; if it asks, the daemon's answer is `answer(req)` (allowed, no lease, by default)."""
    asks = len(link.asks())
    call = asyncio.ensure_future(client.admit("svc"))
    await asyncio.sleep(0)  # ok-sleep: one loop turn, for the ask to leave
    if len(link.asks()) > asks:
        req = link.asks()[-1].req
        client.answered(answer(req) if answer else wire.BreakerAnswer(req=req, allowed=True, generation=3))
    return await call


def leased(calls: int, seconds: float = 10.0) -> Callable[[int], wire.BreakerAnswer]:
    return lambda req: wire.BreakerAnswer(req=req, allowed=True, generation=3, lease=calls, lease_s=seconds)


def test_a_lease_admits_its_calls_without_asking_and_ends_at_its_count_its_time_a_revocation_or_a_failure() -> None:
    async def scenario() -> None:
        clock, link = Clock(), Link()
        client = BreakerClient(link, asyncio.get_running_loop(), clock)  # type: ignore[arg-type]
        # Given an answer that grants a lease of 2 calls for 10 s: the next 2 calls ask no one, the third asks
        first = await admitted(client, link, leased(2))
        assert first.generation == 3 and not first.probe
        for _ in range(2):
            await admitted(client, link)
        assert len(link.asks()) == 1
        await admitted(client, link, leased(100))
        assert len(link.asks()) == 2
        # When the lease's time is over (counted from the ask), then the next call asks
        clock.now += 10.0
        await admitted(client, link, leased(100))
        assert len(link.asks()) == 3
        # When the daemon revokes it, then the next call asks
        client.revoked(wire.BreakerRevoke(name="svc"))
        await admitted(client, link, leased(100))
        assert len(link.asks()) == 4
        # When a leased call fails, then its failure is reported and the next call asks
        ticket = await admitted(client, link)
        client.report(ticket, False)
        assert [m.ok for m in link.sent if isinstance(m, wire.BreakerOutcome)] == [False]
        await admitted(client, link)
        assert len(link.asks()) == 5
        # And a lease is never given to a call the answer refused
        with pytest.raises(CircuitOpen):
            await admitted(client, link, lambda req: wire.BreakerAnswer(req=req, allowed=False, lease=5, lease_s=9))
        await admitted(client, link)
        assert len(link.asks()) == 7

    asyncio.run(scenario())


def test_a_worker_admits_at_once_exactly_while_it_holds_a_running_lease() -> None:
    """Given a worker's BreakerClient, `admits_at_once` (whether an agent run need not ask ahead, runners/early.py)
    is True exactly while a call would not ask the daemon: not before any answer, not after a lease's calls, its
    time or a revocation; and only on the worker's loop thread (a sync step's thread hands its calls over)."""
    async def scenario() -> None:
        clock, link = Clock(), Link()
        client = BreakerClient(link, asyncio.get_running_loop(), clock)  # type: ignore[arg-type]
        assert not client.admits_at_once("svc")
        await admitted(client, link, leased(1))
        assert client.admits_at_once("svc") and not client.admits_at_once("other")
        assert not await asyncio.to_thread(client.admits_at_once, "svc")
        await admitted(client, link)  # the lease's one call
        assert not client.admits_at_once("svc")
        await admitted(client, link, leased(5))
        clock.now += 10.0
        assert not client.admits_at_once("svc")
        await admitted(client, link, leased(5))
        client.revoked(wire.BreakerRevoke(name="svc"))
        assert not client.admits_at_once("svc")

    asyncio.run(scenario())


def test_a_revocation_read_before_its_ask_resumes_still_ends_the_lease() -> None:
    """Given an answer granting a lease and the daemon's revocation read in the same frame, before the asking call
    resumes: then the lease is over (the daemon's order wins) and the next call asks."""
    async def scenario() -> None:
        link = Link()
        client = BreakerClient(link, asyncio.get_running_loop(), Clock())  # type: ignore[arg-type]
        call = asyncio.ensure_future(client.admit("svc"))
        await asyncio.sleep(0)  # ok-sleep: one loop turn, for the ask to leave
        client.answered(leased(100)(link.asks()[0].req))
        client.revoked(wire.BreakerRevoke(name="svc"))
        await call
        await admitted(client, link)
        assert len(link.asks()) == 2

    asyncio.run(scenario())


class Desk:
    """A BreakerDesk with a recording send; `svc` opens at 2 failures."""

    def __init__(self, failures: int = 2) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        rule = BreakerRule(failures=failures, window=60.0, cooldown=30.0)
        self.desk = BreakerDesk(lambda name: rule, self.record, lambda topic, data: None)

    def record(self, identity: bytes, frame: bytes) -> bool:
        self.sent.append((identity, wire.to_worker_decoder.decode(frame)))
        return True

    def ask(self, identity: bytes, req: int) -> wire.BreakerAnswer:
        self.desk.on_ask(identity, wire.BreakerAsk(req=req, name="svc"))
        answer = self.sent.pop()[1]
        assert isinstance(answer, wire.BreakerAnswer)
        return answer

    def revoked(self) -> list[bytes]:
        return [identity for identity, m in self.sent if isinstance(m, wire.BreakerRevoke)]


def test_the_daemon_leases_only_a_healthy_breaker_and_revokes_every_lease_at_its_first_failure() -> None:
    async def scenario() -> None:
        desk = Desk()
        # Given two workers each holding a lease of the healthy breaker
        a, b = desk.ask(b"wa", 1), desk.ask(b"wb", 1)
        assert (a.lease, a.lease_s) == (b.lease, b.lease_s) == (LEASE_CALLS, LEASE_S) and a.allowed
        # When a call of worker a fails (the first failure counted), then both leases are revoked at once,
        # before the breaker opens, and no lease is granted while that failure is counted
        desk.desk.on_outcome(b"wa", wire.BreakerOutcome(req=7, name="svc", generation=a.generation, ok=False))
        assert sorted(desk.revoked()) == [b"wa", b"wb"]
        assert desk.desk.breakers["svc"].state.value == "closed"
        again = desk.ask(b"wb", 2)
        assert again.allowed and again.lease == 0
        # When a second call fails, then the breaker opens: every call is refused, no lease
        desk.desk.on_outcome(b"wb", wire.BreakerOutcome(req=2, name="svc", generation=again.generation, ok=False))
        refused = desk.ask(b"wa", 3)
        assert not refused.allowed and refused.lease == 0
        assert desk.desk.counts() == {"svc": (4, 2)}

    asyncio.run(scenario())


def test_a_stale_failure_revokes_nothing_and_a_gone_workers_lease_is_forgotten() -> None:
    async def scenario() -> None:
        desk = Desk()
        desk.ask(b"wa", 1)
        desk.ask(b"wb", 1)
        # When a failure of a call admitted before the breaker last changed arrives, then it changes nothing
        desk.desk.on_outcome(b"wa", wire.BreakerOutcome(req=9, name="svc", generation=-5, ok=False))
        assert desk.revoked() == []
        # When worker b is gone and a real failure comes, then only a's lease is revoked
        desk.desk.worker_gone(b"wb")
        desk.desk.on_outcome(b"wa", wire.BreakerOutcome(req=1, name="svc", generation=0, ok=False))
        assert desk.revoked() == [b"wa"]

    asyncio.run(scenario())


# -- a real worker process -------------------------------------------------------------------------------


def test_a_worker_asks_once_per_lease_and_again_after_a_revocation(tmp_path: Path) -> None:
    """Given a worker whose step makes 5 calls through ctx.breaker("svc"): when the first ask is answered with a
    lease of 3 calls, then the worker asks again only for the 5th call; when the daemon then revokes the lease it
    granted there, then the next run's one call asks again."""
    path = tmp_path / "calls.py"
    path.write_text(CALLS)
    file = (str(path), CALLS, source_hash(CALLS))
    with FakeDaemon(tmp_path) as fake_daemon:
        fake_daemon.spawn()
        fake_daemon.send(run_task(file, "calls", params={"n": 5}))
        first = fake_daemon.expect(wire.BreakerAsk)
        fake_daemon.send(wire.BreakerAnswer(req=first.req, allowed=True, lease=3, lease_s=60.0))
        fifth = fake_daemon.expect(wire.BreakerAsk)
        fake_daemon.send(wire.BreakerAnswer(req=fifth.req, allowed=True, lease=LEASE_CALLS, lease_s=60.0))
        done = fake_daemon.done("calls")
        assert isinstance(done.event, StepSucceeded) and done.event.output == 5
        fake_daemon.send(ack(done))
        fake_daemon.send(wire.BreakerRevoke(name="svc"))
        fake_daemon.send(run_task(file, "calls", attempt=2, with_source=False, params={"n": 1}))
        again = fake_daemon.expect(wire.BreakerAsk)
        fake_daemon.send(wire.BreakerAnswer(req=again.req, allowed=True))
        assert fake_daemon.done("calls").event.output == 1


# -- a real daemon ------------------------------------------------------------------------------------------------


def metric(daemon: DaemonProcess, name: str) -> float:
    done = daemon.admin("status", "--metrics")
    assert done.returncode == 0, done.stderr
    line = next((line for line in done.stdout.splitlines() if line.startswith(f'{name}{{breaker="svc"}}')), None)
    assert line is not None, f"no {name} for svc in the metrics"
    return float(line.split()[-1])


def submit(daemon: DaemonProcess, path: Path, *args: str) -> str:
    done = daemon.cli("submit", str(path), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[0]


@pytest.mark.usefixtures("no_process_left_behind")
def test_through_a_daemon_a_healthy_breaker_is_asked_once_and_an_opened_one_stops_both_workers(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """Given a daemon with 2 workers and breaker `svc` (2 failures open it, for an hour): when a step makes 50 calls
    through it, then the daemon was asked once (one lease); when 20 concurrent steps call it, then both workers
    hold leases; when two runs' calls fail, then it opens; and when 20 concurrent steps then run on both workers,
    every one fails fast with CircuitOpen and the service sees none of their calls."""
    config = tmp_path / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[breakers.svc]\nfailures = 2\nwindow = 3600\ncooldown = 3600\n")
    daemon = make_daemon(workers=2).start()
    folder = tmp_path / "service"
    folder.mkdir()
    one = write_pipeline(tmp_path, "calls.py", CALLS)
    many = write_pipeline(tmp_path, "many.py", CALLS.replace('Pipeline("calls"', 'Pipeline("many"').replace(
        '@pipeline.task(max_retries=0)\nasync def calls(', 'async def calls(') + """
for i in range(20):
    pipeline.step(f"c{i}", fn=calls, execution_mode="concurrent", max_retries=0)
""")
    with daemon.client(timeout=30) as client:
        run = submit(daemon, one, "--param", "n=50")
        assert client.wait(run, timeout=60).success
        assert (metric(daemon, "tagentd_breaker_asks_total"), metric(daemon, "tagentd_breaker_leases_total")) == (1, 1)

        run = submit(daemon, many, "--param", f"folder={folder}")
        assert client.wait(run, timeout=60).success
        assert {w.completed > 0 for w in client.daemon_status().workers} == {True}  # both ran (and hold) leases
        assert (folder / "calls").read_text() == "x" * 20

        for _ in range(2):
            run = submit(daemon, one, "--param", f"folder={folder}", "--param", "fail=true")
            assert not client.wait(run, timeout=60).success
        assert (folder / "calls").read_text() == "x" * 22
        states = json.loads(daemon.admin("status", "--json").stdout)["stats"]["breakers"]
        assert [(b["name"], b["state"]) for b in states] == [("svc", "open")]

        run = submit(daemon, many, "--param", f"folder={folder}")
        result = client.wait(run, timeout=60)
        status = client.status(run)
    assert not result.success
    assert all("CircuitOpen" in (status.steps[f"c{i}"].error or "") for i in range(20)), status.steps
    assert (folder / "calls").read_text() == "x" * 22
