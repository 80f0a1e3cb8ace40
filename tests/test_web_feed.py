"""The dashboard's shared feed, in process: which events a tab gets, what a slow tab gets instead, the topic rates."""

from __future__ import annotations

import asyncio

from tagent_client.wire.protocol import EventRecord
from tagentd.web import feed
from tagentd.web.feed import RESYNC, Listener, TopicRates, slim


def event(topic: str, **data: object) -> EventRecord:
    return EventRecord(seq=1, ts=0.0, topic=topic, data=data)


def test_a_tab_on_a_run_gets_that_runs_events_and_the_topics_it_asked_for() -> None:
    tab = Listener(["run.", "step.", "watch."], "r1")
    assert tab.wants(event("step.completed", run_id="r1", step="a"))
    assert not tab.wants(event("step.completed", run_id="r2", step="a"))
    assert tab.wants(event("watch.started", path="/x"))  # not a run's event: not filtered by run
    assert not tab.wants(event("space.notes.k"))  # a topic it did not ask for


def test_a_slow_tab_is_told_to_reload_instead_of_queueing_without_end() -> None:
    """Given a tab whose queue is full, When one more event comes, Then what waited is dropped and the tab gets
    one `resync` (reload your data), so neither memory nor the other tabs suffer."""

    async def scenario() -> list[dict[str, object]]:
        tab = Listener([], None)
        for n in range(feed.QUEUE + 5):
            tab.offer({"topic": "step.started", "seq": n})
        return [tab.queue.get_nowait() for _ in range(tab.queue.qsize())]

    got = asyncio.run(scenario())
    assert got[0] == RESYNC and len(got) == 5  # the resync, then what came after it


def test_topic_rates_count_per_topic_over_the_window() -> None:
    rates = TopicRates()
    rates.since = 100.0
    for second in range(100, 110):
        for _ in range(3):
            rates.count("market.prices", second + 0.5)
        rates.count("news", second + 0.5)
    seen = rates.rates(110.0)
    assert seen["window_s"] == 10.0
    assert seen["topics"] == [{"topic": "market.prices", "count": 30, "per_s": 3.0},
                              {"topic": "news", "count": 10, "per_s": 1.0}]
    assert rates.rates(100.0 + feed.RATE_WINDOW + 20)["topics"] == []  # older than the window: forgotten


def test_a_tab_gets_an_events_short_fields_not_a_steps_output() -> None:
    assert slim({"run_id": "r1", "step": "a", "attempts": 1, "result": {"big": "x" * 10_000},
                 "error": "e" * 1000, "nested": {"a": 1}}) == {"run_id": "r1", "step": "a", "attempts": 1,
                                                                  "error": "e" * feed.SLIM_TEXT}
    assert slim(["not", "a", "dict"]) is None
