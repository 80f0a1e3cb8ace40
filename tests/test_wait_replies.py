"""`Client.wait` costs the daemon one long-poll reply per run, not one per commit (issue 17, the chain's latency).

Before, `wait` read the run's whole event stream: every commit of a running run woke its long poll, and the
daemon encoded and sent the new events to a caller that only wanted the end (a 200-step chain: a reply, a
request and a client wake-up every few steps, on the loop that also dispatches the next step). Now it asks
for the end only (`events` with `until_finished`), whose parked poll only the run's finish wakes, and a `--follow`
reader still gets every event.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tagent_client.client import calls
from tagent_client.core.engine import RunMachine
from tagent_client.define.plan import Plan, StepKind, StepSpec
from tagent_client.wire.protocol import GetEvents
from tagentd.runs.run import Run, RunSource
from tests.conftest import DaemonProcess, write_pipeline

CHAIN = """
    from tagent_client import Pipeline

    async def noop():
        return None

    pipeline = Pipeline("wait_chain")
    for i in range(60):
        pipeline.step(f"s{i:02d}", fn=noop, depends_on=[f"s{i - 1:02d}"] if i else None)
"""

SLOW = """
    import asyncio
    from tagent_client import Pipeline

    async def slow():
        await asyncio.sleep(1.0)  # ok-sleep: the step's own work, long enough to ask about the run meanwhile

    pipeline = Pipeline("wait_slow")
    pipeline.step("slow", fn=slow)
"""


def test_wait_is_answered_once_the_run_has_finished_not_at_every_commit(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a 60-step chain (dozens of commits while it runs) and a client that counts what it asks the daemon
    path = write_pipeline(tmp_path, "wait_chain.py", CHAIN)
    with daemon.client(timeout=30) as client:
        asked: list[Any] = []
        call = client._call

        def counting(request: Any, timeout: float | None = None) -> Any:
            asked.append(request.request)
            return call(request, timeout)

        client._call = counting  # type: ignore[method-assign]
        handle = client.submit(path)
        asked.clear()
        # When the client waits for the run
        result = client.wait(handle.id, timeout=30)
    # Then the run finished, and the wait was one long poll for its end (plus reading the result), not one per commit
    assert result.success
    polls = [request for request in asked if isinstance(request, GetEvents)]
    assert len(polls) <= 2, f"wait asked {len(polls)} times for the run's events"
    assert all(poll.until_finished for poll in polls)


def test_a_poll_for_the_end_sends_no_events_and_says_whether_the_run_finished(daemon: DaemonProcess,
                                                                            tmp_path: Path) -> None:
    # Given a running run whose step takes a second
    path = write_pipeline(tmp_path, "wait_slow.py", SLOW)
    with daemon.client(timeout=30) as client:
        handle = client.submit(path)
        # When the end is asked for with a short wait while it runs
        early = client._call(calls.events(handle.id, 0, 0.2, until_finished=True))
        # Then the reply comes after the wait with no events and finished false
        assert early.events == [] and not early.finished
        # And once it has finished, the same poll says so, still without events, while the events are all there
        late = client._call(calls.events(handle.id, 0, 10.0, until_finished=True))
        assert late.events == [] and late.finished and late.status == "completed"
        every = client._call(calls.events(handle.id, 0, 0.0))
        assert [event.topic for event in every.events][-1] == "run.finished"


def test_a_wait_for_the_end_is_woken_by_the_finish_not_by_every_commit() -> None:
    # Given a run (in process) and a long poll parked for its end
    plan = Plan(name="p", steps=[StepSpec(name="s", kind=StepKind.FUNCTION)])
    run = Run(RunSource(path="/p.py", source="x = 1", source_hash="h"), plan,
              RunMachine.new(plan, "r1", params={}, now=0.0))

    async def scenario() -> tuple[bool, bool]:
        parked = asyncio.ensure_future(run.wait_for_end(10.0))
        await asyncio.sleep(0)  # ok-sleep: one loop turn, for the poll to park
        # When a commit that is not the end notifies the run's waiters
        run.notify()
        await asyncio.sleep(0)  # ok-sleep: one loop turn, for a woken poll to run
        await asyncio.sleep(0)  # ok-sleep: and one for its task to end
        woken_by_news = parked.done()
        # and then the commit that announces the finish does
        run.announced_finish = True
        run.notify()
        await asyncio.wait_for(parked, 5.0)
        return woken_by_news, parked.done()

    woken_by_news, woken_by_end = asyncio.run(scenario())
    # Then only the finish woke it
    assert not woken_by_news
    assert woken_by_end
