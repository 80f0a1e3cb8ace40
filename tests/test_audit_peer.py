"""The audit trail names a request's sender as the OS saw it; what the client claims is marked "reported".

A real daemon reads the connecting process's uid and pid from the ipc socket
(SO_PEERCRED, through ZeroMQ's "Peer-Address"); the request's own uid/pid
fields are only the client's word.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec
import pytest
import zmq
from conftest import DaemonProcess, write_pipeline

from tagent_client.wire import protocol
from tagent_client.wire.paths import CONTROL_SOCKET

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED with a pid is Linux's")

ME = f"uid={os.getuid()} pid={os.getpid()}"


def quick(directory: Path) -> Path:
    return write_pipeline(directory, "quick.py", """
        from tagent_client import Pipeline
        pipeline = Pipeline("quick")

        @pipeline.task
        def only():
            return 1
    """)


def spoofed(daemon: DaemonProcess, fields: dict[str, object]) -> protocol.Reply:
    """Send one request that claims uid 4242 and pid 1 on a bare DEALER; return its (successful) reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{daemon.runtime_dir / CONTROL_SOCKET}")
        sock.send(msgspec.msgpack.encode({"v": 1, "id": 7, "uid": 4242, "pid": 1, **fields}))
        assert sock.poll(30_000, zmq.POLLIN), "no reply"
        reply = protocol.decode_reply(sock.recv())
    finally:
        sock.close(linger=0)
    assert isinstance(reply, protocol.Reply), reply
    return reply


def test_the_audit_trail_records_the_os_verified_sender_and_marks_the_claimed_one_reported(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    path = quick(tmp_path)
    # Given a run submitted by a request that claims to come from uid 4242, pid 1
    run_id = spoofed(daemon, {"type": "submit", "path": str(path), "source": path.read_text()}).result["run_id"]
    # And a run submitted by an honest client of this process
    with daemon.client() as client:
        honest_id = client.submit(path).id

        # When their histories are read
        spoofed_submit = next(e for e in client.history(run_id) if e["what"] == "submit")
        honest_submit = next(e for e in client.history(honest_id) if e["what"] == "submit")

    # Then the sender is the one the OS saw (this process), and the claim is recorded as reported
    assert spoofed_submit["who"] == f"{ME} (reported uid=4242 pid=1)"
    # And an honest client's entry says just who it is
    assert honest_submit["who"] == ME


def test_a_space_write_is_logged_with_the_os_verified_sender(daemon: DaemonProcess) -> None:
    # Given a space write by a request that claims uid 4242, pid 1
    spoofed(daemon, {"type": "space_put", "space": "notes", "key": "k", "value": 1})

    # When the space's access log is read
    with daemon.client() as client:
        entries = client.space("notes").log()

    # Then the write names this process as the OS saw it, and the claim as reported, in the same words as a
    # run's history (docs/protocol.md, "Who sent it")
    assert [e.who for e in entries if e.op == "put"] == [f"{ME} (reported uid=4242 pid=1)"]
