"""`ResourceMeter` (tagentd/worker/resources.py): the event loop's CPU time shared out among the attempts running."""

from __future__ import annotations

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
