"""The CLI refuses bad input instead of taking it silently (issue 11, finding 5), against a real daemon.

A JSON argument that is not JSON is a usage error (exit 2) and nothing is sent; `--text` sends
the string on purpose. `tagent send` to a pipeline name nothing has run or registered suggests
the close one and queues nothing, unless `--create` says it is meant.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client.errors import exit_code_for

pytestmark = pytest.mark.timeout(60)

REPORTER = """
from tagent_client import Pipeline

pipeline = Pipeline("reporter")

@pipeline.task(final=True)
def report(ctx):
    return "ok"
"""


def queued(daemon: DaemonProcess, pipeline: str) -> int:
    with daemon.client() as client:
        return sum(box.messages for box in client.mailboxes(pipeline))


@pytest.mark.parametrize("args", [
    ["send", "reporter", "{bad json"],
    ["publish", "news.today", "{bad json"],
    ["space", "put", "notes", "k", "{bad json"],
], ids=["send", "publish", "space put"])
def test_invalid_json_is_a_usage_error_and_nothing_is_sent(daemon: DaemonProcess, args: list[str]) -> None:
    # Given a running daemon / When a command gets an argument that is not JSON
    done = daemon.cli(*args)
    # Then it exits 2 naming the argument and the way out, and nothing reached the daemon
    assert done.returncode == exit_code_for("usage"), done
    assert "'{bad json' is not valid JSON" in done.stderr and "--text" in done.stderr, done.stderr
    assert queued(daemon, "reporter") == 0
    with daemon.client() as client:
        assert client.space("notes").get("k") is None
        assert client.broker_stats().counters.get("events_published", 0) == 0


def test_text_sends_a_plain_string_on_purpose(daemon: DaemonProcess) -> None:
    # Given a running daemon / When the same argument goes with --text
    sent = daemon.cli("send", "reporter", "{bad json", "--text", "--create")
    put = daemon.cli("space", "put", "notes", "k", "{bad json", "--text")
    published = daemon.cli("publish", "news.today", "plain words", "--text")
    # Then each is taken as a string
    assert sent.returncode == 0 and put.returncode == 0 and published.returncode == 0, (sent, put, published)
    with daemon.client() as client:
        [box] = client.mailboxes("reporter", peek=1)
        assert box.peek[0].payload == "{bad json"
        assert client.space("notes").get("k").value == "{bad json"
    # and valid JSON still means JSON
    assert daemon.cli("space", "put", "notes", "n", '{"a": [1, 2]}').returncode == 0
    assert json.loads(daemon.cli("space", "get", "notes", "n", "--json").stdout)["value"] == {"a": [1, 2]}


def test_send_to_an_unknown_pipeline_suggests_the_known_one_and_needs_create(daemon: DaemonProcess,
                                                                             tmp_path: Path) -> None:
    # Given a daemon on which 'reporter' has run
    path = write_pipeline(tmp_path, "reporter.py", REPORTER)
    with daemon.client() as client:
        client.wait(client.submit(path).id, timeout=30)
    # When a message goes to a misspelt name
    typo = daemon.cli("send", "reportr", '{"n": 1}')
    # Then it is refused with the close name, and nothing is queued
    assert typo.returncode == exit_code_for("not_found"), typo
    assert "did you mean 'reporter'?" in typo.stderr and "--create" in typo.stderr, typo.stderr
    assert typo.stderr.count("\n") == 1 and queued(daemon, "reportr") == 0
    # and the known name needs nothing more, while --create queues for the new name on purpose
    assert daemon.cli("send", "reporter", '{"n": 1}').returncode == 0
    created = daemon.cli("send", "reportr", '{"n": 2}', "--create")
    assert created.returncode == 0 and queued(daemon, "reportr") == 1, created
    # after which the name has a mailbox, so the next message needs no --create
    assert daemon.cli("send", "reportr", '{"n": 3}').returncode == 0 and queued(daemon, "reportr") == 2
