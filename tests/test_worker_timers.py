"""A step's own timers end on time in a worker (tagentd/plumbing/timely.py), not up to 1-2 ms late as asyncio's
default loop on Linux ends them (it waits in whole milliseconds, rounded up)."""

from __future__ import annotations

import asyncio
import selectors
import socket
import statistics
import time
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagentd.plumbing import timely

pytestmark = pytest.mark.skipif(not hasattr(selectors, "EpollSelector"), reason="the timely selector is epoll's")

#: Waits whose deadlines fall just past a whole millisecond: a loop that rounds its wait up ends each ~0.9 ms late
#: (one woken meanwhile by something else, e.g. the worker's housekeeping, may end one of them sooner).
WAITS_MS = [10.1 + k for k in range(20)]

LATENESS = f'''
import asyncio
import time

from tagent_client import Pipeline


async def lateness():
    late = []
    for wait_ms in {WAITS_MS!r}:
        started = time.perf_counter()
        await asyncio.sleep(wait_ms / 1000)  # ok-sleep: the step's own timer, whose lateness is measured
        late.append((time.perf_counter() - started) * 1000 - wait_ms)
    return late


pipeline = Pipeline("timers")
pipeline.step("lateness", fn=lateness)
'''


async def _lateness_ms() -> list[float]:
    late = []
    for wait_ms in WAITS_MS:
        started = time.perf_counter()
        await asyncio.sleep(wait_ms / 1000)  # ok-sleep: the timer under test
        late.append((time.perf_counter() - started) * 1000 - wait_ms)
    return late


def test_a_timely_loop_ends_a_sleep_within_a_fraction_of_a_millisecond_of_its_deadline() -> None:
    # Given an idle loop from timely.new_event_loop()
    # When a coroutine sleeps for 10.1, 11.1, ... 29.1 ms
    late = timely.run(_lateness_ms())

    # Then no sleep ended early, and most end well within the millisecond the default loop adds (it ends each of
    # these >= 0.9 ms late; what is left is the machine's wake-up latency)
    assert min(late) >= 0, late
    assert statistics.median(late) < 0.5, f"sleeps ended {statistics.median(late):.2f} ms late (median): {late}"


def test_a_timely_loop_reports_readiness_in_a_sub_millisecond_wait_and_in_a_long_one() -> None:
    # Given a timely loop with a socket it reads, and a timer due in 0.6 ms (the wait in select(), in microseconds)
    # or in 50 ms (the wait in epoll_wait)
    async def woken_by_data(timer_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        try:
            got: asyncio.Future[bytes] = loop.create_future()
            loop.add_reader(reader.fileno(), lambda: got.done() or got.set_result(reader.recv(16)))
            loop.call_later(timer_s, lambda: None)  # the loop waits at most until this timer
            # When another thread writes to the socket while the loop waits
            loop.call_soon(lambda: loop.run_in_executor(None, writer.send, b"ping"))
            return await asyncio.wait_for(got, 5)
        finally:
            asyncio.get_running_loop().remove_reader(reader.fileno())
            reader.close()
            writer.close()

    # Then the loop wakes for the data either way
    assert timely.run(woken_by_data(0.0006)) == b"ping"
    assert timely.run(woken_by_data(0.05)) == b"ping"


@pytest.mark.usefixtures("no_process_left_behind")
def test_a_steps_asyncio_sleep_in_a_worker_ends_on_time(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a real daemon and workers, and a step that sleeps 20 times, each a whole number of ms plus 0.1 ms
    path = write_pipeline(tmp_path, "timers.py", LATENESS)

    # When it runs in a worker
    with daemon.client(timeout=30) as client:
        result = client.wait(client.submit(path).id, timeout=30)
    assert result.success, result.error
    late = result.step_outputs["lateness"]

    # Then its sleeps end within a fraction of a millisecond of their deadlines (asyncio's default loop ends each
    # of these >= 0.9 ms late: it waits whole milliseconds, rounded up)
    assert min(late) >= 0, late
    assert statistics.median(late) < 0.5, f"the step's sleeps ended {late} ms late"
