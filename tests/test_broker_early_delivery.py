"""A parked receive gets a durable message once the commit that holds it has written it, before its fsync ends.

The promise (docs/checkpoints.md, "Writing: group commit"; docs/broker.md, "Mailboxes"): the sender's
`send` returns only after the fsync; the receiver may have the message while that fsync runs, because the
message is in the log by then (a kill -9 does not take it back) and whatever the receiver does with it
is written by a later commit, after that fsync. Never before the write: a receiver never acts on a message
that a crash of the daemon could un-send.

Real daemons and workers (conftest `make_daemon`); the slow-fsync and disk-full failpoints
(tagentd/storage/failpoints.py) hold a commit between its write and its fsync, or before its write.
Durability is checked by kill -9. Nothing sleeps to wait: tests wait on runs, files and the daemon's answers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.client.calls import RunHandle
from tagent_client.client.sync import Client
from tagentd.storage.failpoints import DISK_FULL_ENV, SLOW_FSYNC_ENV

pytestmark = pytest.mark.timeout(120)

PIPES = """
    import time
    from pathlib import Path
    from tagent_client import Pipeline

    ping = Pipeline("ping")

    @ping.task(final=True)
    async def serve(ctx):
        await ctx.receive(timeout=60)                       # "go", from the test
        await ctx.send("pong", "m")                         # durable: returns after its fsync
        returned = time.monotonic()
        if ctx.params.get("marker"):
            with open(ctx.params["marker"], "a") as told:   # what this step was told, across crashes
                told.write("sent\\n")
        await ctx.send("pong", "done")
        return returned

    pong = Pipeline("pong")

    @pong.task(final=True)
    async def answer(ctx):
        got, first = [], None
        while True:
            message = await ctx.receive(timeout=60)
            first = first or time.monotonic()
            with open(ctx.params["marker"], "a") as seen:   # what this step acted on, across crashes
                seen.write(message.payload + "\\n")
            got.append(message.payload)
            if message.payload in ("done", "after"):
                return {"got": got, "first": first}
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "pipes.py", PIPES)


def running(client: Any, run_id: str) -> bool:
    return any(step.status == "running" for step in client.status(run_id).steps.values())


def seen(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def failed_commits(client: Any) -> int:
    problem = client.daemon_status().stats.get("state_dir_problem") or ""
    found = re.search(r"(\d+) commits failed", problem)
    return int(found.group(1)) if found else 0


def slow_fsync_daemon(make_daemon: Any, flag: Path) -> DaemonProcess:
    """A started daemon each of whose fsyncs waits as many seconds as `flag` says, while that file exists."""
    daemon = make_daemon()
    daemon.env[SLOW_FSYNC_ENV] = str(flag)
    return daemon.start()


def pong_waiting_and_ping_sending(client: Client, pipes: Path, marker: Path) -> tuple[RunHandle, RunHandle]:
    """Submit "pong" (waits for a message, notes it in `marker`) and "ping" (sends it one when told); both run."""
    pong = client.submit(f"{pipes}:pong", {"marker": str(marker)})
    ping = client.submit(f"{pipes}:ping")
    wait_until(lambda: running(client, pong.id) and running(client, ping.id), 30, what="both steps running")
    return pong, ping


def test_a_parked_receive_gets_a_durable_message_while_its_fsync_runs_and_the_sender_after_it(
        make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given a step of "pong" waiting for a message, and a step of "ping" about to send it one, durably
    flag, marker = tmp_path / "slow-fsync", tmp_path / "seen.txt"
    daemon = slow_fsync_daemon(make_daemon, flag)
    with daemon.client(timeout=30) as client:
        pong, ping = pong_waiting_and_ping_sending(client, pipes, marker)
        # When every fsync takes a second (a slow disk) and "ping" sends
        flag.write_text("1.0")
        client.send("ping", "go", durable=False)
        returned = client.wait(ping.id, timeout=60).final_output
        flag.unlink()
        result = client.wait(pong.id, timeout=60)
    # Then "pong" had the message well before the sender's send returned: as soon as it was written, not after the
    # fsync (before, both replies left together after it)
    assert result.final_output["got"] == ["m", "done"]
    assert returned - result.final_output["first"] > 0.5, "the receiver waited for the sender's fsync"


def test_a_message_received_during_its_fsync_survives_a_kill9_then(make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given "pong" waiting, and "ping" sending it a message durably while every fsync takes 10 s
    flag, marker = tmp_path / "slow-fsync", tmp_path / "seen.txt"
    daemon = slow_fsync_daemon(make_daemon, flag)
    with daemon.client(timeout=30) as client:
        pong, ping = pong_waiting_and_ping_sending(client, pipes, marker)
        flag.write_text("10")
        client.send("ping", "go", durable=False)
        # When "pong" has acted on the message (its fsync still running: the sender's send has not returned)
        wait_until(lambda: seen(marker) == ["m"], 8, what="the receiver to get the message during its fsync")
        # And the daemon and its workers are killed -9 then, and started again on a fast disk
        daemon.kill9()
    flag.unlink()
    daemon.start()
    with daemon.client(timeout=30) as client:
        # Then the message was on disk: the sender's re-run sends it again under the same id and it is a
        # duplicate, and the receiver's re-run gets it again (at-least-once), then the rest
        assert client.wait(ping.id, timeout=60).status == "completed"
        assert client.wait(pong.id, timeout=60).final_output["got"] == ["m", "done"]
        assert client.broker_stats().counters["messages_duplicate"] >= 1
    assert seen(marker) == ["m", "m", "done"]


def test_neither_side_hears_of_a_message_the_disk_has_not_taken_not_even_after_a_resend(
        make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given "pong" waiting for a message and "ping" about to send it one durably, on a daemon whose disk then
    # refuses every write (full)
    flag, received, told = tmp_path / "disk-full", tmp_path / "seen.txt", tmp_path / "told.txt"
    daemon = make_daemon()
    daemon.env[DISK_FULL_ENV] = str(flag)
    daemon.start()
    with daemon.client(timeout=30) as client:
        pong = client.submit(f"{pipes}:pong", {"marker": str(received)})
        ping = client.submit(f"{pipes}:ping", {"marker": str(told)})
        wait_until(lambda: running(client, pong.id) and running(client, ping.id), 30, what="both steps running")
        flag.touch()
        # When "ping" sends (a non-durable "go" is answered while the disk is full), and the commit that would
        # write the message fails for more than a second: the workers re-send their unanswered calls every second
        client.send("ping", "go", durable=False)
        wait_until(lambda: failed_commits(client) >= 4, 30, what="commits to fail for over a second")
        # Then the sender's send has not returned and the receiver has not got the message: it was never written
        # (before, a re-sent call was answered from the cache of replies that had not left yet)
        assert (seen(told), seen(received)) == ([], [])
        # And when the daemon is killed -9 now, and started again with a working disk
        daemon.kill9()
    flag.unlink()
    daemon.start()
    with daemon.client(timeout=30) as client:
        client.send("ping", "go")  # the first one was never written either
        # Then the message is sent afresh by the sender's re-run; neither side heard of the lost one
        assert client.wait(ping.id, timeout=60).status == "completed"
        assert client.wait(pong.id, timeout=60).final_output["got"] == ["m", "done"]
    assert (seen(told), seen(received)) == (["sent"], ["m", "done"])
