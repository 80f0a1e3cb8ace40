"""A message sent while the commit before it is being fsynced is written behind it at once; nobody is told early.

The promise (docs/checkpoints.md, "Pipelined commits"): while a commit that wrote nothing but the broker log
is being fsynced, the messages sent meanwhile are appended behind it and their fsync is queued right behind
its fsync, so a receiver gets them while both fsyncs run; but a durable `send` still returns only once its
own fsync has returned, and when an fsync fails, everything not known to be on disk is written again, in the
order it was sent. Real daemons and workers (conftest `make_daemon`); the slow-fsync and fsync-fails
failpoints (tagentd/storage/failpoints.py) hold a commit between its write and its fsync, and fail one
fsync. Durability is checked by kill -9. Nothing sleeps to wait: tests wait on files and the daemon's answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagentd.storage.failpoints import FSYNC_FAILS_ENV, SLOW_FSYNC_ENV

pytestmark = pytest.mark.timeout(120)

PIPES = """
    import asyncio
    from tagent_client import Pipeline

    def note(ctx, line):                          # what each step did, across crashes
        with open(ctx.params["marker"], "a") as notes:
            notes.write(line + "\\n")

    ping = Pipeline("ping")

    @ping.task(final=True)
    async def serve(ctx):
        await ctx.receive(timeout=60)             # "go", from the test
        await ctx.send("pong", "m")               # durable: its commit's fsync is held
        note(ctx, "ping-sent-m")

    pong = Pipeline("pong")

    @pong.task(final=True)
    async def answer(ctx):
        message = await ctx.receive(timeout=60)   # "m", as soon as it is written
        note(ctx, "pong-got-" + message.payload)
        await ctx.send("pang", "r")               # durable: written behind "m" while m's fsync runs
        note(ctx, "pong-sent-r")

    pang = Pipeline("pang")

    @pang.task()
    async def hear(ctx):
        message = await ctx.receive(timeout=60)   # "r", as soon as it is written
        note(ctx, "pang-got-" + message.payload)

    @pang.task(depends_on=["hear"], final=True)
    async def tell(ctx):                    # runs while the completion of hear is not written yet
        note(ctx, "pang-sending-s")
        await ctx.send("pong", "s")               # follows from that completion: must not be written ahead of it

    writer = Pipeline("writer")

    @writer.task(final=True)
    async def write(ctx):
        await ctx.receive(timeout=60)             # "go"
        async def second():
            await ctx.receive(timeout=60)         # "go2": once "a" is written, its fsync still held
            await ctx.send("reader", "b")
        await asyncio.gather(ctx.send("reader", "a"), second())
        note(ctx, "writer-sent")

    reader = Pipeline("reader")

    @reader.task(final=True)
    async def read(ctx):
        got = []
        while True:
            message = await ctx.receive(timeout=60)
            note(ctx, "reader-got-" + message.payload)
            if message.payload == "end":
                return got
            got.append(message.payload)
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "pipes.py", PIPES)


def notes(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def running(client: Any, *run_ids: str) -> bool:
    return all(any(step.status == "running" for step in client.status(run_id).steps.values()) for run_id in run_ids)


def messages_sent(client: Any) -> int:
    """Messages the daemon took so far, from its metrics (answered at once, not after a commit)."""
    line = next(line for line in client.metrics().splitlines() if line.startswith("tagentd_broker_messages_sent_total"))
    return int(float(line.rsplit(" ", 1)[1]))


def failpoint_daemon(make_daemon: Any, tmp_path: Path) -> tuple[DaemonProcess, Path, Path]:
    """A started daemon with the slow-fsync and the fsync-fails failpoints (both off until their flag files exist)."""
    slow, fails = tmp_path / "slow-fsync", tmp_path / "fsync-fails"
    daemon = make_daemon()
    daemon.env[SLOW_FSYNC_ENV] = str(slow)
    daemon.env[FSYNC_FAILS_ENV] = str(fails)
    return daemon.start(), slow, fails


def test_a_message_sent_during_the_fsync_before_it_is_written_at_once_and_its_sender_told_only_after_its_own(
        make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given "pong" and "pang" waiting for a message, and "ping" about to send "pong" one, durably
    daemon, slow, _ = failpoint_daemon(make_daemon, tmp_path)
    marker = tmp_path / "notes.txt"
    with daemon.client(timeout=30) as client:
        runs = [client.submit(f"{pipes}:{name}", {"marker": str(marker)}) for name in ("pang", "pong", "ping")]
        wait_until(lambda: running(client, *(run.id for run in runs)), 30, what="the three steps running")
        # When every fsync takes 10 s (a slow disk) and "ping" sends "m": "pong" gets it once it is written and
        # answers "pang" with "r" while m's commit is still being fsynced
        slow.write_text("10")
        client.send("ping", "go", durable=False)
        # Then "r" is written at once, behind "m", without waiting for m's commit to end: "pang" gets it while the
        # fsync of "m" still runs (before, "r" waited for the next commit, after that fsync)
        wait_until(lambda: "pang-got-r" in notes(marker), 8, what="the receiver of r to get it during m's fsync")
        # And neither sender has been told: each send returns only once its own fsync has returned
        assert notes(marker)[:2] == ["pong-got-m", "pang-got-r"]
        # When "hear" has ended and "tell", dispatched before hear's completion is written (its commit waits for m's
        # fsync), has sent "s": the daemon has it (go, m, r and s were sent)
        wait_until(lambda: messages_sent(client) == 4, 8, what="the daemon to have s")
        assert notes(marker) == ["pong-got-m", "pang-got-r", "pang-sending-s"]
        # When the daemon and its workers are killed -9 now, and started again on a fast disk
        daemon.kill9()
    slow.unlink()
    daemon.start()
    with daemon.client(timeout=30) as client:
        # Then "m" and "r" were in the log: the senders' re-runs send them again under the same ids, and both are
        # dropped as duplicates; the receivers get them again (at-least-once). "s" was not: it was not written ahead
        # of the completion it follows from, which was not on disk (no log holds a consequence without its cause)
        for run in runs:
            assert client.wait(run.id, timeout=60).status == "completed"
        assert client.broker_stats().counters["messages_duplicate"] == 2
    assert sorted(notes(marker)) == sorted(["pong-got-m", "pang-got-r", "pang-sending-s", "pang-got-r", "pang-sending-s",
                                            "pong-got-m", "pong-sent-r", "ping-sent-m"])


def test_when_the_fsync_before_a_message_written_behind_it_fails_both_are_written_again_in_order(
        make_daemon: Any, pipes: Path, tmp_path: Path) -> None:
    # Given "writer" about to send "reader" "a" and then, while a's fsync is held, "b" (one step, in call order)
    daemon, slow, fails = failpoint_daemon(make_daemon, tmp_path)
    marker = tmp_path / "notes.txt"
    with daemon.client(timeout=30) as client:
        reader = client.submit(f"{pipes}:reader", {"marker": str(marker)})
        writer = client.submit(f"{pipes}:writer", {"marker": str(marker)})
        wait_until(lambda: running(client, reader.id, writer.id), 30, what="both steps running")
        # When every fsync takes 2 s, "a" is sent, and once it is written (the reader has it) "b" is sent, written
        # behind it while a's fsync runs; and that fsync fails (an I/O error, reported once)
        slow.write_text("2")
        fails.touch()
        client.send("writer", "go", durable=False)
        wait_until(lambda: "reader-got-a" in notes(marker), 8, what="the reader to get a during its fsync")
        client.send("writer", "go2", durable=False)
        wait_until(lambda: "reader-got-b" in notes(marker), 8, what="the reader to get b during a's fsync")
        assert "writer-sent" not in notes(marker)
        wait_until(lambda: not fails.exists(), 8, what="a's fsync to fail")
        slow.unlink()
        # Then the writer is told only once both are written again and fsynced
        wait_until(lambda: "writer-sent" in notes(marker), 30, what="the writer's sends to return")
        # And when everything is killed -9 then and started again
        daemon.kill9()
    daemon.start()
    with daemon.client(timeout=30) as client:
        # Then the reader's mailbox holds both, once each, in the order they were sent: the message written behind
        # the failed fsync was neither lost nor written again ahead of the one it followed
        wait_until(lambda: client.status(reader.id).status == "running", 30, what="the reader to run again")
        client.send("reader", "end")
        assert client.wait(reader.id, timeout=60).final_output == ["a", "b"]
        assert client.wait(writer.id, timeout=60).status == "completed"
