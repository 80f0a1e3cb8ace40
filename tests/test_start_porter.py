"""The daemon answers pings while it loads, and every other request once it has loaded (issue 17: ready <= 0.15 s).

`tagentd start --foreground` binds control.sock once it holds its lock and knows its settings; a porter thread
answers pings there while the rest is imported and built (tagentd/app/launch.py, tagentd/control/porter.py).
Here a real daemon is held in the middle of that load: a `sitecustomize` on its path makes the import of
`tagentd.app.daemon` (the first thing the load does) wait on a FIFO until the test writes to it, or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from conftest import DaemonProcess, wait_until

from tagent_client.client.sync import Client
from tagent_client.errors import TagentError
from tagent_client.wire import protocol as p
from tagentd.control.porter import Porter, control_socket

pytestmark = pytest.mark.timeout(60)

#: Installed as sitecustomize: the import of HELD waits until a line is written to $HOLD_FIFO ("fail": it raises).
HOLD = '''
import os, sys

HELD = "tagentd.app.daemon"


class Hold:
    def find_spec(self, name, path=None, target=None):
        if name == HELD and os.environ.get("HOLD_FIFO"):
            sys.meta_path.remove(self)
            with open(os.environ["HOLD_FIFO"]) as fifo:  # blocks until the test opens it for writing
                if fifo.read().strip() == "fail":
                    raise ImportError("held import failed on purpose")
        return None


sys.meta_path.insert(0, Hold())
'''


def held_daemon(tmp_path: Path) -> tuple[DaemonProcess, Path, subprocess.Popen[bytes]]:
    """A `tagentd start --foreground` whose import of tagentd.app.daemon waits for a line on the returned FIFO."""
    daemon = DaemonProcess(tmp_path, workers=1)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD)
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    daemon.env["PYTHONPATH"] = os.pathsep.join([str(hooks), daemon.env["PYTHONPATH"]])
    daemon.env["HOLD_FIFO"] = str(fifo)
    daemon.stderr_path = tmp_path / "stderr.txt"
    with open(daemon.stderr_path, "wb") as stderr:  # a file, not a pipe nobody reads while the daemon runs
        proc = subprocess.Popen([sys.executable, "-m", "tagentd", "start", "--foreground", "--workers", "1"],
                                env=daemon.env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    daemon.proc = proc
    return daemon, fifo, proc


def release(fifo: Path, line: str) -> None:
    with open(fifo, "w") as f:
        f.write(line + "\n")


def pings(daemon: DaemonProcess) -> dict[str, object] | None:
    try:
        with Client(runtime_dir=daemon.runtime_dir, timeout=1.0) as client:
            return client.ping()
    except TagentError:
        return None


class Peer:
    """A raw DEALER on control.sock: what it sends on one connection reaches the daemon in that order."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"ipc://{daemon.runtime_dir / 'control.sock'}")

    def send(self, request: p.Request) -> None:
        self.sock.send(p.encode(request))

    def reply(self, timeout_s: float) -> p.Reply | p.ErrorReply:
        assert self.sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s}s"
        return p.decode_reply(self.sock.recv())

    def close(self) -> None:
        self.zctx.destroy(linger=0)


def held_status(daemon: DaemonProcess) -> Peer:
    """A status request the daemon has surely received: a ping sent after it on the same connection was answered."""
    peer = Peer(daemon)
    peer.send(p.DaemonStatus(id=1))
    peer.send(p.Ping(id=2))
    answer = peer.reply(20)
    assert isinstance(answer, p.Reply) and answer.id == 2, answer  # the ping, answered first: the status is held
    return peer


def test_a_ping_is_answered_while_the_daemon_loads_and_other_requests_once_it_has(tmp_path: Path) -> None:
    # Given a daemon whose load is held before its engine, stores and executor are imported
    daemon, fifo, proc = held_daemon(tmp_path)
    try:
        # When a client pings it
        answer = wait_until(lambda: pings(daemon), 20, what="a ping answered while the daemon loads")
        # Then the ping is answered, with this daemon's pid and limits, although the load has not gone on
        assert answer["pid"] == proc.pid and answer["limits"]["max_message_bytes"] > 0
        assert proc.poll() is None
        # And a status request sent meanwhile is held (the ping sent after it is answered before it)
        peer = held_status(daemon)
        # And once the load goes on, it gets the real status: loaded, recovered, durable
        release(fifo, "go")
        status = peer.reply(30)
        peer.close()
        assert isinstance(status, p.Reply) and status.id == 1, status
        assert status.result["pid"] == proc.pid and status.result["durable"] is True
        assert status.result["runtime_dir"] == str(daemon.runtime_dir)
        with Client(runtime_dir=daemon.runtime_dir, timeout=10.0) as client:
            assert client.daemon_status().stats["requests"] >= 4  # the porter's pings are counted too
    finally:
        stop(proc)


def test_a_start_that_fails_after_the_first_answer_answers_the_waiting_requests_with_its_error(tmp_path: Path) -> None:
    # Given a daemon that answers pings while its load is held, and a status request it holds
    daemon, fifo, proc = held_daemon(tmp_path)
    try:
        wait_until(lambda: pings(daemon), 20, what="a ping answered while the daemon loads")
        peer = held_status(daemon)
        # When the load fails
        release(fifo, "fail")
        # Then the held request is answered with the start's error, not left to time out
        error = peer.reply(30)
        peer.close()
        assert isinstance(error, p.ErrorReply) and error.id == 1, error
        assert "held import failed on purpose" in error.message, error
        # And the daemon exits with an error, saying why, leaving no socket file for clients to try
        assert proc.wait(20) != 0
        assert "held import failed on purpose" in daemon.stderr_path.read_text()
        assert not (daemon.runtime_dir / "control.sock").exists()
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_porter_holds_what_it_does_not_answer_in_order_and_lets_go_of_the_socket(tmp_path: Path) -> None:
    # Given a porter on a real control socket, and a client that sends a status request, a ping and a bad frame
    zctx = zmq.Context()
    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    porter = Porter(control_socket(zctx, endpoint, 1 << 20), max_bytes=1 << 20, load_timeout=7.0)
    porter.start()
    client = zctx.socket(zmq.DEALER)
    client.connect(endpoint)
    try:
        client.send(p.encode(p.DaemonStatus(id=1)))
        client.send(p.encode(p.Ping(id=2)))
        client.send(b"not msgpack")
        client.send(p.encode(p.Ping(id=3)))
        # When the pings are answered
        answers = [p.decode_reply(client.recv()) for _ in range(2) if client.poll(10_000)]
        # Then each has this process's pid and the limits given, and nothing else was answered
        assert [a.id for a in answers] == [2, 3]
        assert answers[0].result["pid"] == os.getpid() and answers[0].result["limits"]["load_timeout"] == 7.0
        # And the handover gives the rest, in the order it came, with its sender's credentials
        held = porter.handover()
        assert [frames[1] for frames in held] == [p.encode(p.DaemonStatus(id=1)), b"not msgpack"]
        assert held[0].peer is not None and porter.pings == 2
        # And a failure reported after the handover leaves the socket to its new owner
        porter.fail(RuntimeError("late"))
        assert not porter.sock.closed
        porter.sock.send_multipart([held[0][0], b"still mine"])
        assert client.poll(10_000) and client.recv() == b"still mine"
    finally:
        zctx.destroy(linger=0)
