"""workers.sock as a framed Unix stream socket (tagentd/plumbing/framed.py): frames arrive whole however the bytes
are split, bad input closes only the connection it came on (counted, logged with the sender's pid), a message for a
gone worker is dropped and counted, and only processes of the daemon's uid are accepted.

Real sockets throughout: a listener and a link on one event loop in this process, and real daemons whose
workers.sock a test connects to as a stranger would. Every wait has a deadline (`wait_until`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from conftest import DaemonProcess, wait_until, write_pipeline

from tagentd.plumbing.framed import MAX_FRAME, FrameListener, FrameReader, frame
from tagentd.plumbing.framed_link import FrameLink

BIG = """
    from tagent_client import Pipeline

    pipeline = Pipeline("big")

    @pipeline.task()
    async def big(ctx):
        return "x" * 3_000_000 + "end"
"""


def test_frames_arrive_whole_however_the_bytes_are_split() -> None:
    # Given three frames (one of them empty) as one byte stream
    payloads = [b"first", b"", b"third" * 100]
    stream = b"".join(frame(p) for p in payloads)
    for cut in range(len(stream) + 1):
        # When the stream is read in two pieces cut anywhere, and then one byte at a time
        reader, out = FrameReader(), []
        reader.feed(stream[:cut], out)
        reader.feed(stream[cut:], out)
        # Then the same frames come out, in order, whole
        assert out == payloads, cut
    reader, out = FrameReader(), []
    for index in range(len(stream)):
        reader.feed(stream[index:index + 1], out)
    assert out == payloads and reader.torn == 0


def test_a_length_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    # Given a reader, when a header announces a frame one byte over MAX_FRAME
    reader, out = FrameReader(), []
    # Then it says so at once, naming the size (it does not wait for, or buffer, a gigabyte)
    with pytest.raises(Exception, match=f"{MAX_FRAME + 1} bytes announced"):
        reader.feed(struct.pack(">I", MAX_FRAME + 1) + b"xy", out)
    # And a ZeroMQ greeting (what a DEALER of an older daemon sends first) is named for what it likely is
    with pytest.raises(Exception, match="ZeroMQ peer"):
        FrameReader().feed(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f", [])


def pair(tmp_path: Path, scenario: Callable[[FrameListener, FrameLink, list, list], object]) -> None:
    """Run `scenario(listener, link, at_daemon, at_worker)` on one loop: a listener at tmp_path/w.sock, a link
    identified as b"w1.t" connected to it; what each side received is appended to its list."""
    async def main() -> None:
        stats: dict[str, int] = {}
        listener = FrameListener(str(tmp_path / "w.sock"), stats)
        at_daemon: list[list[bytes]] = []
        at_worker: list[bytes] = []
        listener.start(at_daemon.extend)
        link = FrameLink(str(tmp_path / "w.sock"), b"w1.t", pack=lambda queued: [b"|".join(m[0] for m in queued)])
        link.start(lambda batch: at_worker.extend(m[0] for m in batch))
        try:
            await scenario(listener, link, at_daemon, at_worker)
        finally:
            link.close()
            listener.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def until(predicate: Callable[[], object], what: str) -> None:
    """Let the loop run until `predicate()` holds (`what`: for the reader; the deadline is the caller's wait_for)."""
    while not predicate():
        await asyncio.sleep(0)  # a loop turn: its I/O runs


def test_megabytes_cross_partial_writes_and_reads_in_order(tmp_path: Path) -> None:
    async def scenario(listener: FrameListener, link: FrameLink, at_daemon: list, at_worker: list) -> None:
        # Given a worker connected to the listener
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB: many times what the socket buffers hold
        # When it sends 4 MiB, then a small message, and the daemon answers with 4 MiB and a small one
        link.send([big], at_once=True)
        link.send([b"after"])
        await until(lambda: len(at_daemon) == 2, "both messages at the daemon")
        assert listener.send_now([b"w1.t", big]) and listener.send_now([b"w1.t", b"reply"])
        await until(lambda: len(at_worker) == 2, "both replies at the worker")
        # Then each arrives whole, in order, with the worker's identity
        assert at_daemon == [[b"w1.t", big], [b"w1.t", b"after"]]
        assert at_worker == [big, b"reply"]

    pair(tmp_path, scenario)


def test_one_turns_messages_leave_as_one_frame(tmp_path: Path) -> None:
    async def scenario(listener: FrameListener, link: FrameLink, at_daemon: list, at_worker: list) -> None:
        # Given a connected worker, when it queues three messages in one loop turn
        await until(lambda: listener.connected == 1, "the worker identified")
        for message in (b"a", b"b", b"c"):
            link.send([message])
        await until(lambda: at_daemon, "a frame at the daemon")
        # Then they leave packed, as one frame
        assert at_daemon == [[b"w1.t", b"a|b|c"]]

    pair(tmp_path, scenario)


def test_a_message_for_a_gone_worker_is_dropped_and_counted(tmp_path: Path) -> None:
    async def scenario(listener: FrameListener, link: FrameLink, at_daemon: list, at_worker: list) -> None:
        # Given a worker that connected and then went away (the daemon has not read its end yet)
        await until(lambda: listener.connected == 1, "the worker identified")
        link.close()
        # When the daemon sends to it, and to an identity that never connected
        gone = listener.send_now([b"w1.t", b"task"])
        listener.send([b"w1.t", b"task"])
        listener.send([b"w9.t", b"task"])
        # Then nothing is delivered: send_now says so, each send is counted as dropped
        assert gone is False
        assert listener.dropped_sends == 2 and listener.connected == 0

    pair(tmp_path, scenario)


def test_a_link_waits_for_the_listener_and_hears_its_end(tmp_path: Path) -> None:
    async def main() -> None:
        # Given a worker started before the daemon listens, with a message queued
        ended: list[str] = []
        link = FrameLink(str(tmp_path / "w.sock"), b"w2.t")
        link.send([b"hello"])
        link.start(lambda batch: None, ended.append)  # its first connect fails here: nothing listens
        # When the daemon starts listening
        got: list[list[bytes]] = []
        listener = FrameListener(str(tmp_path / "w.sock"), {})
        listener.start(got.extend)
        await until(lambda: got, "the queued message")
        # Then the queued message arrives once connected; and when the daemon closes, the link hears it once
        assert got == [[b"w2.t", b"hello"]]
        listener.close()
        await until(lambda: ended, "the link to hear the end")
        assert len(ended) == 1
        link.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def connect(daemon: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(daemon.runtime_dir / "workers.sock"))
    return sock


def closed_by_daemon(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bad_frames_close_only_their_connection_counted_and_logged(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a running daemon with its two workers
    with daemon.client() as client:
        before = client.daemon_status().stats["worker_frames_refused"]
    # When one process announces a frame over the limit, another sends an empty identity, and a ZeroMQ DEALER
    # (a worker of an older tagentd) connects
    oversized = connect(daemon)
    oversized.sendall(frame(b"w5.stranger") + struct.pack(">I", MAX_FRAME + 1))
    no_name = connect(daemon)
    no_name.sendall(frame(b""))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"ipc://{daemon.runtime_dir / 'workers.sock'}")
    dealer.send(b"hello", zmq.NOBLOCK)
    try:
        # Then the daemon closes each of those connections, and counts each
        assert closed_by_daemon(oversized) and closed_by_daemon(no_name)
        with daemon.client() as client:
            wait_until(lambda: client.daemon_status().stats["worker_frames_refused"] >= before + 3, 20,
                       what="three refused connections")
        # And its log says what came from which process, and what to do
        log = daemon.log()
        assert f"closed the connection of pid {os.getpid()}" in log and f"{MAX_FRAME + 1} bytes announced" in log
        assert "ZeroMQ peer" in log and "Stop that process" in log
        # And its own workers still run steps
        with daemon.client() as client:
            result = client.wait(client.submit(write_pipeline(tmp_path, "big.py", BIG)).id, timeout=30)
            assert result.success, result.summary()
    finally:
        oversized.close()
        no_name.close()
        dealer.close()
        ctx.term()


def test_a_step_output_of_megabytes_crosses_the_link_whole(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a step whose output is 3 MB, many times what a Unix socket buffers
    with daemon.client() as client:
        # When it runs on a worker
        result = client.wait(client.submit(write_pipeline(tmp_path, "big.py", BIG)).id, timeout=30)
    # Then its output reaches the run whole
    assert result.success, result.summary()
    out = result.step_outputs["big"]
    assert len(out) == 3_000_003 and out.endswith("end")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_a_process_of_another_uid_is_refused(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon whose runtime dir and workers.sock are opened to everyone (only here: 0700 and 0600 keep other
    # users out before the daemon is asked; this reaches the daemon's own check behind them)
    root = Path(tempfile.mkdtemp(prefix="tagentd-uid-"))  # under /tmp: no private dir above it
    try:
        daemon = make_daemon(root=root).start()
        sock_path = daemon.runtime_dir / "workers.sock"
        for path, mode in ((root, 0o711), (daemon.runtime_dir, 0o711), (sock_path, 0o666)):
            path.chmod(mode)
        # When a process of another uid (nobody) connects and says it is a worker
        probe = ("import os, socket, struct\n"
                 "os.setgid(65534); os.setuid(65534)\n"
                 "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(20)\n"
                 f"s.connect({str(sock_path)!r})\n"
                 "try:\n"
                 "    s.sendall(struct.pack('>I', 4) + b'w1.x'); print('closed' if s.recv(1) == b'' else 'open')\n"
                 "except (BrokenPipeError, ConnectionResetError):\n"
                 "    print('closed')\n")
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
        for path, mode in ((root, 0o700), (daemon.runtime_dir, 0o700), (sock_path, 0o600)):
            path.chmod(mode)
        # Then the daemon closes its connection at once, counts it and logs who it was
        assert done.stdout.strip() == "closed", done.stderr
        with daemon.client() as client:
            assert client.daemon_status().stats["worker_peers_refused"] == 1
        assert "of uid 65534: only processes of uid 0 may join" in daemon.log()
        daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
