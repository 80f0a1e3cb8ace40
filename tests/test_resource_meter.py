"""`ResourceMeter` (tagentd/worker/resources.py): the event loop's CPU time shared out among the attempts running."""

from __future__ import annotations

import asyncio

import pytest

from tagentd.worker import resources


def test_the_loops_cpu_is_shared_equally_among_the_attempts_running_at_each_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a loop thread whose CPU clock the test sets
    clock = [0.0]
    monkeypatch.setattr(resources, "thread_cpu_and_high_water", lambda: (clock[0], 0))
    meter = resources.ResourceMeter()

    # When a runs alone for 1 s of CPU, b joins for 2 s shared, then 1000 more start and end within 1 s
    meter.begin("a")
    clock[0] = 1.0
    meter.begin("b")
    clock[0] = 3.0
    meter.sample()
    for i in range(1000):
        meter.begin(i)
    clock[0] = 4.0
    for i in range(1000):
        meter.end(i)
    clock[0] = 5.0
    used_a = meter.end("a")
    clock[0] = 7.0
    used_b = meter.end("b")

    # Then a had all of its first second, half of the next two, 1/1002 of the crowded second and half the one after;
    # b the same shares, then its last 2 s alone
    assert used_a is not None and used_b is not None
    crowded = 1.0 / 1002
    assert used_a[1] == pytest.approx(1.0 + 1.0 + crowded + 0.5)
    assert used_b[1] == pytest.approx(1.0 + crowded + 0.5 + 2.0)


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the meter's system calls: the CPU clock, rusage, and reads of /proc/self/statm."""
    calls: list[str] = []

    def counted(name, fn):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(resources.time, "thread_time", counted("thread_time", resources.time.thread_time))
    monkeypatch.setattr(resources.resource, "getrusage", counted("getrusage", resources.resource.getrusage))
    monkeypatch.setattr(resources.os, "pread", counted("pread", resources.os.pread))
    return calls


@pytest.mark.skipif(not hasattr(resources.resource, "RUSAGE_THREAD"), reason="one call for both needs RUSAGE_THREAD")
def test_metering_an_attempt_costs_one_rusage_at_its_start_and_one_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a meter whose system calls are counted, and a clock that stands still
    calls = _count_calls(monkeypatch)
    monkeypatch.setattr(resources.time, "monotonic", lambda: 100.0)
    meter = resources.ResourceMeter()
    calls.clear()

    # When an attempt is metered from its start to its end (every attempt a worker runs is)
    meter.begin("a")
    started = calls[:]
    used = meter.end("a")

    # Then the start took a rusage of the loop thread (its CPU and the process's peak RSS) and a read of the RSS,
    # and the end only a rusage: the RSS read a moment before serves as the one at its end
    assert used is not None
    assert started == ["getrusage", "pread"], calls
    assert calls[len(started):] == ["getrusage"], calls


def test_attempts_started_and_ended_within_a_millisecond_share_one_read_of_the_rss(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a meter whose reads of /proc/self/statm are counted, and a clock the test moves
    calls = _count_calls(monkeypatch)
    clock = [100.0]
    monkeypatch.setattr(resources.time, "monotonic", lambda: clock[0])
    meter = resources.ResourceMeter()
    calls.clear()

    # When a fan-out's hundred attempts start and end in one loop turn (well within a millisecond)
    for i in range(100):
        meter.begin(i)
        meter.end(i)
    within = calls.count("pread")
    # and, 1 ms later, one more starts and ends
    clock[0] += resources.RSS_FRESH
    meter.begin("late")
    used = meter.end("late")

    # Then the RSS was read once for the hundred (not twice per attempt), and afresh once the sample was 1 ms old
    assert within == 1, calls
    assert calls.count("pread") == 2, calls
    assert used is not None and used[2] > 0


def test_a_housekeeping_tick_always_reads_the_rss_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a running attempt whose start read the RSS a moment ago
    calls = _count_calls(monkeypatch)
    monkeypatch.setattr(resources.time, "monotonic", lambda: 100.0)
    meter = resources.ResourceMeter()
    meter.begin("a")
    calls.clear()

    # When the housekeeping tick samples
    meter.sample()

    # Then it reads the RSS itself: a spike between two ticks is what the ticks are there to catch
    assert calls.count("pread") == 1, calls


@pytest.mark.skipif(not hasattr(resources.resource, "RUSAGE_THREAD"), reason="one call for both needs RUSAGE_THREAD")
def test_attempts_starting_in_one_loop_turn_share_one_rusage(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[int, int, tuple[float, float, int] | None]:
        # Given the worker's meter, on its loop, whose system calls are counted
        meter = resources.ResourceMeter(asyncio.get_running_loop())
        calls = _count_calls(monkeypatch)
        # When a fan-out's 50 attempts start in one loop turn (a frame of tasks), and one more in a later turn
        for i in range(50):
            meter.begin(i)
        in_one_turn = calls.count("getrusage")
        await asyncio.sleep(0)  # ok-sleep: the next loop turn
        meter.begin("later")
        later = calls.count("getrusage") - in_one_turn
        return in_one_turn, later, meter.end(0)

    in_one_turn, later, used = asyncio.run(scenario())
    # Then the 50 starts took one rusage between them (not 50), the start in the next turn its own, and an end
    # is still measured
    assert in_one_turn == 1
    assert later == 1
    assert used is not None and used[2] > 0


def test_starts_sharing_a_sample_still_share_out_all_of_the_loops_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[float, float]:
        # Given the worker's meter on its loop, and a CPU clock the test sets
        clock = [0.0]
        monkeypatch.setattr(resources, "thread_cpu_and_high_water", lambda: (clock[0], 0))
        meter = resources.ResourceMeter(asyncio.get_running_loop())
        # When a starts, the loop works 1 s, and b starts in the same turn; then, a turn later, 2 s on, both end
        meter.begin("a")
        clock[0] = 1.0
        meter.begin("b")
        await asyncio.sleep(0)  # ok-sleep: the next loop turn
        clock[0] = 3.0
        used_a, used_b = meter.end("a"), meter.end("b")
        assert used_a is not None and used_b is not None
        return used_a[1], used_b[1]

    cpu_a, cpu_b = asyncio.run(scenario())
    # Then the second before b's start (which b's start did not sample) was shared out with the two after it: all
    # 3 s went to the two, none was lost
    assert cpu_a + cpu_b == pytest.approx(3.0)
    assert cpu_a == pytest.approx(1.5) and cpu_b == pytest.approx(1.5)
