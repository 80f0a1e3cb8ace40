"""`ResourceMeter` (tagentd/worker/resources.py): the event loop's CPU time shared out among the attempts running."""

from __future__ import annotations

import pytest

from tagentd.worker import resources


def test_the_loops_cpu_is_shared_equally_among_the_attempts_running_at_each_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a loop thread whose CPU clock the test sets
    clock = [0.0]
    monkeypatch.setattr(resources.time, "thread_time", lambda: clock[0])
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
