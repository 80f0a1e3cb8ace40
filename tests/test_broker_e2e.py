"""End-to-end broker: real daemons and workers exchanging messages, events and shared state.

Each test starts its own daemon (conftest `make_daemon`). Nothing sleeps to wait:
tests wait on runs (`Client.wait`), on the daemon's answers, or poll with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.errors import exit_code_for

pytestmark = pytest.mark.timeout(120)

PIPES = """
    import os
    from tagent_client import Pipeline

    collector = Pipeline("collector")

    @collector.task(final=True)
    async def collect(ctx):
        entry = await ctx.space("research").put("acme", {"score": 4.2})
        ids = [await ctx.send("reporter", {"company": c}) for c in ("Acme", "Beta", "Gamma")]
        await ctx.publish("research.company_done", {"company": "Acme"})
        return {"ids": ids, "version": entry.version}

    reporter = Pipeline("reporter", capabilities=["report"])

    @reporter.task(final=True)
    async def report(ctx):
        got = []
        for _ in range(3):
            message = await ctx.receive(timeout=30)
            got.append(message.payload["company"])
        entry = await ctx.space("research").get("acme")
        ok = await ctx.space("research").cas("acme", {"score": 5}, expected_version=entry.version)
        return {"got": got, "cas": ok, "keys": await ctx.space("research").keys()}

    fragile = Pipeline("fragile")

    @fragile.task(final=True, max_retries=2, retry_delay=0.01)
    async def take(ctx):
        message = await ctx.receive(timeout=30)
        if ctx.attempt == 1:
            os._exit(3)  # the worker dies holding the lease
        return {"id": message.id, "deliveries": message.deliveries, "attempt": ctx.attempt}

    waiter = Pipeline("waiter", capabilities=["listening"])

    @waiter.task(final=True)
    async def listen(ctx):
        event = await ctx.wait_for_event("go.", timeout=30)
        return {"topic": event.topic, "data": event.data}

    intruder = Pipeline("intruder")

    @intruder.task(final=True, max_retries=0)
    async def peek(ctx):
        return (await ctx.space("vault").get("secret")).value

    trusted = Pipeline("trusted")

    @trusted.task(final=True)
    async def keep(ctx):
        return (await ctx.space("vault").put("secret", "s3cr3t")).version
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "pipes.py", PIPES)


def out(result: Any) -> Any:
    assert result.status == "completed", result.error
    return result.final_output


def cli_json(daemon: DaemonProcess, *args: str) -> Any:
    done = daemon.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_step_sends_publishes_and_writes_and_another_receives_in_order(make_daemon: Any, pipes: Path) -> None:
    # Given a daemon and the reporter running first (its mailbox is empty: it waits)
    daemon = make_daemon().start()
    with daemon.client() as client:
        reporter = client.submit(f"{pipes}:reporter")
        # When the collector sends three messages, publishes and writes a space
        collector = client.submit(f"{pipes}:collector")
        sent = out(client.wait(collector.id, timeout=30))
        got = out(client.wait(reporter.id, timeout=30))
        # Then the reporter got them in order, read the space and won its CAS; the messages are acknowledged
        assert got == {"got": ["Acme", "Beta", "Gamma"], "cas": True, "keys": ["acme"]}
        assert sent["ids"][0] == f"{collector.id}/collect/1" and sent["version"] == 1
        assert client.space("research").get("acme").value == {"score": 5}
        assert client.mailboxes("reporter")[0].messages == 0
        stats = client.broker_stats()
        assert stats.counters["messages_sent"] == 3 and stats.counters["messages_acked"] == 3


def test_messages_to_a_pipeline_that_is_not_running_wait_for_it_across_a_crash(make_daemon: Any, pipes: Path) -> None:
    # Given messages sent (by a client) to a pipeline with no run, and a space value
    daemon = make_daemon().start()
    with daemon.client() as client:
        for company in ("Acme", "Beta", "Gamma"):
            client.send("reporter", {"company": company})
        assert client.send("reporter", {"company": "dup"}, id="same") == "same"
        assert client.send("reporter", {"company": "dup"}, id="same") == "same"  # dropped: seen id
        client.space("research").put("acme", {"score": 1})
        assert client.mailboxes("reporter")[0].messages == 4
    # When the daemon is killed and restarted
    daemon.kill9()
    daemon.start()
    with daemon.client() as client:
        # Then they are still there, and a run of the pipeline takes them in order
        assert client.mailboxes("reporter")[0].messages == 4
        run = client.submit(f"{pipes}:reporter")
        assert out(client.wait(run.id, timeout=30))["got"] == ["Acme", "Beta", "Gamma"]
        assert client.mailboxes("reporter", peek=5)[0].peek[0].id == "same"


def test_a_worker_dying_with_a_lease_gives_the_message_back(make_daemon: Any, pipes: Path) -> None:
    daemon = make_daemon().start()
    with daemon.client() as client:
        client.send("fragile", "payload", id="m-1")
        run = client.submit(f"{pipes}:fragile")
        # The first attempt received the message and its worker died; the retry got it again
        assert out(client.wait(run.id, timeout=60)) == {"id": "m-1", "deliveries": 2, "attempt": 2}
        assert client.mailboxes("fragile")[0].messages == 0


def test_wait_for_event_and_the_registry(make_daemon: Any, pipes: Path) -> None:
    daemon = make_daemon().start()
    with daemon.client() as client:
        # Given a running pipeline that declares a capability and waits for an event
        run = client.submit(f"{pipes}:waiter")
        wait_until(lambda: client.pipelines("listening"), 20, what="the waiter in the registry")
        # Then the registry lists it with its run, and `tagent pipelines` agrees
        entry = client.pipelines("listening")[0]
        assert (entry.pipeline, entry.run_ids) == ("waiter", [run.id])
        assert [e["pipeline"] for e in cli_json(daemon, "pipelines", "--capability", "listening")] == ["waiter"]
        assert client.pipelines("nobody-has-this") == []
        # When an event is published until the step hears it (it may not be waiting yet)
        def heard() -> bool:
            client.publish("go.now", {"x": 1})
            return client.status(run.id).status == "completed"
        wait_until(heard, 30, interval=0.2, what="the waiter to hear the event")
        # Then it got the event, and the finished run left the registry
        assert out(client.result(run.id)) == {"topic": "go.now", "data": {"x": 1}}
        assert client.pipelines("listening") == []


def test_an_allow_listed_space_refuses_other_pipelines_clearly(make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given a daemon whose config restricts space "vault" to pipeline "trusted"
    config = tmp_path / "config" / "tagentd"
    config.mkdir(parents=True)
    (config / "tagentd.toml").write_text('[spaces.vault]\nallow = ["trusted"]\n')
    daemon = make_daemon().start()
    with daemon.client() as client:
        assert out(client.wait(client.submit(f"{pipes}:trusted").id, timeout=30)) == 1
        # When a step of another pipeline reads it
        refused = client.wait(client.submit(f"{pipes}:intruder").id, timeout=30)
        # Then the step fails with a permission error that says what to do; clients still read it
        assert refused.status == "failed"
        assert "PermissionDenied" in refused.error
        assert "space 'vault' is restricted to pipelines trusted; pipeline 'intruder'" in refused.error
        assert "tagent space allow vault intruder" in refused.error
        assert client.space("vault").get("secret").value == "s3cr3t"
        # And once allowed (durably, by the owner), it may
        assert daemon.cli("space", "allow", "vault", "intruder").returncode == 0
        assert out(client.wait(client.submit(f"{pipes}:intruder").id, timeout=30)) == "s3cr3t"
        log = [(e.who.split("/")[0].split(" ")[0], e.op, e.ok) for e in client.space("vault").log()]
        me = f"uid={os.getuid()}"  # a client is named as in a run's history (docs/protocol.md, "Who sent it")
        assert log == [("trusted", "put", True), ("intruder", "get", False), (me, "get", True),
                       ("intruder", "get", True)]


def test_the_cli_sends_publishes_subscribes_and_uses_spaces(make_daemon: Any) -> None:
    daemon = make_daemon().start()
    # Given a `tagent subscribe` waiting for two research events
    sub = subprocess.Popen([sys.executable, "-m", "tagent_client.cli", "subscribe", "research.", "--json", "--count", "2"],
                           env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sub.stderr is not None and "subscribed" in sub.stderr.readline()
        # When events, a message and space writes go through the CLI
        assert daemon.cli("publish", "research.company_done", '{"company": "Acme"}').returncode == 0
        assert daemon.cli("publish", "other.topic", "{}").returncode == 0
        assert daemon.cli("publish", "research.second", "42").returncode == 0
        assert daemon.cli("space", "put", "research", "acme", '{"x": 1}').stdout.strip() == "acme: version 1"
        sent = daemon.cli("send", "reporter", '{"company": "Acme"}', "--id", "m1", "--create")  # nothing ran it yet
        assert sent.returncode == 0 and sent.stdout.strip() == "m1"
        lines, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
    # Then the subscriber printed exactly the research events (the space change is on space.research.acme)
    topics = [json.loads(line)["topic"] for line in lines.splitlines()]
    assert topics == ["research.company_done", "research.second"]
    assert cli_json(daemon, "space", "get", "research", "acme") == {"key": "acme", "value": {"x": 1}, "version": 1}
    assert cli_json(daemon, "space", "ls", "research") == [{"key": "acme", "version": 1, "bytes": 4}]  # msgpack of {"x": 1}
    assert [e["op"] for e in cli_json(daemon, "space", "log", "research")] == ["put", "get"]
    assert cli_json(daemon, "mailbox", "ls", "reporter")[0]["messages"] == 1
    missing = daemon.cli("space", "get", "research", "nope")
    assert missing.returncode == exit_code_for("not_found") and "has no key 'nope'" in missing.stderr
    status = json.loads(daemon.admin("status", "--json").stdout)
    assert status["stats"]["broker"]["messages_queued"] == 1


GATED = """
    from tagent_client import Pipeline

    pipeline = Pipeline("gated", triggers=["work."])

    @pipeline.task(final=True)
    async def handle(ctx):
        if ctx.trigger is None:
            return "ran without an event"
        while (await ctx.space("ctl").get("go")) is None:
            await ctx.wait_for_event("space.ctl.go", timeout=1)
        return ctx.trigger["data"]
"""


def test_registrations_and_queued_triggers_survive_a_crash_and_start_each_run_once(make_daemon: Any,
                                                                                   tmp_path: Path) -> None:
    # Given a pipeline registered for "work." events, one triggered run at a time, and three events:
    # one run waits for a go signal, two events wait in its queue
    gated = write_pipeline(tmp_path, "gated.py", GATED)
    daemon = make_daemon()
    daemon.env["TAGENTD_TRIGGER_MAX_CONCURRENT"] = "1"
    daemon.start()
    with daemon.client() as client:
        assert client.submit(gated).registered
        for i in range(3):
            assert client.publish("work.item", i)["triggered"] == ["gated"]
        wait_until(lambda: client.pipelines()[0].queued_triggers == 2, 20, what="two events queued")
    # When the daemon is killed and restarted, then the go signal is given
    daemon.kill9()
    daemon.start()
    with daemon.client() as client:
        assert client.pipelines()[0].registered
        client.space("ctl").put("go", True)

        def finished() -> list[Any]:
            runs = [r for r in client.runs() if r.pipeline == "gated"]
            return runs if len(runs) == 3 and all(r.status == "completed" for r in runs) else []
        runs = wait_until(finished, 60, interval=0.1, what="three runs of gated to complete")
        # Then each event started exactly one run
        assert sorted(client.result(r.run_id).final_output for r in runs) == [0, 1, 2]
        # And `submit --run` runs it now, without an event
        forced = client.submit(gated, run=True)
        assert not forced.registered
        assert out(client.wait(forced.id, timeout=30)) == "ran without an event"


def test_async_client_publishes_subscribes_and_uses_spaces(make_daemon: Any) -> None:
    import asyncio

    from tagent_client.client.aio import AsyncClient

    daemon = make_daemon().start()

    async def scenario() -> tuple[list[Any], Any, bool, list[str]]:
        async with AsyncClient(daemon.runtime_dir) as client:
            subscription = await client.subscribe("news.", "space.notes.")
            async with subscription:
                await client.publish("news.today", {"headline": "hi"})
                await client.publish_many([("other.x", 1), ("news.tomorrow", 2)])
                entry = await client.space("notes").put("a", 1)
                ok = await client.space("notes").cas("a", 2, expected_version=entry.version)
                got = [await subscription.get(timeout=10) for _ in range(4)]
            return got, await client.space("notes").get("a"), ok, await client.space("notes").keys()

    got, entry, ok, keys = asyncio.run(scenario())
    assert [(e.topic, e.data if e.topic.startswith("news.") else e.data["version"]) for e in got] == [
        ("news.today", {"headline": "hi"}), ("news.tomorrow", 2), ("space.notes.a", 1), ("space.notes.a", 2)]
    assert ok and (entry.value, entry.version) == (2, 2) and keys == ["a"]
    with daemon.client() as client, client.subscribe("late.") as sync_sub:
        client.publish("late.one", None)
        assert sync_sub.get(timeout=10).topic == "late.one"
        assert sync_sub.get(timeout=0.1) is None
