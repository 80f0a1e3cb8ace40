"""The broker in in-process runs (`run_pipeline`): the same ctx abilities, on LocalBroker."""

from __future__ import annotations

import asyncio

import pytest

from tagent_client import Pipeline
from tagent_client.errors import RetryableError
from tagent_client.run.broker_local import LocalBroker
from tagent_client.run.local import run_pipeline

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fresh_broker() -> None:
    """Each test gets a new process-wide broker (LocalBroker.default())."""
    LocalBroker._default = None


def run_together(*pipelines: Pipeline):  # noqa: ANN201
    async def both():  # noqa: ANN202
        return await asyncio.gather(*(run_pipeline(p) for p in pipelines))

    return asyncio.run(both())


def test_two_in_process_pipelines_exchange_messages_in_order() -> None:
    # Given a collector that sends 20 messages and a reporter that receives them
    collector = Pipeline("collector")
    reporter = Pipeline("reporter")

    @collector.task()
    async def collect(ctx):  # noqa: ANN001, ANN202
        return [await ctx.send("reporter", {"n": n}) for n in range(20)]

    @reporter.task()
    async def report(ctx):  # noqa: ANN001, ANN202
        return [(await ctx.receive(timeout=5)).payload["n"] for _ in range(20)]

    # When both run in this process
    sent, got = run_together(reporter, collector)[::-1]
    # Then every message arrives once, in order, with deterministic ids
    assert got.step_outputs["report"] == list(range(20))
    assert sent.step_outputs["collect"][0].endswith("/collect/1")


def test_a_failed_attempt_gives_its_message_back_and_the_retry_gets_it() -> None:
    # Given a message waiting, and a step that fails on its first attempt after receiving it
    broker = LocalBroker.default()
    broker.core.send("reporter", "only", "test", "hello", 0.0)
    reporter = Pipeline("reporter")

    @reporter.task(max_retries=1, retry_delay=0.01)
    async def report(ctx):  # noqa: ANN001, ANN202
        message = await ctx.receive(timeout=2)
        if ctx.attempt == 1:
            raise RetryableError("crash after receiving")
        return [message.id, message.deliveries]

    # When it runs
    result = asyncio.run(run_pipeline(reporter))
    # Then the second attempt got the same message as its second delivery, and it is acknowledged now
    assert result.step_outputs["report"] == ["only", 2]
    assert len(broker.core.mailboxes["reporter"]) == 0


def test_a_poison_message_becomes_a_dead_letter_in_process_too_and_can_be_requeued() -> None:
    # Given a poison message ahead of two good ones, and a step that fails on the poison every time (retried)
    broker = LocalBroker.default()
    for message_id, payload in (("poison", {"bad": True}), ("m1", {"n": 1}), ("m2", {"n": 2})):
        broker.core.send("inbox", message_id, "test", payload, 0.0)
    inbox = Pipeline("inbox")

    @inbox.task(max_retries=10, retry_delay=0.01)
    async def handle(ctx):  # noqa: ANN001, ANN202
        got = []
        while (message := await ctx.receive(timeout=0)) is not None:
            if message.payload.get("bad"):
                raise RetryableError(f"cannot digest {message.id}")
            got.append(message.payload["n"])
        return {"got": got, "attempt": ctx.attempt}

    # When it runs in this process
    result = asyncio.run(run_pipeline(inbox))
    # Then after 5 failed deliveries (the default max_deliveries) the poison is a dead letter with the last error,
    # and the sixth attempt got the messages behind it
    assert result.step_outputs["handle"] == {"got": [1, 2], "attempt": 6}
    [letter] = broker.dead_letters("inbox")
    assert (letter.message.id, letter.message.failures) == ("poison", 5)
    assert letter.error == "RetryableError: cannot digest poison"
    # And requeue puts it back in the mailbox, as with the daemon (the same core: see test_broker_core.py)
    assert broker.requeue("inbox", "poison") == ["poison"]
    assert [m.id for m in broker.core.iter_messages("inbox")] == ["poison"]
    assert broker.dead_letters("inbox") == []


def test_parallel_steps_increment_a_counter_with_cas_exactly() -> None:
    # Given 10 concurrent items that each add 1 to a counter 20 times with a CAS retry loop
    counter = Pipeline("counter")

    @counter.task(execution_mode="parallel_merge", over=list(range(10)))
    async def bump(ctx, item):  # noqa: ANN001, ANN202
        space = ctx.space("shared")
        for _ in range(20):
            while True:
                entry = await space.get("n")
                current, version = (entry.value, entry.version) if entry else (0, 0)
                await asyncio.sleep(0)  # ok-sleep: the step's own work (or a yield), not a wait for something
                if await space.cas("n", current + 1, expected_version=version):
                    break
        return item

    asyncio.run(run_pipeline(counter))
    # Then the counter is exactly 200
    entry = LocalBroker.default().core.spaces["shared"].entries["n"]
    assert entry.value == 200 and entry.version == 200


def test_wait_for_event_sees_a_space_change_and_discover_finds_running_pipelines() -> None:
    watcher = Pipeline("watcher", capabilities=["watching"])
    writer = Pipeline("writer")

    @watcher.task()
    async def watch(ctx):  # noqa: ANN001, ANN202
        found = await ctx.discover("watching")
        event = await ctx.wait_for_event("space.notes.", timeout=5)
        return [[e.pipeline for e in found], event.topic, event.data["value"]]

    @writer.task()
    async def write(ctx):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.05)  # ok-sleep: let the watcher start waiting first (it would otherwise time out)
        await ctx.space("notes").put("today", "sunny")
        await ctx.publish("notes.done", {"ok": True})

    watched, _ = run_together(watcher, writer)
    assert watched.step_outputs["watch"] == [["watcher"], "space.notes.today", "sunny"]


def test_agent_steps_get_the_broker_tools_their_tools_filter_names() -> None:
    # Given an agent step granted the broker tools, and one that names none (on the offline test model,
    # which calls every tool it is offered)
    granted = Pipeline("granted", model="test")
    granted.step("talk", goal="Tell the others", tools_filter=["send_message", "write_space", "list_space"])
    plain = Pipeline("plain", model="test")
    plain.step("think", goal="Think alone")
    # When both run
    results = run_together(granted, plain)
    # Then only the granted step used the broker (its message and space write are there), the other nothing
    assert [r.status for r in results] == ["completed", "completed"]
    core = LocalBroker.default().core
    assert sum(len(box) for box in core.mailboxes.values()) == 1
    assert [len(space.entries) for space in core.spaces.values()] == [1]


def test_a_sync_step_uses_the_broker_through_its_own_event_loop() -> None:
    # Given a sync step (run in a thread) that waits for a message an async step sends a little later
    pipeline = Pipeline("mixed")

    @pipeline.task(execution_mode="concurrent")
    def waits(ctx):  # noqa: ANN001, ANN202
        message = asyncio.run(ctx.receive(timeout=5))
        return message.payload

    @pipeline.task(execution_mode="concurrent")
    async def sends(ctx):  # noqa: ANN001, ANN202
        await ctx.space("s").put("k", 1)
        return await ctx.send("mixed", "hello")

    # When it runs, then the sync step got the message
    result = asyncio.run(run_pipeline(pipeline))
    assert result.step_outputs["waits"] == "hello"
