"""`PipelineCommunicator` (the design documents' API over the broker): steps and clients, in-process and daemon.

The same pipeline file runs in this process (`run_pipeline`, LocalBroker) and through a real daemon;
what the steps return is compared between the two. Nothing sleeps to wait: steps wait on messages and
on their own callbacks, the tests on runs and with `wait_until`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client import AsyncClient, Pipeline, PipelineCommunicator, PipelineEvent
from tagent_client.errors import InvalidRequest, RetryableError
from tagent_client.run.broker_local import LocalBroker
from tagent_client.run.local import run_pipeline

pytestmark = pytest.mark.timeout(120)

PIPES = """
    import asyncio
    from tagent_client import Pipeline

    listener = Pipeline("listener")

    @listener.task(final=True)
    async def hear(ctx):
        got = []
        for _ in range(2):
            m = await ctx.communicator.receive_message(timeout=30)
            got.append({"message": m.message, "message_type": m.message_type, "from_pipeline": m.from_pipeline,
                        "to_pipeline": m.to_pipeline, "message_id": m.message_id, "timestamp": m.timestamp.timestamp()})
        return got

    sender = Pipeline("sender")

    @sender.task(final=True)
    async def tell(ctx):
        first = await ctx.communicator.send_message("listener", {"order": 1}, "order")
        # the documents' keywords: from_pipeline is the step's own pipeline
        second = await ctx.communicator.send_message(to_pipeline="listener", message="hi", from_pipeline="sender")
        return [first, second]

    watcher = Pipeline("watcher")

    @watcher.task(final=True)
    async def watch(ctx):
        seen = {"sync": [], "async": []}
        both = asyncio.Event()

        def check():
            if seen["sync"] and seen["async"]:
                both.set()

        def on_sync(event):
            seen["sync"].append(event)
            check()

        async def on_async(event):
            await asyncio.sleep(0)  # ok-sleep: an async callback that awaits something
            seen["async"].append(event)
            check()

        comm = ctx.communicator
        await comm.subscribe_to_events(["prices."], on_sync)
        async with comm.subscribe_to_events("watcher", ["prices."], on_async):  # the documents' argument order
            await comm.register_pipeline(info={"description": "watches prices", "capabilities": ["watching"]})
            await comm.send_message("announcer", "ready", "ready")
            await asyncio.wait_for(both.wait(), 30)
        return {kind: [{"event_type": e.event_type, "data": e.data, "source_pipeline": e.source_pipeline,
                        "event_id": e.event_id, "timestamp": type(e.timestamp).__name__} for e in events]
                for kind, events in seen.items()}

    announcer = Pipeline("announcer")

    @announcer.task(final=True)
    async def announce(ctx):
        ready = await ctx.communicator.receive_message(timeout=30)
        event_id = await ctx.communicator.broadcast_event("prices.updated", {"sku": "A1", "price": 9.5})
        registry = {e.pipeline: e.info.description for e in await ctx.communicator.discover("watching")}
        return {"ready": [ready.message_type, ready.from_pipeline], "event_id": event_id, "registry": registry}
"""

NAMES = ("listener", "sender", "watcher", "announcer")


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "talk.py", PIPES)


@pytest.fixture(autouse=True)
def fresh_broker() -> None:
    """Each test gets a new process-wide in-process broker."""
    LocalBroker._default = None


def load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("talk_pipes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked(outputs: dict[str, Any]) -> dict[str, Any]:
    """Check the ids and timestamps that differ between runs against each other; the rest, to compare."""
    sent, heard = outputs["sender"], outputs["listener"]
    assert [m["message_id"] for m in heard] == sent, "the receiver sees the ids the sender got back"
    assert all(isinstance(m["timestamp"], float) and m["timestamp"] > 0 for m in heard)
    event_id = outputs["announcer"]["event_id"]
    for kind in ("sync", "async"):
        assert [e["event_id"] for e in outputs["watcher"][kind]] == [event_id]
    return {
        "listener": [{k: v for k, v in m.items() if k not in ("message_id", "timestamp")} for m in heard],
        "watcher": {kind: [{k: v for k, v in e.items() if k != "event_id"} for e in events]
                    for kind, events in outputs["watcher"].items()},
        "announcer": {k: v for k, v in outputs["announcer"].items() if k != "event_id"},
    }


EXPECTED = {
    "listener": [
        {"message": {"order": 1}, "message_type": "order", "from_pipeline": "sender", "to_pipeline": "listener"},
        {"message": "hi", "message_type": "data", "from_pipeline": "sender", "to_pipeline": "listener"},
    ],
    "watcher": {kind: [{"event_type": "prices.updated", "data": {"sku": "A1", "price": 9.5},
                        "source_pipeline": "announcer", "timestamp": "datetime"}] for kind in ("sync", "async")},
    "announcer": {"ready": ["ready", "watcher"], "registry": {"watcher": "watches prices"}},
}


def in_process(pipes: Path) -> dict[str, Any]:
    module = load(pipes)

    async def together() -> list[Any]:
        return await asyncio.gather(*(run_pipeline(getattr(module, name)) for name in NAMES))

    results = asyncio.run(together())
    for result in results:
        assert result.status == "completed", result.error
    return {name: result.final_output for name, result in zip(NAMES, results, strict=True)}


def test_steps_talk_through_the_communicator_in_process(pipes: Path) -> None:
    # Given four pipelines in one process: a sender and a listener, a watcher and an announcer
    # When they run together
    outputs = in_process(pipes)
    # Then the listener got both typed messages with sender, id and time; both of the watcher's callbacks
    # (sync and async) got the announcer's event with its source and id; the watcher's registration was
    # visible to the announcer
    assert checked(outputs) == EXPECTED
    # And the watcher's subscriptions ended with its step: nothing is left subscribed
    assert LocalBroker.default().subscriptions == []


def test_steps_talk_through_the_communicator_in_the_daemon_as_in_process(make_daemon: Any, pipes: Path) -> None:
    # Given a daemon, and a client subscribed (as pipeline "dashboard") with a sync and with an async callback
    daemon = make_daemon(workers=4).start()
    heard: dict[str, list[PipelineEvent]] = {"sync": [], "async": []}
    threads: set[int] = set()

    def on_sync(event: PipelineEvent) -> None:
        heard["sync"].append(event)

    async def on_async(event: PipelineEvent) -> None:
        threads.add(threading.get_ident())
        heard["async"].append(event)

    with daemon.client() as client:
        comm = client.communicator(as_pipeline="dashboard")
        with comm.subscribe_to_events(["prices."], on_sync), comm.subscribe_to_events(["prices."], on_async):
            # When the four pipelines run through the daemon
            runs = {name: client.submit(f"{pipes}:{name}") for name in NAMES}
            results = {name: client.wait(run.id, timeout=60) for name, run in runs.items()}
            for result in results.values():
                assert result.status == "completed", result.error
            outputs = {name: result.final_output for name, result in results.items()}
            wait_until(lambda: heard["sync"] and heard["async"], 20, what="the client's callbacks")
        # Then the steps saw exactly what they see in-process
        assert checked(outputs) == EXPECTED == checked(in_process(pipes))
        # And the client's callbacks got the event with its source pipeline and id (the async one on the
        # subscription's own thread)
        for kind in ("sync", "async"):
            (event,) = heard[kind]
            assert (event.event_type, event.source_pipeline, event.event_id) == (
                "prices.updated", "announcer", outputs["announcer"]["event_id"])
            assert event.data == {"sku": "A1", "price": 9.5} and isinstance(event.timestamp, datetime)
        assert threading.get_ident() not in threads
        # And the watcher's registration is in the registry after its run ended, and in `tagent pipelines`
        (entry,) = client.pipelines("watching")
        assert entry.pipeline == "watcher" and entry.info is not None and entry.info.description == "watches prices"
        assert entry.info.by.startswith("watcher/")
        listing = json.loads(daemon.cli("pipelines", "--json").stdout)
        assert [e["info"]["description"] for e in listing if e["pipeline"] == "watcher"] == ["watches prices"]


def test_a_client_registers_and_sends_as_a_pipeline_durably(make_daemon: Any, pipes: Path) -> None:
    daemon = make_daemon().start()
    with daemon.client() as client:
        # Given a client speaking as pipeline "ops"
        comm = client.communicator(as_pipeline="ops")
        # When it registers "ops" (the documents' (pipeline_id, info)) and sends two typed messages
        entry = comm.register_pipeline("ops", {"description": "operations desk", "capabilities": ["ops"], "tier": 1})
        assert (entry.info.description, entry.info.capabilities, entry.info.metadata) == (
            "operations desk", ["ops"], {"tier": 1})
        ids = [comm.send_message("listener", {"do": "restart"}, "command"),
               comm.send_message("listener", "fyi", message_type="note")]
        # And it may not claim to be another pipeline
        with pytest.raises(InvalidRequest, match="speaks for pipeline 'ops', not 'sender'"):
            comm.send_message("listener", "x", from_pipeline="sender")
    # When the daemon is killed and restarted
    daemon.kill9()
    daemon.start()
    with daemon.client() as client:
        # Then the registration is still there, with what it said
        (entry,) = client.pipelines("ops")
        assert entry.info is not None and entry.info.description == "operations desk"
        assert "registered" in daemon.cli("pipelines").stdout.splitlines()[1]
        # And a listener run gets both messages with their type, sender pipeline and ids
        run = client.submit(f"{pipes}:listener")
        heard = client.wait(run.id, timeout=30)
        assert heard.status == "completed", heard.error
        assert [(m["message"], m["message_type"], m["from_pipeline"], m["message_id"]) for m in heard.final_output] == [
            ({"do": "restart"}, "command", "ops", ids[0]), ("fyi", "note", "ops", ids[1])]
        # And `tagent unregister` removes the registration
        assert daemon.cli("unregister", "ops").returncode == 0
        assert client.pipelines("ops") == []


def test_an_async_client_broadcasts_to_an_async_callback(daemon: DaemonProcess) -> None:
    async def scenario() -> tuple[str, list[PipelineEvent]]:
        got: list[PipelineEvent] = []
        arrived = asyncio.Event()

        async def on_event(event: PipelineEvent) -> None:
            got.append(event)
            arrived.set()

        async with AsyncClient(daemon.runtime_dir) as client:
            # Given an async communicator subscribed to "alerts." (confirmed once awaited)
            comm: PipelineCommunicator = client.communicator(as_pipeline="monitor")
            async with comm.subscribe_to_events(["alerts."], on_event) as subscription:
                # When another one broadcasts (the documents' (event_type, data, source_pipeline)) and a
                # non-matching event goes by
                await client.communicator(as_pipeline="other").broadcast_event("noise", 1)
                event_id = await comm.broadcast_event("alerts.disk", {"free": 0.05}, "monitor")
                await asyncio.wait_for(arrived.wait(), 20)
            assert subscription.delivered == 1
        return event_id, got

    event_id, got = asyncio.run(scenario())
    # Then the callback got the matching event only, with its source pipeline and id
    assert [(e.event_type, e.data, e.source_pipeline, e.event_id) for e in got] == [
        ("alerts.disk", {"free": 0.05}, "monitor", event_id)]


def test_the_communicator_refuses_bad_arguments_clearly(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        comm = client.communicator(as_pipeline="ops")
        # A source pipeline other than its own, a subscription without a callback, a non-list of types
        with pytest.raises(InvalidRequest, match="speaks for pipeline 'ops', not 'x'"):
            comm.broadcast_event("t", None, "x")
        with pytest.raises(InvalidRequest, match="callback must be callable"):
            comm.subscribe_to_events(["t"])
        with pytest.raises(InvalidRequest, match="event_types must be a non-empty list"):
            comm.subscribe_to_events([], print)
        with pytest.raises(InvalidRequest, match="speaks for pipeline 'ops', not 'x'"):
            comm.subscribe_to_events("x", ["t"], print)


def test_a_step_that_runs_again_sends_the_same_message_and_event_ids() -> None:
    # Given a step that sends a message and broadcasts an event, then fails on its first attempt
    sent: list[tuple[str, str]] = []
    pipeline = Pipeline("again")

    @pipeline.task(max_retries=1, retry_delay=0.01)
    async def twice(ctx):  # noqa: ANN001, ANN202
        comm = ctx.communicator
        sent.append((await comm.send_message("inbox", "once", "note"), await comm.broadcast_event("again.sent")))
        if ctx.attempt == 1:
            raise RetryableError("failed after sending")
        return "ok"

    # When it runs and its retry sends again
    result = asyncio.run(run_pipeline(pipeline))
    # Then the retry used the same ids, and the mailbox holds the message once (like ctx.send)
    assert result.status == "completed", result.error
    assert len(sent) == 2 and sent[0] == sent[1]
    assert sent[0][0].endswith("/twice/1") and sent[0][1].endswith("/twice/event/1")
    assert len(LocalBroker.default().core.mailboxes["inbox"]) == 1
