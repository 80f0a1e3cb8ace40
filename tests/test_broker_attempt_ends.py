"""What the broker does when a step attempt ends (`BrokerShell.on_event`), on a real `BrokerShell` with the
run table faked: an attempt that never used the broker costs its end a note that it is over, not a walk of
the broker's state; one that leased a message still gets it acknowledged; a late receive of an attempt that
is over leases nothing, either way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tagent_client.core.events import StepSucceeded
from tagent_client.wire.protocol_broker import StepRef
from tagentd.broker.service import BrokerShell
from tagentd.settings.config import Settings


class _Run:
    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.finished = False


class _Runs:
    def __init__(self) -> None:
        self.by_id = {"r1": _Run("r1")}

    def live(self, run_id: str) -> _Run | None:
        return self.by_id.get(run_id)


class _Ops:
    def __init__(self) -> None:
        self.runs = _Runs()


def shell(tmp_path: Path) -> BrokerShell:
    settings = Settings(durable=False, state_dir=tmp_path, runtime_dir=tmp_path)
    return BrokerShell(settings, ops=_Ops(), mark_dirty=lambda: None, steps_in_flight=lambda: [])  # type: ignore[arg-type]


def receive(broker: BrokerShell, task: str, attempt: int) -> Any:
    caller = StepRef(run_id="r1", pipeline="p", step=task, task=task, attempt=attempt)
    got: list[Any] = []
    broker.receive(caller, wait=0).then(got.append)
    return got[0]


def test_attempts_that_never_used_the_broker_end_without_settling_and_stay_ended(tmp_path: Path) -> None:
    """Given a broker with a message waiting in mailbox `p` and nothing leased, parked or locked, when 1,000
    attempts that never called the broker end, then none of their ends settles anything in the broker core
    (no walk of its state), and a late receive re-sent by one of them still leases nothing."""

    async def scenario() -> None:
        broker = shell(tmp_path)
        broker.send("p", "m1", "sender", {"n": 1})
        settled: list[Any] = []
        real_settle = broker.broker.core.settle
        broker.broker.core.settle = lambda *a, **k: settled.append(a) or real_settle(*a, **k)  # type: ignore[method-assign]
        run = broker.ops.runs.live("r1")
        for i in range(1000):
            broker.on_event(run, StepSucceeded(task=f"s{i}", attempt=1))  # type: ignore[arg-type]
        assert settled == []
        assert receive(broker, "s7", 1) is None  # over: a late re-send leases nothing
        assert receive(broker, "s7", 2).id == "m1"  # a live attempt gets the message

    asyncio.run(scenario())


def test_an_attempt_that_leased_a_message_has_it_acknowledged_when_it_succeeds(tmp_path: Path) -> None:
    """Given attempt `a` holding a lease on a message, when another attempt that never used the broker ends, then
    the lease stays; when `a` succeeds, its message is acknowledged (gone from the mailbox)."""

    async def scenario() -> None:
        broker = shell(tmp_path)
        broker.send("p", "m1", "sender", {"n": 1})
        run = broker.ops.runs.live("r1")
        assert receive(broker, "a", 1).id == "m1"
        broker.on_event(run, StepSucceeded(task="b", attempt=1))  # type: ignore[arg-type]
        assert broker.broker.core.holders[("r1", "a", 1)]
        broker.on_event(run, StepSucceeded(task="a", attempt=1))  # type: ignore[arg-type]
        assert ("r1", "a", 1) not in broker.broker.core.holders
        assert broker.broker.stats["messages_acked"] == 1
        assert receive(broker, "c", 1) is None  # nothing left to lease

    asyncio.run(scenario())
