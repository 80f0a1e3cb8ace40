"""The CURVE worker link: workers joining the daemon over tcp, encrypted and with keys only the daemon issues.

End to end with real daemons and worker processes (conftest `make_daemon`): `local_workers_via_curve` makes the
daemon's own workers join over `worker_listen` exactly as a worker on another machine would, so everything a
step does crosses the tcp link. The gate's keys (issue, revoke) are tested on real sockets in this process.
Nothing sleeps to wait: tests wait on runs, on the log, or on counters with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import DaemonProcess, wait_until, write_pipeline
from tcp_recorder import TcpRecorder

from tagent_client.errors import ConfigError, exit_code_for
from tagentd.executor.curve import CurveGate
from tagentd.plumbing.channel import Channel
from tagentd.plumbing.worker_sockets import WorkerSockets
from tagentd.settings.config import load_settings
from tagentd.worker import wire
from tagentd.worker.credentials import CURVE_ENV, WorkerCredentials
from tagentd.worker.remote import curve_args, run_in_process

pytestmark = pytest.mark.timeout(90)

SECRET = "curve-secret-4b1d9e"  # must never cross the link in the clear

PIPELINE = """
    from tagent_client import Pipeline

    remote = Pipeline("remote")

    @remote.task()
    async def make(ctx, secret):
        ctx.log.info("made %s", secret)
        await ctx.space("vault").put("k", {"value": secret})
        await ctx.memory.save("m", secret)
        sent = await ctx.send("sink", {"value": secret})
        return {"secret": secret, "sent": sent}

    @remote.task(final=True, depends_on=["make"])
    async def use(ctx, make):
        entry = await ctx.space("vault").get("k")
        return {"echo": make["secret"], "space": entry.value["value"], "memory": await ctx.memory.get("m")}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_ports(pids: list[int]) -> set[int]:
    """The TCP ports these processes listen on (from /proc: the inodes of their sockets in LISTEN state)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def curve_daemon(make_daemon: Any, listen: str, advertise: str | None = None, template: bool = False) -> DaemonProcess:
    daemon = make_daemon(workers=1, template=template)
    daemon.env.update(TAGENTD_WORKER_LISTEN=listen, TAGENTD_LOCAL_WORKERS_VIA_CURVE="true")
    if advertise:
        daemon.env["TAGENTD_WORKER_ADVERTISE"] = advertise
    return daemon


def endpoint_and_server_key(daemon: DaemonProcess) -> tuple[str, str]:
    found = wait_until(lambda: re.search(r"worker endpoint (tcp://\S+): ZeroMQ CURVE, server key (\S{40})", daemon.log()),
                       10, what="the worker endpoint in the log")
    return found.group(1), found.group(2)


def test_a_worker_over_the_curve_link_runs_a_pipeline_and_no_secret_crosses_in_the_clear(
        make_daemon: Any, tmp_path: Path) -> None:
    # Given a daemon taking workers on tcp with CURVE, whose worker (forked from the template, as by default)
    # joins through a recording proxy
    port = free_port()
    proxy = TcpRecorder(("127.0.0.1", port))
    try:
        daemon = curve_daemon(make_daemon, f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{proxy.port}",
                              template=True).start()
        path = write_pipeline(tmp_path, "remote.py", PIPELINE)
        # When a run's steps log, write a space and memory, send a message and pass the secret on
        with daemon.client() as client:
            run = client.submit(f"{path}:remote", {"secret": SECRET})
            result = client.wait(run.id, timeout=60)
            logs = [line.message for line in client.logs(run.id)]
            mailbox = client.mailboxes("sink")[0].messages
        # Then the run completed over the link, with everything the steps did
        assert result.status == "completed", result.error
        assert result.final_output == {"echo": SECRET, "space": SECRET, "memory": SECRET}
        assert f"made {SECRET}" in logs and mailbox == 1
        # and the worker's traffic went through the proxy, encrypted: the secret is nowhere in it
        capture = proxy.captured()
        assert proxy.connections >= 1 and len(capture) > 1000
        assert SECRET.encode() not in capture and b"vault" not in capture
        # and the daemon listens on exactly that one tcp port
        assert listening_ports([daemon.pid, *daemon.worker_pids()]) == {port}
    finally:
        proxy.close()


def test_no_tcp_port_is_bound_without_worker_listen(daemon: DaemonProcess) -> None:
    # Given a daemon started without worker_listen (the default), running its workers
    # When its and its workers' sockets are listed
    ports = listening_ports([daemon.pid, *daemon.worker_pids()])
    # Then none of them listens on tcp
    assert ports == set()
    with daemon.client() as client:
        assert client.daemon_status().stats.get("worker_connections_refused") is None


@pytest.mark.parametrize("keys", ["none", "wrong"])
def test_a_peer_without_issued_keys_is_refused_and_gets_no_work(make_daemon: Any, tmp_path: Path, keys: str) -> None:
    # Given a daemon taking workers on tcp with CURVE, one worker of its own ready
    daemon = curve_daemon(make_daemon, "tcp://127.0.0.1:0").start()
    endpoint, server_key = endpoint_and_server_key(daemon)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        # When a raw socket connects without CURVE, or with keys the daemon did not issue, and says hello
        token = "0" * 16
        public = b""
        sock.identity = wire.identity(99, token)
        if keys == "wrong":
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key.encode(), public, secret
        sock.connect(endpoint)
        sock.send(wire.encode(wire.Hello(worker_id=99, pid=os.getpid(), capacity=4, token=token)))
        # Then the daemon logs one clear line about it
        expected = (f"its CURVE key {public.decode()} was not issued by this daemon" if keys == "wrong"
                    else "its handshake failed")
        wait_until(lambda: expected in daemon.log(), 15, what="the refusal in the daemon's log")
        assert daemon.log().count("refused a") == 1
        # and nothing reached the daemon's handlers nor came back: the peer is no worker, its hello unseen
        with daemon.client() as client:
            status = client.daemon_status()
        assert [w.id for w in status.workers] == [1]
        assert status.stats.get("workers_refused", 0) == 0
        assert sock.poll(0) == 0
    finally:
        sock.close()
        ctx.term()


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # ok-sleep: yield to the loop that serves the sockets


def test_issued_keys_connect_replies_come_back_on_tcp_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    """The gate and the reply routing on real sockets, in one process: issue, talk both ways, revoke."""

    async def scenario() -> None:
        zctx = zmq.Context()
        stats: dict[str, int] = {}
        ipc = zctx.socket(zmq.ROUTER)
        ipc.bind(f"ipc://{tmp_path}/workers.sock")
        gate = CurveGate(zctx, "tcp://127.0.0.1:0", stats)
        sockets = WorkerSockets(Channel(ipc), stats)
        sockets.add_remote(gate.channel, gate.admits)
        received: list[tuple[bytes, bytes, str | None]] = []
        sockets.start(lambda batch: received.extend((f[0], f[1], getattr(f, "peer", None)) for f in batch))
        gate.start()
        clients = []

        def client(credentials: WorkerCredentials, identity: bytes) -> zmq.Socket:
            sock = zctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.identity = identity
            credentials.apply(sock)
            sock.connect(credentials.endpoint)
            clients.append(sock)
            return sock

        try:
            # Given credentials the gate issued, passed on as a worker process gets them
            issued = gate.issue("actor-1", token="t0k3n")
            credentials = issued
            os.environ[CURVE_ENV] = issued.to_env()
            assert WorkerCredentials.pop_env() == issued and CURVE_ENV not in os.environ
            assert issued.secret_key not in repr(issued)
            # When a worker with them says something
            worker = client(credentials, b"w1.t0k3n")
            worker.send(b"hello")
            await _until(lambda: received, "the message")
            # Then it arrives named after its credential, and a reply to that identity comes back over tcp
            assert received == [(b"w1.t0k3n", b"hello", "actor-1")]
            sockets.send([b"w1.t0k3n", b"welcome"])
            await _until(lambda: worker.poll(0), "the reply")
            assert worker.recv() == b"welcome"
            # When the credential is revoked
            assert gate.revoke("actor-1")
            # Then the open connection's messages are dropped and counted
            worker.send(b"after revoke")
            await _until(lambda: stats.get("worker_messages_revoked") == 1, "the dropped message")
            # and a new connection with the same keys is refused at the handshake
            client(credentials, b"w2.t0k3n").send(b"again")
            await _until(lambda: stats.get("worker_connections_refused") == 1, "the refused handshake")
            assert len(received) == 1
        finally:
            for sock in clients:
                sock.close()
            gate.close()
            sockets.close()
            zctx.term()

    asyncio.run(scenario())


def issued_to(pid: int) -> WorkerCredentials:
    """The credentials a worker process was started with (its initial environment, readable by its user)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(item for item in environ if item.startswith(CURVE_ENV.encode() + b"="))
    return msgspec.json.decode(value.split(b"=", 1)[1], type=WorkerCredentials)


async def _worker_until(args: Any, done: Any, timeout: float) -> int | None:
    """Run an in-process worker (as a Ray actor does) until it ends (its status) or `done()` holds (None)."""
    task = asyncio.ensure_future(run_in_process(args))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and not done():
        if loop.time() > deadline:
            task.cancel()
            raise AssertionError("timed out waiting for the in-process worker")
        await asyncio.sleep(0.02)  # ok-sleep: the worker runs on this loop
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def test_over_tcp_only_this_start_s_workers_are_admitted(make_daemon: Any) -> None:
    """Issue 10's rule on the CURVE link: a worker with this daemon's keys but not its token is refused, and a
    worker of an earlier start (its keys, its token) cannot even connect after a restart."""
    # Given a daemon whose worker joined over tcp with credentials it issued
    daemon = curve_daemon(make_daemon, f"tcp://127.0.0.1:{free_port()}").start()  # the same port after a restart
    first_start = issued_to(daemon.worker_pids()[0])
    # When an in-process worker (as in a Ray actor) connects with valid keys but another token
    stranger = msgspec.structs.replace(first_start, token="f" * 16)
    status = asyncio.run(_worker_until(curve_args(stranger, ["--id", "1", "--heartbeat", "0.2"]), lambda: False, 30))
    # Then the daemon refuses it and it exits with EXIT_REFUSED; it got no work
    assert status == wire.EXIT_REFUSED
    with daemon.client() as client:
        status_now = client.daemon_status()
    assert status_now.stats["workers_refused"] >= 1 and [w.id for w in status_now.workers] == [1]
    # When the daemon is killed and started again, and a worker of the first start tries again
    daemon.kill9()
    daemon.start()
    old = curve_args(first_start, ["--id", "1", "--heartbeat", "0.2"])
    # Then its handshake fails (the server key is new): the daemon logs it, the worker hears nothing
    ended = asyncio.run(_worker_until(old, lambda: "its handshake failed" in daemon.log(), 30))
    assert ended is None
    assert issued_to(daemon.worker_pids()[0]).server_key != first_start.server_key


def test_a_worker_listen_that_cannot_be_bound_stops_the_start_with_one_line(make_daemon: Any) -> None:
    # Given a port another process already listens on
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        daemon = curve_daemon(make_daemon, f"tcp://127.0.0.1:{port}")
        # When the daemon is started with worker_listen on it
        done = daemon.admin("start", "--foreground", "--workers", "1", timeout=60)
    # Then it exits with the configuration error's status and says what to do, in one line
    assert done.returncode == exit_code_for(ConfigError.code), done.stderr
    assert f"worker_listen tcp://127.0.0.1:{port}: cannot bind it: Address already in use; choose another" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("env", "expected"), [
    ({"TAGENTD_WORKER_LISTEN": "127.0.0.1:7001"},
     "config: worker_listen: must be a tcp endpoint such as tcp://127.0.0.1:0 or tcp://0.0.0.0:7001, got "
     "'127.0.0.1:7001' (from env TAGENTD_WORKER_LISTEN)"),
    ({"TAGENTD_LOCAL_WORKERS_VIA_CURVE": "true"},
     "config: local_workers_via_curve: needs worker_listen (the endpoint they join over)"),
])
def test_curve_settings_that_cannot_work_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                 env: dict[str, str], expected: str) -> None:
    # Given a worker endpoint that is no tcp endpoint, or local workers told to use an endpoint that is not set
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # When the settings are loaded, Then one line says what is wrong and where it came from
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {})
    assert caught.value.message.startswith(expected)
