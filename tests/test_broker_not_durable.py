"""Direct messages without waiting for the disk (`send(..., durable=False)`), and the round trip's commits.

Real daemons and workers (conftest `make_daemon`); durability is checked by kill -9, the
"acknowledged before the commit" promise with the disk-full failpoint (the commit cannot happen).
Nothing sleeps to wait: tests wait on runs, on the daemon's answers, or poll with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until, write_pipeline

from tagentd.storage.failpoints import DISK_FULL_ENV

pytestmark = pytest.mark.timeout(120)

PIPES = """
    from tagent_client import Pipeline

    ping = Pipeline("ping")

    @ping.task(final=True)
    async def serve(ctx):
        durable, got = ctx.params["durable"], []
        for i in range(ctx.params["n"]):
            await ctx.send("pong", i, durable=durable)
            message = await ctx.receive(timeout=30)
            got.append(message.payload)
        await ctx.send("pong", "stop", durable=durable)
        return got

    pong = Pipeline("pong")

    @pong.task(final=True)
    async def answer(ctx):
        durable = ctx.params["durable"]
        while True:
            message = await ctx.receive(timeout=30)
            if message.payload == "stop":
                return "stopped"
            await ctx.send("ping", message.payload * 10, durable=durable)

    mixed = Pipeline("mixed")

    @mixed.task(final=True)
    async def send_mixed(ctx):
        for i in range(20):
            await ctx.send("sink", i, durable=i % 3 == 0)
        await ctx.communicator.send_message("sink", 20, "note", durable=False)
        return "sent"

    sink = Pipeline("sink")

    @sink.task(final=True)
    async def drain(ctx):
        return [(await ctx.receive(timeout=30)).payload for _ in range(ctx.params["n"])]
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "pipes.py", PIPES)


def commits(client: Any) -> float:
    """The daemon's successful group commits so far (its metrics)."""
    for line in client.metrics().splitlines():
        if line.startswith("tagentd_commit_duration_seconds_count"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no tagentd_commit_duration_seconds_count in the metrics")


def broker_fsyncs(client: Any) -> float:
    """The fsyncs the daemon's broker log made so far (its metrics)."""
    for line in client.metrics().splitlines():
        if line.startswith('tagentd_wal_fsync_duration_seconds_count{log="broker"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def queued(client: Any, mailbox: str) -> list[Any]:
    """The payloads waiting in `mailbox`, oldest first."""
    return [m.payload for info in client.mailboxes(mailbox, peek=1000) for m in info.peek]


@pytest.mark.parametrize("durable", [True, False])
def test_a_round_trip_between_steps_delivers_every_message(make_daemon: Any, pipes: Path, durable: bool) -> None:
    # Given a step of "ping" that sends to "pong" and waits for the answer, 30 times
    daemon = make_daemon().start()
    with daemon.client() as client:
        pong = client.submit(f"{pipes}:pong", {"durable": durable})
        # When both exchange messages, durable or not
        ping = client.submit(f"{pipes}:ping", {"durable": durable, "n": 30})
        result = client.wait(ping.id, timeout=60)
        # Then every answer comes back, in order, and both steps end normally
        assert result.status == "completed", result.error
        assert result.final_output == [i * 10 for i in range(30)]
        assert client.wait(pong.id, timeout=30).final_output == "stopped"


def test_a_parked_receive_is_answered_by_the_commit_of_the_send_that_fills_it(make_daemon: Any, pipes: Path) -> None:
    # Given two steps exchanging 40 durable messages (a round trip is two sends, each durable before it returns)
    daemon = make_daemon().start()
    with daemon.client() as client:
        client.submit(f"{pipes}:pong", {"durable": True})
        client.wait(client.submit(f"{pipes}:ping", {"durable": True, "n": 1}).id, timeout=60)  # both files loaded
        pong = client.submit(f"{pipes}:pong", {"durable": True})
        before = commits(client)
        # When they run
        ping = client.submit(f"{pipes}:ping", {"durable": True, "n": 40})
        assert client.wait(ping.id, timeout=60).final_output == [i * 10 for i in range(40)]
        client.wait(pong.id, timeout=30)
        per_round_trip = (commits(client) - before) / 40
        # Then each direction takes one commit: the receiver parked in the daemon is answered with the sender,
        # not by a commit of its own after it (which made four commits per round trip)
        assert per_round_trip < 3, f"{per_round_trip:.2f} commits per round trip"


def test_durable_and_non_durable_sends_of_one_step_arrive_in_send_order(make_daemon: Any, pipes: Path) -> None:
    # Given a step that sends 21 messages to "sink", every third one durable, the last through its communicator
    daemon = make_daemon().start()
    with daemon.client() as client:
        # When it has sent them all and a run of "sink" takes them
        assert client.wait(client.submit(f"{pipes}:mixed").id, timeout=60).final_output == "sent"
        result = client.wait(client.submit(f"{pipes}:sink", {"n": 21}).id, timeout=60)
        # Then they are received in the order they were sent: one FIFO, whatever each one's durability
        assert result.final_output == list(range(21))
        # And the CLI's --no-durable sends one too
        assert daemon.cli("send", "sink", '"from the cli"', "--no-durable").returncode == 0
        assert queued(client, "sink") == ["from the cli"]


def test_a_non_durable_send_is_answered_before_the_commit_and_a_crash_before_it_loses_it(
        make_daemon: Any, tmp_path: Path) -> None:
    # Given a daemon whose disk is "full" (the failpoint): no commit can happen
    flag = tmp_path / "disk-full"
    daemon = make_daemon()
    daemon.env[DISK_FULL_ENV] = str(flag)
    daemon.start()
    with daemon.client(timeout=5) as client:
        client.send("later", "kept", durable=True)  # written while the disk still takes it
        flag.touch()
        # When a client sends a non-durable message
        message_id = client.send("later", "volatile", durable=False, id="v1")
        # Then it is acknowledged at once (a durable send would wait for a commit that cannot happen)
        assert message_id == "v1"
    # And when the daemon is killed -9 before any commit wrote it, and restarted with a working disk
    daemon.kill9()
    flag.unlink()
    daemon.start()
    # Then it is gone, as documented, and the durable one sent before it is there
    with daemon.client() as client:
        assert queued(client, "later") == ["kept"]


@pytest.mark.timeout(180)
def test_a_durable_send_keeps_every_non_durable_one_sent_before_it_across_kill9(make_daemon: Any) -> None:
    # Given a client that sends rounds of non-durable messages, each round closed by a durable one
    daemon = make_daemon().start()
    sent: list[str] = []
    kept: list[str] = []
    for crash in range(3):
        with daemon.client() as client:
            for n in range(30):
                for i in range(4):
                    sent.append(client.send("box", f"{crash}.{n}.{i}", durable=False, id=f"{crash}.{n}.{i}"))
                sent.append(client.send("box", f"{crash}.{n}.d", durable=True, id=f"{crash}.{n}.d"))
            durable_upto = len(sent)
            for i in range(50):  # a tail nobody waited for the disk for
                sent.append(client.send("box", f"{crash}.tail.{i}", durable=False, id=f"{crash}.tail.{i}"))
        # When the daemon is killed -9 right after, and restarted
        daemon.kill9()
        daemon.start()
        with daemon.client() as client:
            now = queued(client, "box")
        # Then every message up to the last durable one is there, in send order, and of the tail at most a
        # prefix (a crash loses only what came after the last commit, never a message before a durable one)
        assert now[:len(kept)] == kept
        fresh = now[len(kept):]
        expected = sent[len(kept):]
        assert fresh == expected[:len(fresh)], "messages out of order or a hole"
        assert len(kept) + len(fresh) >= durable_upto, "a message sent before a durable one was lost"
        kept = now
        sent = list(now)


def test_non_durable_sends_are_written_without_an_fsync_and_survive_kill9_once_written(make_daemon: Any) -> None:
    # Given a daemon whose broker log holds one durable message
    daemon = make_daemon().start()
    with daemon.client() as client:
        client.send("box", "durable", durable=True)
        fsyncs = broker_fsyncs(client)
        records = client.broker_stats().store["records"]
        # When a client sends 20 non-durable messages, and the daemon's commits have written them to the log
        for i in range(20):
            client.send("box", i, durable=False, id=f"v{i}")
        wait_until(lambda: client.broker_stats().store["records"] >= records + 20, what="the 20 sends written")
        # Then none of them cost an fsync of the broker log (each one did, in the commit after it)
        assert broker_fsyncs(client) == fsyncs
    # And once written they survive the daemon being killed -9 (the OS holds what was written; a power loss is
    # what may lose them until the next fsync)
    daemon.kill9()
    daemon.start()
    with daemon.client() as client:
        assert queued(client, "box") == ["durable", *range(20)]
