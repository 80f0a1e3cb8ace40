"""The control socket under hostile input: a real tagentd fed malformed, oversized and random frames.

A raw ZeroMQ DEALER (no Client, no protocol helpers on the sending side) talks to
control.sock. Whatever it sends, the daemon answers with an ErrorReply (code
"protocol") or drops the message, counts it (`bad_frames`), and keeps serving.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import DaemonProcess, processes_using, wait_until, write_pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagent_client.wire import protocol
from tagent_client.wire.paths import CONTROL_SOCKET

pytestmark = pytest.mark.timeout(120)

MAX_MESSAGE_BYTES = 65536
REPLY_WAIT = 5.0


class RawPeer:
    """A bare DEALER on control.sock: sends any frames, reads one reply (or none)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{runtime_dir / CONTROL_SOCKET}")

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def reply(self, timeout: float = REPLY_WAIT) -> protocol.Reply | protocol.ErrorReply | None:
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) == 1, f"a reply of {len(frames)} frames"
        return protocol.decode_reply(frames[0])

    def ask(self, frames: list[bytes], timeout: float = REPLY_WAIT) -> protocol.Reply | protocol.ErrorReply:
        self.send(frames)
        answer = self.reply(timeout)
        assert answer is not None, f"no reply within {timeout}s to {frames!r:.200}"
        return answer

    def ping(self, request_id: int = 4242) -> dict[str, Any]:
        answer = self.ask([protocol.encode(protocol.Ping(id=request_id))])
        assert isinstance(answer, protocol.Reply) and answer.id == request_id, answer
        return answer.result

    def close(self) -> None:
        self.sock.close(linger=0)


def packed(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for this module, with a 64 KiB message limit (each test leaves it serving)."""
    root = tmp_path_factory.mktemp("fuzz")
    root.chmod(0o700)
    proc = DaemonProcess(root, workers=1)
    proc.env["TAGENTD_MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)
    proc.start()
    yield proc
    proc.stop()
    wait_until(lambda: not processes_using(root), 10, what="the daemon and its workers to exit")


@pytest.fixture
def peer(daemon: DaemonProcess) -> Iterator[RawPeer]:
    raw = RawPeer(daemon.runtime_dir)
    yield raw
    raw.close()


def bad_frames(daemon: DaemonProcess) -> int:
    with daemon.client() as client:
        return client.daemon_status().stats["bad_frames"]


MALFORMED: dict[str, tuple[list[bytes], int, str]] = {
    # name: (frames, the id the ErrorReply must carry, words its message must contain)
    "two frames": ([packed({"type": "ping", "v": 1, "id": 3}), b"extra"], 0, "expected 1 frame"),
    "three empty frames": ([b"", b"", b""], 0, "expected 1 frame"),
    "one empty frame": ([b""], 0, "not msgpack"),
    "garbage bytes": ([b"\xc1\xff\x00 this is not msgpack"], 0, "not msgpack"),
    "truncated msgpack": ([packed({"type": "ping", "v": 1, "id": 5})[:-3]], 0, "not msgpack"),
    "an array, not a map": ([packed([1, 2, 3])], 0, "invalid request"),
    "no type": ([packed({"v": 1, "id": 6})], 6, "invalid request"),
    "unknown type": ([packed({"type": "explode", "v": 1, "id": 7})], 7, "invalid request"),
    "a reply sent as a request": ([packed({"type": "reply", "v": 1, "id": 8})], 8, "invalid request"),
    "run_id of the wrong type": ([packed({"type": "status", "v": 1, "id": 9, "run_id": 42})], 9, "run_id"),
    "limit of the wrong type": ([packed({"type": "runs", "v": 1, "id": 10, "limit": "many"})], 10, "limit"),
    "missing required field": ([packed({"type": "cancel", "v": 1, "id": 11})], 11, "run_id"),
    "id of the wrong type": ([packed({"type": "ping", "v": 1, "id": "twelve"})], 0, "id"),
    "wrong protocol version": ([packed({"type": "ping", "v": 99, "id": 13})], 13, "protocol version 99"),
    "version of the wrong type": ([packed({"type": "ping", "v": "1", "id": 14})], 14, "v"),
    "largest msgpack id": ([packed({"type": "nope", "id": 2**64 - 1})], 2**64 - 1, "invalid request"),
    "a string that is not UTF-8": ([b"\x83\xa4type\xa4p\xffng\xa1v\x01\xa2id\x0f"], 0, "not UTF-8"),
    "a field value that is not UTF-8": ([b"\x84\xa4type\xa6status\xa1v\x01\xa2id\x10\xa6run_id\xa2\xff\xfe"], 0,
                                        "not UTF-8"),
    "deeply nested": ([b"\x81\xa4type" + b"\x91" * 50_000 + b"\xc0"], 0, "invalid request"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_a_protocol_error_and_the_daemon_keeps_serving(
        case: str, daemon: DaemonProcess, peer: RawPeer) -> None:
    # Given a daemon that has counted some bad frames already
    frames, expected_id, words = MALFORMED[case]
    before = bad_frames(daemon)

    # When a malformed request is sent
    answer = peer.ask(frames)

    # Then it gets one ErrorReply with code "protocol", the request's id if readable, and a reason
    assert isinstance(answer, protocol.ErrorReply), answer
    assert answer.code == "protocol" and answer.id == expected_id, answer
    assert words in answer.message and "\n" not in answer.message, answer.message
    # And it is counted, and the same connection is still served
    assert bad_frames(daemon) == before + 1
    assert peer.ping()["protocol"] == protocol.PROTOCOL_VERSION


def daemon_stats(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as client:
        return client.daemon_status().stats


def test_an_oversized_request_is_refused_with_an_answer_and_counted(daemon: DaemonProcess, peer: RawPeer) -> None:
    # Given a request of 100 KB, over the daemon's 64 KiB limit
    huge = packed({"type": "ping", "v": 1, "id": 77, "pad": "x" * 100_000})
    assert len(huge) > MAX_MESSAGE_BYTES
    before = daemon_stats(daemon)["requests_too_large"]

    # When it is sent
    answer = peer.ask([huge])

    # Then it is answered at once with request_too_large (size, limit, what to do), and counted
    assert isinstance(answer, protocol.ErrorReply) and answer.code == "request_too_large" and answer.id == 77, answer
    assert answer.details["size"] == len(huge) and answer.details["limit"] == MAX_MESSAGE_BYTES, answer.details
    assert "file path" in answer.message and "\n" not in answer.message, answer.message
    assert daemon_stats(daemon)["requests_too_large"] == before + 1
    # And the same connection is still served, and a request just under the limit still works
    near = packed({"type": "ping", "v": 1, "id": 78, "pad": "x" * (MAX_MESSAGE_BYTES - 100)})
    assert len(near) <= MAX_MESSAGE_BYTES
    answer = peer.ask([near])
    assert isinstance(answer, protocol.Reply) and answer.id == 78


def test_a_frame_over_the_transport_ceiling_is_discarded_and_the_daemon_keeps_serving(
        daemon: DaemonProcess, peer: RawPeer) -> None:
    # Given a frame of 300 KB, over twice the 64 KiB limit (ZeroMQ's MAXMSGSIZE on control.sock)
    giant = packed({"type": "ping", "v": 1, "id": 79, "pad": "x" * 300_000})

    # When it is sent
    peer.send([giant])

    # Then ZeroMQ discards it (and the connection) before the daemon sees it: no answer
    assert peer.reply(timeout=1.0) is None
    # And the daemon serves a new connection
    fresh = RawPeer(daemon.runtime_dir)
    try:
        assert fresh.ping()["pid"] == daemon.pid
    finally:
        fresh.close()


def test_long_polls_with_odd_wait_values_answer_promptly(daemon: DaemonProcess, peer: RawPeer, tmp_path: Path) -> None:
    # Given a run that is still running (its step sleeps for a minute)
    path = write_pipeline(tmp_path, "nap.py", """
        import asyncio
        from tagent_client import Pipeline
        pipeline = Pipeline("nap")

        @pipeline.task(max_retries=0)
        async def nap(ctx):
            await asyncio.sleep(60)  # ok-sleep: the step's own work (or a yield), not a wait for something
    """)
    with daemon.client() as client:
        run_id = client.submit(path).id
        try:
            for request_id, wait in enumerate([math.nan, -math.inf, -1.0, 0.0], start=100):
                for kind in ("events", "logs"):
                    # When its events or logs after the last one are asked for with a `wait` that means "don't wait"
                    began = time.monotonic()
                    answer = peer.ask([packed({"type": kind, "v": 1, "id": request_id, "run_id": run_id,
                                               "after": 10**9, "wait": wait})], timeout=REPLY_WAIT)

                    # Then the daemon answers at once, with nothing new and the run not finished
                    assert isinstance(answer, protocol.Reply) and answer.id == request_id, answer
                    assert answer.result["finished"] is False, (kind, wait, answer)
                    assert time.monotonic() - began < 2.0, (kind, wait)
        finally:
            client.cancel(run_id)
            client.wait(run_id, timeout=10)
    assert peer.ping()


# -- random input ---------------------------------------------------------------------------------------------

SAFE_TYPES = ["ping", "runs", "status", "result", "cancel", "resume", "retry", "events", "logs", "history",
              "daemon_status", "gc", "reply", "error", "", "PING", "sub mit"]
FIELDS = ["type", "v", "id", "pid", "uid", "run_id", "limit", "status", "after", "wait", "step", "reason",
          "graceful", "max_runs", "dry_run"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(SAFE_TYPES) | st.text(max_size=12).filter(lambda t: t not in ("shutdown", "submit"))},
    optional={"v": st.sampled_from([1, 0, 2, -1]) | values, "id": st.integers(min_value=0, max_value=2**32) | values},
).flatmap(lambda base: st.dictionaries(st.sampled_from(FIELDS[3:]) | st.text(max_size=8), values, max_size=5)
          .map(lambda extra: {**extra, **base}))
VALID_BASES = [packed({"type": kind, "v": 1, "id": 1, "run_id": "abcdef"}) for kind in ("ping", "status", "runs", "history")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few bytes overwritten, cut short or extended."""
    data = bytearray(draw(st.sampled_from(VALID_BASES)))
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=4))


frames_strategy = st.one_of(
    requests.map(lambda r: [packed(r)]),
    mutated().map(lambda b: [b]),
    st.binary(max_size=512).map(lambda b: [b]),
    st.lists(st.binary(max_size=64), min_size=2, max_size=4),
    st.lists(requests.map(packed), min_size=2, max_size=3),
)


def test_three_hundred_random_frames_never_break_the_daemon(daemon: DaemonProcess, peer: RawPeer) -> None:
    # Given a daemon and its bad-frame count
    before = bad_frames(daemon)
    seen: Counter[str] = Counter()

    # When ~300 random frames (requests of random shape, mutated requests, garbage, multi-frame) are sent
    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(frames=frames_strategy)
    def exchange(frames: list[bytes]) -> None:
        answer = peer.ask(frames)
        # Then each gets exactly one answer: a protocol error, or (for a well-formed request) a reply or another error
        seen["sent"] += 1
        if isinstance(answer, protocol.ErrorReply):
            seen[answer.code] += 1
            assert answer.code in ("protocol", "not_found", "invalid_request"), answer
            assert answer.message and "\n" not in answer.message
        else:
            seen["reply"] += 1
        if len(frames) != 1:
            assert isinstance(answer, protocol.ErrorReply) and answer.code == "protocol"

    exchange()

    # And afterwards the daemon still answers a valid ping, on the same connection and on a new one
    assert seen["sent"] >= 300 and seen["protocol"] > 100, seen
    assert peer.ping()["pid"] == daemon.pid
    with daemon.client() as client:
        assert client.ping()["pid"] == daemon.pid
    # And `tagentd status --json` counted every frame it refused
    status = daemon.admin("status", "--json")
    assert status.returncode == 0, status.stderr
    stats = msgspec.json.decode(status.stdout)["stats"]
    assert stats["bad_frames"] == before + seen["protocol"], (stats, seen)
    assert daemon.proc is not None and daemon.proc.poll() is None
