"""Poison messages end in their mailbox's dead letters; requeue and drop; durable across kill -9.

Real daemons and workers (conftest `make_daemon`). The step `handle` of pipeline
`inbox` takes messages one by one and fails (retryably) on any message whose
payload says `poison` and whose id is not listed in the `cured` file; every
message it handles is appended to an effects file, so what was delivered is
counted outside the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client.errors import NotFound, exit_code_for

pytestmark = pytest.mark.timeout(120)

PIPELINE = """
    import os
    from pathlib import Path

    from tagent_client import Pipeline, RetryableError

    inbox = Pipeline("inbox")

    @inbox.task(final=True, max_retries=12, retry_delay=0.01)
    async def handle(ctx):
        cured = Path(ctx.params["cured"]).read_text().split() if Path(ctx.params["cured"]).exists() else []
        while (message := await ctx.receive(timeout=0)) is not None:
            if message.payload.get("poison") and message.id not in cured:
                raise RetryableError(f"cannot digest {message.id}")
            with open(ctx.params["effects"], "a") as effects:
                effects.write(message.id + "\\n")
            await ctx.ack(message)
        return {"attempt": ctx.attempt}
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"pipeline": write_pipeline(tmp_path, "inbox.py", PIPELINE), "effects": tmp_path / "effects.txt",
            "cured": tmp_path / "cured.txt"}


def handle_all(daemon: DaemonProcess, files: dict[str, Path]) -> dict[str, Any]:
    """Run `inbox` once until its mailbox is empty (or it fails); returns its final output."""
    with daemon.client() as client:
        run = client.submit(files["pipeline"], {"effects": str(files["effects"]), "cured": str(files["cured"])})
        result = client.wait(run.id, timeout=60)
    assert result.status == "completed", result.error
    return result.final_output


def handled(files: dict[str, Path]) -> list[str]:
    return files["effects"].read_text().split() if files["effects"].exists() else []


def test_a_poison_message_becomes_a_dead_letter_and_the_messages_behind_it_are_delivered(
        daemon: DaemonProcess, files: dict[str, Path]) -> None:
    # Given a poison message ahead of three good ones in pipeline inbox's mailbox (default max_deliveries: 5)
    with daemon.client() as client:
        client.send("inbox", {"poison": True}, id="poison")
        for n in range(3):
            client.send("inbox", {"n": n}, id=f"good-{n}")
    # When a run of inbox handles them, failing on the poison every time (and being retried)
    output = handle_all(daemon, files)
    # Then the poison failed 5 deliveries and is now a dead letter with the last error; the sixth attempt
    # handled the good messages, once each
    assert output == {"attempt": 6}
    assert handled(files) == ["good-0", "good-1", "good-2"]
    with daemon.client() as client:
        [letter] = client.dead_letters("inbox")
        assert (letter.message.id, letter.message.failures, letter.message.payload) == ("poison", 5, {"poison": True})
        assert letter.error == "RetryableError: cannot digest poison"
        [box] = client.mailboxes("inbox")
        assert (box.messages, box.leased, box.dead, box.max_deliveries) == (0, 0, 1, 5)
    # And the CLI shows it, with the error
    shown = daemon.cli("mailbox", "dead", "inbox")
    assert shown.returncode == 0, shown.stderr
    assert "poison" in shown.stdout and "RetryableError: cannot digest poison" in shown.stdout
    listed = daemon.cli("mailbox", "ls", "--json")
    assert [(m["name"], m["messages"], m["dead"]) for m in json.loads(listed.stdout)] == [("inbox", 0, 1)]


def test_dead_letters_survive_kill_9_and_are_requeued_and_dropped_from_the_cli_and_the_client(
        make_daemon: Callable[..., DaemonProcess], files: dict[str, Path], tmp_path: Path) -> None:
    # Given [mailboxes.inbox] max_deliveries = 2, and two poison messages that became dead letters
    config = tmp_path / "config" / "tagentd"
    config.mkdir(parents=True)
    (config / "tagentd.toml").write_text("[mailboxes.inbox]\nmax_deliveries = 2\n")
    daemon = make_daemon().start()
    with daemon.client() as client:
        client.send("inbox", {"poison": True}, id="p1")
        client.send("inbox", {"poison": True}, id="p2")
        client.send("inbox", {"n": 1}, id="good")
    assert handle_all(daemon, files) == {"attempt": 5}
    assert handled(files) == ["good"]
    # When everything is killed -9 and the daemon started again
    daemon.kill9()
    daemon = make_daemon(root=daemon.root).start()
    # Then both dead letters are still there, with their counts and errors
    with daemon.client() as client:
        letters = client.dead_letters("inbox")
    assert [(d.message.id, d.message.failures, d.error) for d in letters] == [
        ("p1", 2, "RetryableError: cannot digest p1"), ("p2", 2, "RetryableError: cannot digest p2")]

    # When p1 is requeued with the CLI and p2 dropped with the Client
    requeued = daemon.cli("mailbox", "requeue", "inbox", "p1")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == "mailbox inbox: requeued 1 message(s): p1"
    with daemon.client() as client:
        assert client.drop_dead("inbox", "p2") == ["p2"]
        # Then an unknown id is refused in one line, from the Client and the CLI, and nothing changes
        with pytest.raises(NotFound, match="mailbox 'inbox' has no dead letter 'p2'"):
            client.requeue_dead("inbox", "p2")
    dropped = daemon.cli("mailbox", "drop", "inbox", "nope")
    assert dropped.returncode == exit_code_for(NotFound.code)
    assert dropped.stderr.strip() == ("tagent: mailbox 'inbox' has no dead letter 'nope' (dead letters: none); "
                                      "list them with 'tagent mailbox dead inbox'")
    # And this survives kill -9 too: p1 waits in the mailbox, p2 is gone, nothing is dead
    daemon.kill9()
    daemon = make_daemon(root=daemon.root).start()
    with daemon.client() as client:
        [box] = client.mailboxes("inbox", peek=5)
        assert ([m.id for m in box.peek], box.dead) == (["p1"], 0)
        assert client.send("inbox", {"poison": True}, id="p2") == "p2"  # a dropped id stays a duplicate
        assert client.mailboxes("inbox")[0].messages == 1
    # And once its handler is fixed, the requeued message is delivered and handled
    files["cured"].write_text("p1\n")
    assert handle_all(daemon, files) == {"attempt": 1}
    assert handled(files) == ["good", "p1"]
