"""Requests that break a bound fail at once with a clear error, on the client and on the daemon.

Size (max_message_bytes, 16 MiB by default), name length (200 characters) and
nesting (100 levels): the client refuses before sending; the daemon answers a
raw frame that breaks one with an ErrorReply (and counts oversized ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import DaemonProcess, write_pipeline

from tagent_client import Pipeline
from tagent_client.bounds import NAME_MAX
from tagent_client.client.sync import Client
from tagent_client.errors import InvalidRequest, NameTooLong, PipelineValidationError, RequestTooLarge, exit_code_for
from tagent_client.wire import protocol
from tagent_client.wire.paths import CONTROL_SOCKET

MIB = 1024 * 1024
LONG = "x" * 100_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with the default limits for this module."""
    root = tmp_path_factory.mktemp("bounds")
    root.chmod(0o700)
    proc = DaemonProcess(root, workers=1).start()
    yield proc
    proc.stop()


@pytest.fixture
def raw(daemon: DaemonProcess) -> Iterator[Callable[[Any], protocol.AnyReply]]:
    """ask(fields or frame): send one raw request (fields are msgpacked with v=1, id=31) on a bare DEALER."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{daemon.runtime_dir / CONTROL_SOCKET}")

    def ask(request: dict[str, Any] | bytes) -> protocol.AnyReply:
        sock.send(request if isinstance(request, bytes) else msgspec.msgpack.encode({"v": 1, "id": 31, **request}))
        assert sock.poll(10_000, zmq.POLLIN), f"no reply to {str(request)[:200]}"
        return protocol.decode_reply(sock.recv())

    yield ask
    sock.close(linger=0)


def stats(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as client:
        return client.daemon_status().stats


# -- size ----------------------------------------------------------------------------------------------


def test_a_17_mib_request_fails_at_once_with_request_too_large(daemon: DaemonProcess) -> None:
    # Given a client of a daemon with the default 16 MiB limit
    with Client(daemon.runtime_dir, timeout=5.0) as client:
        # When it sends a 17 MiB message
        began = time.monotonic()
        with pytest.raises(RequestTooLarge) as refused:
            client.send("inbox", "x" * (17 * MIB))
        took = time.monotonic() - began

    # Then it is refused at once, saying the size, the limit and what to do instead, on one line
    assert took < 0.5, f"took {took:.2f}s"
    error = refused.value
    assert error.details["size"] > 17 * MIB and error.details["limit"] == 16 * MIB
    assert "'send' request" in error.message and "file path" in error.message and "\n" not in error.message
    assert exit_code_for(error.code) == 13


def test_a_raw_17_mib_frame_gets_request_too_large_and_is_counted(
        daemon: DaemonProcess, raw: Callable[[Any], protocol.AnyReply]) -> None:
    # Given the daemon's count of oversized requests
    before = stats(daemon)["requests_too_large"]

    # When a raw 17 MiB request arrives (a client that does not check the limit)
    answer = raw({"type": "ping", "pad": "x" * (17 * MIB)})

    # Then it is answered with request_too_large, and counted
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "request_too_large" and answer.id == 31, answer
    assert stats(daemon)["requests_too_large"] == before + 1


# -- names ---------------------------------------------------------------------------------------------


def test_a_100000_character_pipeline_name_is_refused_by_validation_with_a_short_message() -> None:
    # Given a pipeline (and a step) named with 100,000 characters
    pipeline = Pipeline(LONG)
    pipeline.step("s" * 100_000, goal="say hi")

    # When it is validated
    with pytest.raises(PipelineValidationError) as invalid:
        pipeline.validate()

    # Then both names are refused as too long, each in a short line that does not repeat the name
    problems = invalid.value.problems
    assert any(p.startswith("pipeline name") and f"at most {NAME_MAX} characters" in p for p in problems), problems
    assert any(p.startswith("step") and "too long" in p for p in problems), problems
    assert all(len(p) < 200 for p in problems) and len(str(invalid.value)) < 600


def test_a_100000_character_name_is_refused_by_the_client_before_sending(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        # When a client uses a 100,000-character mailbox, topic, space or key name
        for attempt in (lambda: client.send(LONG, "hi"), lambda: client.publish(LONG),
                        lambda: client.space(LONG).put("k", 1), lambda: client.space("s").get(LONG)):
            began = time.monotonic()
            with pytest.raises(NameTooLong) as refused:
                attempt()
            # Then it fails at once with a short, one-line error
            assert time.monotonic() - began < 0.5
            assert f"over the limit of {NAME_MAX}" in refused.value.message and len(refused.value.message) < 200


@pytest.mark.parametrize("fields", [
    {"type": "send", "to": LONG, "payload": 1},
    {"type": "space_put", "space": "s", "key": LONG, "value": 1},
    {"type": "publish", "topic": LONG},
    {"type": "status", "run_id": LONG},
    {"type": "submit", "path": "/x.py", "source": "", "target": LONG},
])
def test_a_100000_character_name_in_a_raw_request_is_refused_by_the_daemon(
        fields: dict[str, Any], raw: Callable[[Any], protocol.AnyReply]) -> None:
    # When a raw request carries a 100,000-character name
    answer = raw(fields)

    # Then the daemon answers name_too_long, in one short line
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "name_too_long", answer
    assert answer.id == 31 and len(answer.message) < 200 and "\n" not in answer.message, answer.message


def test_submitting_a_pipeline_with_a_100000_character_name_is_refused_in_one_short_line(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline file whose pipeline has a 100,000-character name
    path = write_pipeline(tmp_path, "long.py", f"""
        from tagent_client import Pipeline
        pipeline = Pipeline("{LONG}")

        @pipeline.task
        def only():
            return 1
    """)

    # When it is submitted
    done = daemon.cli("submit", str(path))

    # Then the daemon refuses it as an invalid pipeline, in one short line, and starts nothing
    assert done.returncode == exit_code_for("invalid_pipeline"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and len(done.stderr) < 600, done.stderr[:600]
    assert "too long" in done.stderr
    with daemon.client() as client:
        assert client.runs() == []


# -- nesting ---------------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [2000, 500])
def test_deeply_nested_params_json_gives_a_one_line_usage_error(daemon: DaemonProcess, tmp_path: Path,
                                                                 depth: int) -> None:
    # When `tagent submit --params-json` gets an object nested `depth` levels deep
    done = daemon.cli("submit", str(tmp_path / "any.py"), "--params-json", nested(depth))

    # Then it exits with the usage status and one error line naming the option and the limit; no traceback
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "--params-json" in line]
    assert len(errors) == 1 and "100 levels deep" in errors[0], done.stderr


def test_deeply_nested_data_is_refused_by_the_client_and_by_the_daemon(
        daemon: DaemonProcess, tmp_path: Path, raw: Callable[[Any], protocol.AnyReply]) -> None:
    # Given data nested 150 levels deep (over the limit of 100, but decodable) and a pipeline file
    too_deep: Any = []
    for _ in range(150):
        too_deep = [too_deep]
    path = write_pipeline(tmp_path, "quick.py", """
        from tagent_client import Pipeline
        pipeline = Pipeline("quick")

        @pipeline.task
        def only():
            return 1
    """)
    with daemon.client() as client:
        # When a client submits it as params, or sends it as a payload
        for attempt in (lambda: client.submit(path, {"a": too_deep}), lambda: client.send("inbox", too_deep)):
            # Then it is refused at once, in one line
            with pytest.raises(InvalidRequest, match="nested more than 100 levels deep"):
                attempt()

    # When a raw request carries it
    answer = raw({"type": "send", "to": "inbox", "payload": too_deep})
    # Then the daemon refuses it too
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "invalid_request", answer
    assert "nested more than 100 levels deep" in answer.message

    # When a raw request is nested 5,000 levels deep (too deep to decode at all)
    answer = raw(b"\x85\xa4type\xa4send\xa1v\x01\xa2id\x1f\xa2to\xa5inbox\xa7payload" + b"\x91" * 5000 + b"\xc0")
    # Then it still gets its one reply: a protocol error
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "protocol", answer
    assert "nested too deeply" in answer.message
    with daemon.client() as client:
        assert client.mailboxes("inbox") == []
